"""Which run a ``mixgrpo-ray train --resume`` continues, with which config, from which checkpoint.

``--resume RUN_DIR`` continues that run; ``--resume auto`` continues the run named
``run.output_dir/run.name`` when it exists and starts it fresh when it does not, so a job that
died (``ray job stop``, a killed driver, a pre-empted node) is simply submitted again. The config
of a resumed run is its saved ``config.yaml`` with the command line's overrides (or the presets
given again); a difference in a key a resumed run may not change is refused, listing the keys.
The latest complete checkpoint is verified against its checksums before any actor starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from mixgrpo_ray.common import checkpoint as ckpt
from mixgrpo_ray.config import Config, ConfigError, apply_override, from_dict, load_preset, parse_override, resolve
from mixgrpo_ray.config.diff import check_resume_diff

AUTO = "auto"
CONFIG_FILE = "config.yaml"


def resume_config(resume: str, presets: Sequence[str], overrides: Sequence[str]) -> tuple[Config, Optional[str]]:
    """``(config, run directory to continue or None for a new run)``; raises ConfigError."""
    if resume == AUTO:
        cfg = resolve(list(presets) or None, list(overrides))
        if not cfg.run.name:
            raise ConfigError("--resume auto needs run.name=<name>: the run directory run.output_dir/run.name is "
                              "where a re-submitted job finds its run")
        path = Path(cfg.run.output_dir) / cfg.run.name
        if not (path / CONFIG_FILE).is_file():
            return cfg, None  # nothing to resume: a new run under that name
        saved = _saved_config(path, str(resume))
        check_resume_diff(saved, cfg.to_dict(), str(path))
        return cfg, str(path)
    path = Path(resume)
    if not (path / CONFIG_FILE).is_file():
        raise ConfigError(f"--resume {resume}: not a run directory (no {CONFIG_FILE} there); pass the directory "
                          "of an earlier run, or --resume auto with run.name=<name>")
    saved = _saved_config(path, resume)
    if presets:
        cfg = resolve(list(presets), list(overrides))
    else:
        data = saved
        for text in overrides:
            data = apply_override(data, *parse_override(text))
        cfg = from_dict(data)
    check_resume_diff(saved, cfg.to_dict(), resume)
    return cfg, resume


def _saved_config(path: Path, resume: str) -> dict:
    try:
        return from_dict(load_preset(str(path / CONFIG_FILE))).to_dict()
    except ConfigError as exc:
        raise ConfigError(f"--resume {resume}: its {CONFIG_FILE} is not a valid run config ({exc})") from None


def check_checkpoint(run: Optional[str]) -> Optional[Path]:
    """The latest complete checkpoint of ``run`` after verifying its checksums (None: none yet)."""
    if run is None:
        return None
    latest = ckpt.latest_checkpoint(Path(run))
    if latest is not None:
        ckpt.verify(latest)
    return latest


#: set in the environment of a driver that ``train --driver-restarts`` runs (it runs the run itself)
RESTARTED_CHILD = "MIXGRPO_RAY_SUPERVISED"


def describe_exit(rc: int) -> str:
    if rc < 0:
        import signal

        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with code {rc}"


def run_restarting(argv: Sequence[str], restarts: int) -> int:
    """``mixgrpo-ray train argv`` (a command that resumes: ``--resume auto`` or ``RUN_DIR``) in a
    child process, run again up to ``restarts`` times when it dies: killed by a signal (OOM killer,
    ``kill -9``), or any exit but 0 (done) and 2 (bad input, which a rerun would not fix). Each
    rerun continues the run from its latest complete checkpoint. A SIGTERM or SIGINT to this
    process (``ray job stop``, Ctrl-C) is passed on to the driver and ends it for good. Returns the
    last exit code (128 + signal for a driver killed by one)."""
    import os
    import signal
    import subprocess
    import sys

    stopping: list[int] = []
    child: Optional[subprocess.Popen] = None

    def forward(signum, _frame) -> None:
        stopping.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for attempt in range(restarts + 1):
            child = subprocess.Popen([sys.executable, "-m", "mixgrpo_ray.cli", "train", *argv],
                                     env={**os.environ, RESTARTED_CHILD: "1"})
            rc = child.wait()
            if rc in (0, 2) or stopping or attempt == restarts:
                return rc if rc >= 0 else 128 - rc
            print(f"mixgrpo-ray train: the driver {describe_exit(rc)}; running it again to continue from the "
                  f"latest checkpoint (restart {attempt + 1} of --driver-restarts {restarts})", file=sys.stderr,
                  flush=True)
        raise AssertionError("unreachable")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
