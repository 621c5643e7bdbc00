"""``mixgrpo-ray plan``: the memory each role of a configuration needs on one GPU, whether it
fits a cluster, the smallest learner count for full fine-tuning, and the seconds per iteration of
both placements (:mod:`mixgrpo_ray.plan.plan_report`)."""

from __future__ import annotations

import sys

from mixgrpo_ray.cli.parsing import OneLineParser, parse

PROG = "mixgrpo-ray plan"


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", default=[], metavar="PRESET_OR_PATH",
                   help="preset name or YAML path; repeat to layer (default: tiny)")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--gpu-memory-gb", type=float, default=80.0)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpu-tflops", type=float, default=None, metavar="TFLOPS",
                   help="sustained TFLOP/s of one GPU for the s/iteration estimate (default 400: ~40%% of an "
                        "H100's dense bf16 peak)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    if args.gpus_per_node < 1 or args.nodes < 1 or args.gpu_memory_gb <= 0:
        print(f"{PROG}: error: --gpus-per-node and --nodes must be >= 1 and --gpu-memory-gb > 0", file=sys.stderr)
        return 2
    if args.gpu_tflops is not None and not args.gpu_tflops > 0:
        print(f"{PROG}: error: --gpu-tflops must be > 0 (sustained TFLOP/s of one GPU), got {args.gpu_tflops:g}",
              file=sys.stderr)
        return 2
    from mixgrpo_ray.config import ConfigError, resolve
    from mixgrpo_ray.plan.iteration_time import DEFAULT_TFLOPS
    from mixgrpo_ray.plan.plan_report import plan_report

    try:
        cfg = resolve(args.config or None, args.overrides)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    text, ok = plan_report(cfg, args.gpu_memory_gb, args.gpus_per_node, args.nodes, args.gpu_tflops or DEFAULT_TFLOPS)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
