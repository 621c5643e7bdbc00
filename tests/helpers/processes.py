"""Processes and ports for tests that start servers or kill drivers."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_ray_under(tmpdir: str) -> None:
    """Stop the Ray processes a killed driver left behind, by PID (those naming ``tmpdir``)."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if tmpdir in cmdline:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass


def kill_node(temp_dir: str) -> None:
    """SIGKILL a Ray node started with ``--temp-dir temp_dir``: the processes naming it (raylet,
    agents) and every process under them (the actors' workers, whose command lines do not)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        if p.pid != os.getpid() and temp_dir in " ".join(p.info["cmdline"] or []):
            found.append(p)
            try:
                found += p.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
    for p in found:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
