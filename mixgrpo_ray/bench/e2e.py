"""End-to-end benchmark: real training iterations of each algorithm through the product, and the
same iterations in one plain process, side by side (``mixgrpo-ray bench``).

Every variant trains the same model on the same prompts with the same seeds. All variants' runs
live at once (each in its own Ray namespace) and take turns in blocks of ``block`` iterations,
so drift of the machine hits them alike; the plain loop (:mod:`mixgrpo_ray.bench.plain_loop`) runs
each variant's block right after the pipeline's. Held-out evaluation every ``eval_every``
iterations gives held-out reward against training wall-clock; the asynchronous variant then goes
on until it has trained as long as the synchronous one (:func:`equal_wall_clock`), so both curves
span the same time and "reaches the synchronous final reward sooner" can be read off them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from mixgrpo_ray.cluster.actors import actor_namespace
from mixgrpo_ray.config import Config, resolve
from mixgrpo_ray.train.driver import Driver
from mixgrpo_ray.train.metric_rows import PHASES
from mixgrpo_ray.bench.plain_loop import PlainLoop
from mixgrpo_ray.train.run_dir import RunDir

#: variant -> (algorithm preset, overrides); DanceGRPO-4 trains 4 random steps of 24 (eq. (22))
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "dancegrpo": ("dancegrpo", []),
    "dancegrpo_4": ("dancegrpo", ["grpo.dance_train_fraction=0.1667"]),
    "mixgrpo": ("mixgrpo", []),
    "mixgrpo_flash": ("mixgrpo_flash", []),
    "mixgrpo_flash_star": ("mixgrpo_flash_star", []),
    # MixGRPO with the asynchronous pipeline (docs/algorithm.md §13): the same iterations, interleaved,
    # then more until its training time equals the synchronous run's (see equal_wall_clock)
    "mixgrpo_async": ("mixgrpo", ["run.pipeline=async", "learner.max_staleness=1"]),
    # MixGRPO colocated: 2 hybrid workers that each sample and train, against mixgrpo's one rollout
    # actor and one learner rank: two processes of one torch thread each in both
    "mixgrpo_colocated": ("mixgrpo", ["run.placement=colocated", "rollout.num_workers=2", "learner.num_workers=2"]),
}
#: the paper's time per iteration relative to DanceGRPO (docs/algorithm.md eq. (38))
PAPER_RATIO = {"dancegrpo": 1.0, "dancegrpo_4": 150.0 / 291.3, "mixgrpo": 0.52, "mixgrpo_flash": 0.39,
               "mixgrpo_flash_star": 0.29}
#: what every variant's run is set to: one rollout actor (equal compute with the plain loop), no
#: per-iteration files, no grids or checkpoints
BENCH_OVERRIDES = ["rollout.num_workers=1", "run.log_rollouts=false", "run.grid_every=0",
                   "run.checkpoint_every=0", "run.progress=false", "run.eval_every=0"]


@dataclass
class VariantRun:
    name: str
    cfg: Config
    driver: Optional[Driver] = None
    plain: Optional[PlainLoop] = None
    rows: list = field(default_factory=list)
    seconds: list = field(default_factory=list)  # wall-clock per pipeline iteration
    plain_seconds: list = field(default_factory=list)
    evals: list = field(default_factory=list)  # (training seconds so far, iteration, eval row)


def variant_config(name: str, base: list[str], overrides: list[str]) -> Config:
    preset, extra = VARIANTS[name]
    return resolve(base + [preset], BENCH_OVERRIDES + extra + list(overrides))


def plain_config(cfg: Config) -> Config:
    """The config the plain loop runs beside a variant: one process, so one learner rank and one
    sampler (the same math as the variant's ranks together)."""
    if cfg.learner.num_workers == 1:
        return cfg
    out = cfg.model_copy(deep=True)
    out.run.placement = "disaggregated"
    out.learner.num_workers = out.rollout.num_workers = 1
    return out


def run_benchmark(names: list[str], out_dir, *, iterations: int, block: int, eval_every: int,
                  base: list[str] = ("tiny",), overrides: list[str] = (), plain: bool = True,
                  log: Callable[[str], None] = print) -> dict:
    """Run every variant ``iterations`` times through the pipeline (and the plain loop); returns
    the summary (see :func:`summarize`). Needs a connected Ray."""
    runs = {n: VariantRun(n, variant_config(n, list(base), list(overrides))) for n in names}
    try:
        for r in runs.values():
            with actor_namespace(f"mixgrpo-bench-{r.name}"):
                r.driver = Driver(r.cfg, RunDir.create(str(out_dir), r.name))
            r.driver.broadcast(bump=False)
            r.evals.append((0.0, 0, r.driver.evaluate()))
            r.plain = PlainLoop(plain_config(r.cfg)) if plain else None
        done = 0
        while done < iterations:
            n = min(block, iterations - done)
            for r in runs.values():
                r.driver.last_iteration = done + n  # an async run samples ahead only inside its own block
                for _ in range(n):
                    t0 = time.perf_counter()
                    r.rows.append(r.driver.run_iteration())
                    r.seconds.append(time.perf_counter() - t0)
                    if eval_every and r.driver.iteration % eval_every == 0:
                        r.evals.append((sum(r.seconds), r.driver.iteration, r.driver.evaluate()))
                for _ in range(n if r.plain else 0):
                    t0 = time.perf_counter()
                    r.plain.run_iteration()
                    r.plain_seconds.append(time.perf_counter() - t0)
            done += n
            log(f"  {done}/{iterations} iterations of {len(runs)} variants")
        if "mixgrpo" in runs and "mixgrpo_async" in runs:
            extra = equal_wall_clock(runs["mixgrpo_async"], sum(runs["mixgrpo"].seconds), iterations, eval_every)
            log(f"  mixgrpo_async: {extra} more iterations, up to the synchronous run's training time")
        for r in runs.values():
            if not r.evals or r.evals[-1][1] != r.driver.iteration:
                r.evals.append((sum(r.seconds), r.driver.iteration, r.driver.evaluate()))
    finally:
        for r in runs.values():
            if r.driver is not None:
                r.driver.shutdown()
    return summarize(list(runs.values()))


def equal_wall_clock(r: VariantRun, budget_s: float, iterations: int, eval_every: int) -> int:
    """Go on training ``r`` (the async variant) while its training seconds are below ``budget_s``
    (the synchronous run's), at most ``iterations`` more, evaluating on the same cadence: held-out
    reward against wall-clock then covers the same time span for both. Returns the iterations added."""
    added = 0
    r.driver.last_iteration = r.driver.iteration + iterations
    while sum(r.seconds) < budget_s and added < iterations:
        t0 = time.perf_counter()
        r.rows.append(r.driver.run_iteration())
        r.seconds.append(time.perf_counter() - t0)
        added += 1
        if eval_every and r.driver.iteration % eval_every == 0:
            r.evals.append((sum(r.seconds), r.driver.iteration, r.driver.evaluate()))
    r.driver.last_iteration = r.driver.iteration
    if r.driver._next is not None:  # an iteration sampled ahead is not trained: drop it
        r.driver._next = None
    return added


def _spread(values: list[float]) -> float:
    """Half the interquartile range (robust spread of seconds per iteration)."""
    if len(values) < 4:
        return (max(values) - min(values)) / 2 if values else 0.0
    q = statistics.quantiles(values, n=4)
    return (q[2] - q[0]) / 2


def summarize(runs: list[VariantRun]) -> dict:
    """Per variant: model evaluations, seconds per iteration (median, spread), ratio to DanceGRPO,
    pipeline / plain-loop ratio, phase split and idle share per role, held-out rewards."""
    out: dict = {}
    for r in runs:
        med = statistics.median(r.seconds)
        phases = {p: statistics.mean(row.get(f"time/{p}_s", 0.0) for row in r.rows) for p in PHASES}
        per_iter = statistics.mean(r.seconds)
        final = r.evals[-1][2]
        # a role works only in its own phase of a synchronous iteration; the rest is idle (a hybrid
        # worker samples, trains and starts the next version)
        idle = {"rollout": 1 - phases["rollout"] / per_iter, "reward": 1 - phases["reward"] / per_iter,
                "learner": 1 - phases["train"] / per_iter}
        if r.cfg.run.placement == "colocated":
            busy = phases["rollout"] + phases["train"] + phases["sync"]
            idle.update(rollout=1 - busy / per_iter, learner=1 - busy / per_iter, hybrid=1 - busy / per_iter)
        out[r.name] = {
            "iterations": len(r.rows),
            "nfe_rollout": statistics.mean(row["nfe/rollout"] for row in r.rows),
            "nfe_policy": statistics.mean(row["nfe/policy"] for row in r.rows),
            "median_s": med,
            "spread_s": _spread(r.seconds),
            "plain_median_s": statistics.median(r.plain_seconds) if r.plain_seconds else None,
            "pipeline_over_plain": med / statistics.median(r.plain_seconds) if r.plain_seconds else None,
            "phase_s": phases,
            "idle_share": idle,
            "placement": r.cfg.run.placement,
            "other_s": max(0.0, per_iter - sum(phases.values())),
            "heldout": {k.split("/", 2)[2]: v for k, v in final.items()
                        if k.startswith("eval/reward/") and not k.endswith("_se")},
            "heldout_curve": [{"train_s": s, "iteration": it, **{k.split("/", 2)[2]: v for k, v in row.items()
                                                                 if k.startswith("eval/reward/") and not k.endswith("_se")}}
                              for s, it, row in r.evals],
        }
    base = out.get("dancegrpo", {}).get("median_s")
    for name, res in out.items():
        res["ratio"] = res["median_s"] / base if base else None
        res["paper_ratio"] = PAPER_RATIO.get(name)
    if "mixgrpo" in out and "mixgrpo_async" in out:
        out["mixgrpo_async"]["time_to_sync_final"] = time_to_reach(out["mixgrpo"], out["mixgrpo_async"])
    if "mixgrpo" in out and "mixgrpo_colocated" in out:
        out["mixgrpo_colocated"]["over_disaggregated"] = out["mixgrpo_colocated"]["median_s"] / out["mixgrpo"]["median_s"]
    return out


def time_to_reach(sync: dict, asyn: dict) -> dict:
    """Training seconds the async run needs to reach the sync run's final held-out reward (first
    reward model), against the seconds the sync run took; ``speedup`` = their ratio."""
    reward = sorted(sync["heldout"])[0]
    target = sync["heldout"][reward]
    sync_s = sync["heldout_curve"][-1]["train_s"]
    reached = next((p["train_s"] for p in asyn["heldout_curve"] if p.get(reward, float("-inf")) >= target), None)
    return {"reward": reward, "target": target, "sync_s": sync_s, "async_s": reached,
            "speedup": (sync_s / reached) if reached else None}
