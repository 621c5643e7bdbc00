"""``mixgrpo-ray train`` / ``python -m mixgrpo_ray.run.training``: run MixGRPO training on Ray.

Connects to the cluster in ``ray.address`` or ``RAY_ADDRESS`` (as ``ray job submit`` sets it),
else starts a local Ray sized for the configured actors. The configuration is validated, and
checked against the cluster's resources, before any actor starts; problems are one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from mixgrpo_ray.config import (
    Config,
    ConfigError,
    check_cluster_resources,
    from_dict,
    load_preset,
    parse_override,
    apply_override,
    preset_names,
    required_resources,
    resolve,
    validate,
)

PROG = "mixgrpo-ray train"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run MixGRPO training. Overrides are key.sub=value, e.g. run.iterations=20 rewards.quality.replicas=2.",
        epilog=f"presets: {', '.join(preset_names())} (a model preset first, algorithm presets layer on top)",
    )
    p.add_argument("--config", action="append", default=[], metavar="PRESET_OR_PATH",
                   help="preset name or YAML path; repeat to layer (default: tiny)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def resolve_config(args: argparse.Namespace) -> Config:
    if args.resume:
        run = Path(args.resume)
        cfg_path = run / "config.yaml"
        if not cfg_path.is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there; pass the directory of an earlier run")
        data = load_preset(str(cfg_path))
        for text in args.overrides:
            data = apply_override(data, *parse_override(text))
        cfg = from_dict(data)
        validate(cfg)
        return cfg
    return resolve(args.config or None, args.overrides)


def connect_ray(cfg: Config):
    """Join the configured / ``RAY_ADDRESS`` cluster, or start a local one big enough."""
    import ray

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, namespace=cfg.ray.namespace, log_to_driver=True)
        return ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private, local instance
    need = required_resources(cfg)
    num_cpus = cfg.ray.num_cpus or max(os.cpu_count() or 1, math.ceil(need["CPU"]))
    custom = {k: v for k, v in need.items() if k not in ("CPU", "GPU")}
    ctx = ray.init(
        address="local", num_cpus=num_cpus, namespace=cfg.ray.namespace,
        resources=custom or None, include_dashboard=cfg.ray.dashboard, log_to_driver=True,
    )
    if cfg.ray.dashboard and getattr(ctx, "dashboard_url", None):
        print(f"Ray dashboard: http://{ctx.dashboard_url}", flush=True)
    return ray


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg.to_yaml())
        return 0

    ray = connect_ray(cfg)
    try:
        try:
            check_cluster_resources(cfg, ray.cluster_resources())
        except ConfigError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        return run(cfg, resume=args.resume)
    finally:
        ray.shutdown()


def run(cfg: Config, resume: str | None = None) -> int:
    """Train with ``cfg`` in a new run directory (or continue ``resume``); returns 0."""
    from tqdm import tqdm

    from mixgrpo_ray.run.driver import Driver
    from mixgrpo_ray.run.run_dir import RunDir

    if resume:
        run_dir = RunDir(resume)
    else:
        run_dir = RunDir.create(cfg.run.output_dir, cfg.run.name)
    run_dir.write_config(cfg.to_yaml())
    print(f"run directory: {run_dir.path}", flush=True)

    driver = Driver(cfg, run_dir)
    try:
        summary: dict = {}
        if resume and run_dir.latest_checkpoint() is not None:
            ckpt = run_dir.latest_checkpoint()
            driver.restore(ckpt)
            run_dir.truncate_metrics(driver.iteration)
            first = [r for r in run_dir.read_metrics() if r.get("iteration") == 0 and "reward_mean" not in r]
            if first:
                summary["before"] = {k: v for k, v in first[0].items() if k != "iteration"}
            print(f"resumed from {ckpt} at iteration {driver.iteration}", flush=True)
        else:
            driver.broadcast(bump=False)  # every actor starts from identical weights
            before = driver.evaluate()
            run_dir.append_metrics({"iteration": 0, **before})
            summary["before"] = before
            driver.grid("iter_000000")

        total = cfg.run.iterations
        bar = tqdm(total=total, initial=driver.iteration, desc="MixGRPO", unit="it",
                   disable=not cfg.run.progress, dynamic_ncols=True)
        while driver.iteration < total:
            row = driver.run_iteration()
            it = driver.iteration
            if cfg.run.eval_every and it % cfg.run.eval_every == 0 and it < total:
                row.update(driver.evaluate())
            if cfg.run.grid_every and it % cfg.run.grid_every == 0:
                driver.grid(f"iter_{it:06d}")
            run_dir.append_metrics(row)
            driver.metrics.record(row)
            if cfg.run.checkpoint_every and it % cfg.run.checkpoint_every == 0:
                driver.checkpoint()
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", window=row["window_start"], v=row["weight_version"])
            bar.update(1)
        bar.close()

        if driver.iteration and (not cfg.run.checkpoint_every or driver.iteration % cfg.run.checkpoint_every):
            driver.checkpoint()
        after = driver.evaluate()
        run_dir.append_metrics({"iteration": driver.iteration, "final": True, **after})
        summary["after"] = after
        if not (cfg.run.grid_every and driver.iteration % cfg.run.grid_every == 0):
            driver.grid(f"iter_{driver.iteration:06d}")
        run_dir.plot_reward_curve()
        (run_dir.path / "summary.json").write_text(json.dumps(summary, indent=2))
        print(format_summary(summary), flush=True)
        return 0
    finally:
        driver.shutdown()


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


if __name__ == "__main__":
    sys.exit(main())
