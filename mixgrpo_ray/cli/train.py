"""``mixgrpo-ray train``: run MixGRPO training on Ray.

Connects to the cluster in ``ray.address`` or ``RAY_ADDRESS`` (as ``ray job submit`` sets it),
else starts a local Ray sized for the configured actors. The configuration is validated, and
checked against the cluster's resources, before any actor starts; problems are one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from mixgrpo_ray.config import (
    Config,
    ConfigError,
    apply_override,
    check_cluster_resources,
    from_dict,
    load_preset,
    parse_override,
    preset_names,
    required_resources,
    resolve,
)
from mixgrpo_ray.run.training import run

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
        cfg_path = Path(args.resume) / "config.yaml"
        if not cfg_path.is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there; pass the directory of an earlier run")
        data = load_preset(str(cfg_path))
        for text in args.overrides:
            data = apply_override(data, *parse_override(text))
        return from_dict(data)
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
    from mixgrpo_ray.run.plan import check_learner_fits

    problem = check_learner_fits(cfg)  # the memory plan, before any actor starts
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2

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


if __name__ == "__main__":
    sys.exit(main())
