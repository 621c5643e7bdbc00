"""``mixgrpo-ray train``: run MixGRPO training on Ray.

Connects to the cluster in ``ray.address`` or ``RAY_ADDRESS`` (as ``ray job submit`` sets it),
else starts a local Ray sized for the configured actors. The configuration is validated, and
checked against the cluster's resources, before any actor starts; problems are one line on
stderr and exit code 2.

``--dry-run`` shows where every role would compute and the memory it needs, and ends with one line
saying whether the cluster can start the run (exit 0) or not (exit 2). It is aimed at the cluster
in ``ray.address`` / ``RAY_ADDRESS`` (or the local machine), or, with ``--gpus-per-node``,
``--nodes`` and ``--gpu-memory-gb``, at a cluster described by those flags, placed on paper
without Ray.
"""

from __future__ import annotations

import argparse
import os
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
from mixgrpo_ray.train.resume import RESTARTED_CHILD, check_checkpoint, resume_config, run_restarting
from mixgrpo_ray.plan.plan_report import check_learner_fits
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
    p.add_argument("--driver-restarts", type=int, default=0, metavar="N",
                   help="with --resume: run the driver in a child process and, when it dies (killed, or any exit "
                   "but 0 and 2), run it again up to N times, each continuing from the latest checkpoint "
                   "(the job-level retry for `ray job submit`)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="place one light probe actor per role with the role's resources, print each role's device, "
                   "dtype and GPU ids, and exit without loading any model (exit 2 if a role cannot be placed)")
    target = p.add_argument_group("dry-run target", "with --dry-run: plan the run on a cluster described by "
                                  "these flags, without Ray (defaults 1 node x 8 GPUs of 80 GB)")
    target.add_argument("--gpus-per-node", type=int, metavar="N", help="GPUs on each node of the target")
    target.add_argument("--nodes", type=int, metavar="N", help="nodes of the target")
    target.add_argument("--gpu-memory-gb", type=float, metavar="GB", help="memory of each GPU of the target, GB")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def dry_run_target(args: argparse.Namespace):
    """The :class:`~mixgrpo_ray.plan.gpu_packing.Target` the flags describe, or None; raises
    ConfigError for flags without ``--dry-run`` or out of range."""
    flags = {"--gpus-per-node": args.gpus_per_node, "--nodes": args.nodes, "--gpu-memory-gb": args.gpu_memory_gb}
    given = [k for k, v in flags.items() if v is not None]
    if not given:
        return None
    if not args.dry_run:
        raise ConfigError(f"{', '.join(given)}: the target flags describe the cluster a dry run is aimed at; "
                          "add --dry-run")
    gpus, nodes, memory = (8 if args.gpus_per_node is None else args.gpus_per_node,
                           1 if args.nodes is None else args.nodes,
                           80.0 if args.gpu_memory_gb is None else args.gpu_memory_gb)
    if gpus < 1 or nodes < 1 or memory <= 0:
        raise ConfigError("--gpus-per-node and --nodes must be >= 1 and --gpu-memory-gb > 0")
    from mixgrpo_ray.plan.gpu_packing import Target

    return Target.uniform(nodes, gpus, memory)


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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_intermixed_args(argv)  # flags may come after overrides
    if args.driver_restarts and not os.environ.get(RESTARTED_CHILD):
        problem = ""
        if args.driver_restarts < 0:
            problem = "--driver-restarts must be >= 0"
        elif not args.resume:
            problem = ("--driver-restarts needs --resume auto (with run.name=<name>) or --resume RUN_DIR: a "
                       "restarted driver continues the run it finds there")
        elif args.dry_run or args.print_config:
            problem = "--driver-restarts trains; it does not combine with --dry-run or --print-config"
        if problem:
            print(f"{PROG}: error: {problem}", file=sys.stderr)
            return 2
        return run_restarting(argv, args.driver_restarts)
    try:
        target = dry_run_target(args)
        cfg = resolve_config(args)
        if args.print_config:
            print(cfg.to_yaml())
            return 0
        problem = None if args.dry_run else check_learner_fits(cfg)  # the memory plan, before any actor starts
        if problem:  # (a dry run reports the plan per role and GPU instead)
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

    if target is not None:
        from mixgrpo_ray.train.dry_run import planned_dry_run

        return report_dry_run(*planned_dry_run(cfg, target))
    ray = connect_ray(cfg)
    try:
        if args.dry_run:
            return dry_run_on(cfg, ray)
        check_cluster_resources(cfg, ray.cluster_resources())
        return run(cfg, resume=args.run_dir)
    except (ConfigError, CheckpointError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except RunStopped as exc:  # a fault the run cannot go on from: stopped cleanly, resumable
        print(f"{PROG}: stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()


def dry_run_on(cfg: Config, ray) -> int:
    """The dry run on the running cluster: probes when it has what the run asks for, else the
    placement on paper on its nodes."""
    from mixgrpo_ray.train.dry_run import cluster_target, dry_run, planned_dry_run

    try:
        check_cluster_resources(cfg, ray.cluster_resources())
    except ConfigError as exc:
        target = cluster_target(ray.nodes(), cfg.learner.gpu_memory_gb or None)
        return report_dry_run(*planned_dry_run(cfg, target, "this Ray cluster", problem=str(exc)))
    return report_dry_run(*dry_run(cfg))


def report_dry_run(code: int, report: str) -> int:
    """Print a dry run's report (its last line is the verdict); a failing one also as the error line."""
    print(report, flush=True)
    if code:
        print(f"{PROG}: error: {report.splitlines()[-1]}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
