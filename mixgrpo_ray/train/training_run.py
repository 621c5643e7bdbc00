"""A training run: the run directory, held-out evaluation before and after, the driver's loop,
the final checkpoint, grids and summary. Behind ``mixgrpo-ray train`` (see :mod:`mixgrpo_ray.cli.train_cli`)."""

from __future__ import annotations

import json
from typing import Optional

from mixgrpo_ray.common import checkpoint as ckpt
from mixgrpo_ray.config import Config
from mixgrpo_ray.train.recovery import GroupReformed, stop_cleanly


def run(cfg: Config, resume: Optional[str] = None) -> int:
    """Train with ``cfg`` in a new run directory (or continue ``resume``); returns 0. The actors
    start before the run directory is created: a run that cannot start (a model or reward folder
    that does not load) raises ConfigError and leaves nothing behind."""
    from tqdm import tqdm

    from mixgrpo_ray.train.driver import Driver
    from mixgrpo_ray.train.loggers import Loggers, check_loggers
    from mixgrpo_ray.train.preflight import setup_failure
    from mixgrpo_ray.train.run_dir import RunDir

    check_loggers(cfg.run.loggers)
    try:
        driver = Driver(cfg)
    except Exception as exc:  # noqa: BLE001 - reported as one line naming the cause
        raise setup_failure(exc) from None
    run_dir = None
    try:
        run_dir = RunDir(resume) if resume else RunDir.create(cfg.run.output_dir, cfg.run.name)
        run_dir.loggers = Loggers(cfg, run_dir.path)
        driver.run_dir = run_dir
        run_dir.write_config(cfg.to_yaml())
        print(f"run directory: {run_dir.path}", flush=True)

        summary: dict = {}
        latest = ckpt.latest_checkpoint(run_dir.path) if resume else None
        if latest is not None:
            driver.restore(latest)
            run_dir.truncate_metrics(driver.iteration)
            first = [r for r in run_dir.read_metrics() if r.get("iteration") == 0 and "reward_mean" not in r]
            if first:
                summary["before"] = {k: v for k, v in first[0].items() if k != "iteration"}
            print(f"resumed from {latest} at iteration {driver.iteration}", flush=True)
        else:
            run_dir.truncate_metrics(-1)  # a resumed run without a checkpoint starts over
            with stop_cleanly(driver):  # a learner rank that dies before training stops the run
                driver.broadcast(bump=False)  # every actor starts from identical weights
                before = driver.evaluate()
            run_dir.append_metrics({"iteration": 0, **before})
            summary["before"] = before
            driver.grid(ckpt.checkpoint_name(0))

        total = cfg.run.iterations
        bar = tqdm(total=total, initial=driver.iteration, desc="MixGRPO", unit="it",
                   disable=not cfg.run.progress, dynamic_ncols=True)

        def progress(row: dict) -> None:
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", window=row["window_start"], v=row["weight_version"])
            bar.update(row["iteration"] - bar.n)  # back as well as forward: a healed run redoes iterations

        every = cfg.run.checkpoint_every
        while True:
            driver.train_until(total, progress)
            try:  # a learner rank lost while saving or evaluating is healed too: the loop redoes from there
                with stop_cleanly(driver, heal=True):
                    if driver.iteration and (not every or driver.iteration % every):
                        driver.checkpoint()
                    after = driver.evaluate()
            except GroupReformed:
                continue
            break
        bar.close()
        run_dir.append_metrics({"iteration": driver.iteration, "final": True, **after})
        summary["after"] = after
        if not (cfg.run.grid_every and driver.iteration % cfg.run.grid_every == 0):
            driver.grid(ckpt.checkpoint_name(driver.iteration))
        run_dir.plot_reward_curve()
        (run_dir.path / "summary.json").write_text(json.dumps(summary, indent=2))
        print(format_summary(summary), flush=True)
        return 0
    finally:
        driver.shutdown()
        if run_dir is not None and run_dir.loggers is not None:
            run_dir.loggers.close()


def format_summary(summary: dict) -> str:
    after = summary.get("after", {})
    before = summary.get("before", {})
    lines = ["held-out rewards (mean ± standard error):"]
    for key in sorted(k for k in after if k.startswith("eval/reward/") and not k.endswith("_se")):
        name = key.split("/", 2)[2]
        a, ase = after[key], after.get(key + "_se", 0.0)
        if key in before:
            b, bse = before[key], before.get(key + "_se", 0.0)
            lines.append(f"  {name:<18} before {b:.4f} ± {bse:.4f}   after {a:.4f} ± {ase:.4f}   change {a - b:+.4f}")
        else:
            lines.append(f"  {name:<18} {a:.4f} ± {ase:.4f}")
    return "\n".join(lines)
