"""``mixgrpo-ray train``: run MixGRPO training on Ray.

Connects to the cluster in ``ray.address`` or ``RAY_ADDRESS`` (as ``ray job submit`` sets it),
else starts a local Ray sized for the configured actors. The configuration is validated, and
checked against the cluster's resources, before any actor starts; problems are one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from mixgrpo_ray.config import (
    Config,
    ConfigError,
    check_cluster_resources,
    preset_names,
    required_resources,
    resolve,
)
from mixgrpo_ray.common.checkpoint import CheckpointError
from mixgrpo_ray.train.preflight import check_inputs
from mixgrpo_ray.train.recovery import RunStopped
from mixgrpo_ray.train.resume import check_checkpoint, resume_config
from mixgrpo_ray.plan.memory_plan import check_learner_fits
from mixgrpo_ray.train.training_run import run

PROG = "mixgrpo-ray train"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run MixGRPO training. Overrides are key.sub=value, e.g. run.iterations=20 rewards.quality.replicas=2.",
        epilog=f"presets: {', '.join(preset_names())} (a model preset first, algorithm presets layer on top)",
    )
    p.add_argument("--config", action="append", default=[], metavar="PRESET_OR_PATH",
                   help="preset name or YAML path; repeat to layer (default: tiny)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint; "
                   "'auto': continue run.output_dir/run.name if it exists, else start it (re-submittable jobs)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="place one light probe actor per role with the role's resources, print each role's device, "
                   "dtype and GPU ids, and exit without loading any model (exit 2 if a role cannot be placed)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def resolve_config(args: argparse.Namespace) -> Config:
    """The run's config; sets ``args.run_dir`` to the run to continue (None: a new run)."""
    args.run_dir = None
    if args.resume:
        cfg, args.run_dir = resume_config(args.resume, args.config, args.overrides)
        return cfg
    return resolve(args.config or None, args.overrides)


def connect_ray(cfg: Config):
    """Join the configured / ``RAY_ADDRESS`` cluster, or start a local one big enough."""
    import ray

    from mixgrpo_ray.cluster.ray_start import start_ray

    start_ray(address=cfg.ray.address, namespace=cfg.ray.namespace, need=required_resources(cfg),
              num_cpus=cfg.ray.num_cpus, dashboard=cfg.ray.dashboard, log_to_driver=True)
    return ray


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
        if args.print_config:
            print(cfg.to_yaml())
            return 0
        problem = check_learner_fits(cfg)  # the memory plan, before any actor starts
        if problem:
            raise ConfigError(problem)
        if not args.dry_run:  # a dry run probes placement only: it loads no model and reads no prompts
            check_inputs(cfg)
        check_checkpoint(args.run_dir)
    except (ConfigError, CheckpointError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    from mixgrpo_ray.train.loggers import LoggerError, check_loggers

    try:
        check_loggers(cfg.run.loggers)  # before Ray starts or a run directory exists
    except LoggerError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    ray = connect_ray(cfg)
    try:
        check_cluster_resources(cfg, ray.cluster_resources())
        if args.dry_run:
            from mixgrpo_ray.train.dry_run import dry_run

            code, report = dry_run(cfg)
            print(report, flush=True)
            if code:
                print(f"{PROG}: error: a role cannot be placed as configured (see ERROR above)", file=sys.stderr)
            return code
        return run(cfg, resume=args.run_dir)
    except (ConfigError, CheckpointError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except RunStopped as exc:  # a fault the run cannot go on from: stopped cleanly, resumable
        print(f"{PROG}: stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
