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


def spawn_ranks(fn, nprocs: int, *args, retries: int = 1) -> None:
    """``torch.multiprocessing.spawn(fn, (port, *args), nprocs)`` with a fresh free port for the
    ranks' gloo group (``fn(rank, port, *args)``). A rank that raises fails at once; a rank killed
    by a signal (gloo's transport thread can ``std::terminate`` a rank of a 2-rank CPU group on a
    loaded 2-core machine: once in ~650 CI tests, not reproduced in 19 reruns) is rerun ``retries``
    times, saying so on stderr, with the same arguments, so deterministic results are unchanged."""
    import sys

    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessExitedException

    for attempt in range(retries + 1):
        try:
            mp.spawn(fn, args=(free_port(), *args), nprocs=nprocs)
            return
        except ProcessExitedException as exc:
            if exc.signal_name is None or attempt == retries:
                raise
            print(f"spawn_ranks: {exc}; running the {nprocs} ranks again", file=sys.stderr)
