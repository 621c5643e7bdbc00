"""The job behind ``mixgrpo-ray study``: every (configuration, seed) run of a grid
(:mod:`mixgrpo_ray.study.study_grid`) trained through the product, then test-time mixed-model
evaluations of the final checkpoints, then the report (:mod:`mixgrpo_ray.study.study_report`).

Each run is ``mixgrpo-ray train --resume auto`` in its own process, up to ``parallel`` at a time, so
a run is exactly what ``train`` does and a failing run does not stop the others. The runs share
one local Ray that the study starts (or the cluster in ``RAY_ADDRESS``), each in its own Ray
namespace. A run's mixed-sampling evaluations are done in the study's process as soon as it
finishes, while the next runs train. The study is resumable at every level: a finished run (its
final held-out evaluation at the grid's iteration count) is not started again, an interrupted one
continues from its latest checkpoint (or starts over when it has none), an evaluation of the final
checkpoint already written is kept, and a study invoked again with the same grid and folder
continues where it stopped. Raising ``iterations`` continues finished runs.

Study folder::

    STUDY/grid.yaml                    the grid as last invoked
    STUDY/runs/<config>/seed-<s>/      each run's directory (config, metrics, checkpoints, eval/mix<p>/)
    STUDY/logs/<config>-seed-<s>.log   each run's train output (appended on every attempt)
    STUDY/study.md, study.json, study.png
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import yaml

from mixgrpo_ray.common.checkpoint import checkpoint_name
from mixgrpo_ray.common.files import atomic_write_text
from mixgrpo_ray.config import Config, ConfigError, required_resources
from mixgrpo_ray.train.preflight import check_inputs
from mixgrpo_ray.train.resume import AUTO, CONFIG_FILE, resume_config
from mixgrpo_ray.train.run_dir import RunDir
from mixgrpo_ray.study.study_grid import Grid, GridError, RunSpec, estimate_seconds, expand_runs, resolve_run

#: seconds a run is given to stop (checkpointed state stays) after the study is interrupted
STOP_GRACE_S = 60.0


# ---------------------------------------------------------------------------------------------
# Before anything is written
# ---------------------------------------------------------------------------------------------
def prepare(grid: Grid, out: Path, overrides: Sequence[str] = ()) -> tuple[list[RunSpec], dict[str, Config]]:
    """The study's runs and each configuration's config (its first seed's), every one resolved and
    checked, and each run already in ``out`` checked to be the same run; raises GridError /
    ConfigError (one line) and writes nothing."""
    if out.exists() and not out.is_dir():
        raise GridError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "grid.yaml").is_file():
        raise GridError(f"--out {out}: exists and is not a study folder (no grid.yaml); choose another folder")
    specs = expand_runs(grid, out, overrides)
    configs: dict[str, Config] = {}
    for spec in specs:
        cfg = resolve_run(spec)
        if spec.config not in configs:
            try:
                check_inputs(cfg)
            except ConfigError as exc:
                raise ConfigError(f"configuration {spec.config!r}: {exc}") from None
            configs[spec.config] = cfg
        if (spec.path / CONFIG_FILE).is_file():
            try:
                resume_config(AUTO, spec.presets, spec.overrides)
            except ConfigError as exc:
                raise ConfigError(f"{spec.path} was trained with another configuration than the grid's "
                                  f"{spec.config!r} ({exc}); use another --out") from None
    return specs, configs


def finished(spec: RunSpec, iterations: int) -> bool:
    """Has the run its final held-out evaluation at ``iterations`` (and its summary)?"""
    if not (spec.path / "summary.json").is_file():
        return False
    return any(r.get("final") and r.get("iteration") == iterations for r in RunDir(spec.path).read_metrics())


def estimate(grid: Grid, specs: Sequence[RunSpec], configs: dict[str, Config], parallel: int) -> dict:
    """Runs, iterations and the rough wall-clock still ahead (runs not finished yet)."""
    todo = [s for s in specs if not finished(s, grid.iterations)]
    serial = sum(estimate_seconds(configs[s.config], grid.mix_fractions) for s in todo)
    # a tiny run keeps about two cores busy (two rollout actors): more at once helps only with more cores
    speedup = max(1, min(parallel, (os.cpu_count() or 1) // 2))
    return {"runs": len(specs), "todo": len(todo), "iterations": grid.iterations, "seconds": serial / speedup,
            "per_config_s": {c: estimate_seconds(cfg, grid.mix_fractions) for c, cfg in configs.items()}}


# ---------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------
def _child_env() -> dict:
    """The train processes' environment: this package importable (a source checkout too)."""
    import mixgrpo_ray

    env = dict(os.environ)
    root = str(Path(mixgrpo_ray.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("RAY_AUTH_MODE", "disabled")  # the local Ray each run starts is private to it
    return env


def _start(spec: RunSpec, env: dict) -> subprocess.Popen:
    if spec.path.exists() and not (spec.path / CONFIG_FILE).is_file():
        shutil.rmtree(spec.path)  # interrupted before train wrote anything: start it afresh
    spec.log.parent.mkdir(parents=True, exist_ok=True)
    with open(spec.log, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} mixgrpo-ray {' '.join(spec.argv())}\n")
        log.flush()
        # Ctrl-C (SIGINT) stops a run cleanly even where the study was started with SIGINT ignored
        # (a background job): the run would then inherit the ignored signal
        return subprocess.Popen([sys.executable, "-m", "mixgrpo_ray.cli", *spec.argv()], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    """Interrupt the runs (each stops its Ray and keeps its checkpoints), killing any that hang."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def train_runs(specs: Sequence[RunSpec], iterations: int, parallel: int, env: dict, *, progress: bool = True,
               after_run: Callable[[RunSpec], None] = lambda spec: None,
               log: Callable[[str], None] = print) -> list[RunSpec]:
    """Train every run not finished yet, ``parallel`` at a time, calling ``after_run`` on each that
    finishes (while the others go on); returns the runs that failed."""
    from tqdm import tqdm

    queue = deque(s for s in specs if not finished(s, iterations))
    running: dict[subprocess.Popen, RunSpec] = {}
    failed: list[RunSpec] = []
    shown = ""
    bar = tqdm(total=len(specs), initial=len(specs) - len(queue), desc="runs", unit="run", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    try:
        while queue or running:
            done = []
            for proc in [p for p in running if p.poll() is not None]:
                spec = running.pop(proc)
                if proc.returncode != 0 or not finished(spec, iterations):
                    failed.append(spec)
                    log(f"run {spec.config}/seed-{spec.seed} failed (exit code {proc.returncode}); see {spec.log}")
                else:
                    done.append(spec)
                bar.update(1)
            while queue and len(running) < parallel:
                spec = queue.popleft()
                running[_start(spec, env)] = spec
            now = ", ".join(f"{s.config}/seed-{s.seed}" for s in running.values())
            if now != shown:  # the runs under way
                bar.set_postfix_str(now)
                shown = now
            for spec in done:
                after_run(spec)
            time.sleep(0.2)
    except BaseException:  # KeyboardInterrupt / SIGTERM: stop the runs, keep their checkpoints
        _stop(list(running))
        raise
    finally:
        bar.close()
    return failed


def mix_evaluations(specs: Sequence[RunSpec], fractions: Sequence[float], iterations: int, *,
                    log: Callable[[str], None] = print) -> list[str]:
    """Test-time mixed-model sampling (``mixgrpo-ray eval --mix-fraction p``) of the final
    checkpoint of every finished run in ``specs``, into ``RUN/eval/mix<p>/``; an evaluation of
    that checkpoint already there is kept. Returns the problems (one line each)."""
    from mixgrpo_ray.eval.heldout_eval import EvalError, evaluate

    problems = []
    for spec in specs:
        if not finished(spec, iterations):
            continue
        final = spec.path / "checkpoints" / checkpoint_name(iterations)
        for p in fractions:
            if mix_done(spec, p, final):
                continue
            try:
                evaluate(presets=[str(spec.path / CONFIG_FILE)], checkpoint=str(final), mix_fraction=p,
                         batch_size=64, out=str(mix_folder(spec, p)))
            except (EvalError, ConfigError) as exc:
                problems.append(f"mixed sampling p={p:g} of {spec.path}: {exc}")
                log(problems[-1])
    return problems


def mix_done(spec: RunSpec, p: float, checkpoint: Path) -> bool:
    """Is ``RUN/eval/mix<p>/`` an evaluation of ``checkpoint`` (not of an earlier final one)?"""
    path = mix_folder(spec, p) / "results.json"
    if not path.is_file():
        return False
    evaluated = json.loads(path.read_text()).get("checkpoint") or ""
    return Path(evaluated).parent.name == checkpoint.name


def mix_folder(spec: RunSpec, p: float) -> Path:
    return spec.path / "eval" / f"mix{p:g}"


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
@contextmanager
def study_ray(configs: dict[str, Config], parallel: int) -> Iterator[dict]:
    """The runs' environment. Unless the runs are to join a cluster (``ray.address`` or
    ``RAY_ADDRESS``), one local Ray for the whole study, big enough for ``parallel`` runs at once:
    a run then starts only its actors, not a Ray instance of its own."""
    env = _child_env()
    if env.get("RAY_ADDRESS") or any(cfg.ray.address for cfg in configs.values()):
        yield env
        return
    from mixgrpo_ray.cluster.ray_start import ray_running

    need: dict[str, float] = {}
    for cfg in configs.values():
        for key, value in required_resources(cfg).items():
            need[key] = max(need.get(key, 0.0), value * parallel)
    with ray_running(need=need, dashboard=False, log_to_driver=False, keep_sigterm=True) as gcs:
        # keep_sigterm: the study's own handler (stop the runs), not Ray's abort
        yield {**env, "RAY_ADDRESS": gcs}


def run_study(grid: Grid, out: Path, specs: Sequence[RunSpec], configs: dict[str, Config], *, parallel: int = 1,
              command: str = "", progress: bool = True, log: Callable[[str], None] = print) -> tuple[int, Optional[dict]]:
    """Train, evaluate and report; ``(exit code, the report's file paths)``: 0 when every run and
    evaluation is done, 1 when some failed (the report then covers the finished ones)."""
    from mixgrpo_ray.study.study_report import write_report

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "grid.yaml", yaml.safe_dump(grid.to_dict(), sort_keys=False))
    t0 = time.monotonic()

    def evaluate_run(spec: RunSpec) -> None:  # while the next runs train
        mix_evaluations([spec], grid.mix_fractions, grid.iterations, log=log)

    failed: list[RunSpec] = []
    if not all(finished(s, grid.iterations) for s in specs):
        with study_ray(configs, parallel) as env:
            failed = train_runs(specs, grid.iterations, parallel, env, progress=progress, after_run=evaluate_run,
                                log=log)
    # runs finished by an earlier invocation, and evaluations that failed above are tried (again)
    problems = mix_evaluations(specs, grid.mix_fractions, grid.iterations, log=log)
    files = None
    if any(finished(s, grid.iterations) for s in specs):
        files = write_report(grid, out, specs, lambda s: finished(s, grid.iterations), mix_folder, command=command,
                             parallel=parallel, elapsed_s=time.monotonic() - t0)
    if failed or problems:
        log(f"{len(failed)} of {len(specs)} runs and {len(problems)} evaluations failed; run the same command "
            "again to retry them (finished runs and evaluations are kept)")
        return 1, files
    return 0, files
