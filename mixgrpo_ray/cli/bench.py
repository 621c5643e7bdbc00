"""``mixgrpo-ray bench``: measure rollout and update cost of each algorithm variant side by side
on the embedded tiny model (the job is :mod:`mixgrpo_ray.run.bench`)."""

from __future__ import annotations

import argparse
import sys

PROG = "mixgrpo-ray bench"


def build_parser() -> argparse.ArgumentParser:
    from mixgrpo_ray.run import bench

    p = argparse.ArgumentParser(prog=PROG, description=bench.__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6, help="iterations per variant (interleaved)")
    p.add_argument("--prompts", type=int, default=2, help="prompts per iteration")
    p.add_argument("--group", type=int, default=12, help="images per prompt (docs/algorithm.md §1: 12)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--sync-gb", type=float, default=1.0,
                   help="weight-sync benchmark: size of the synthetic state in GB (0: skip)")
    p.add_argument("--sync-bucket-mb", type=float, default=256.0, help="weight-sync bucket size (learner.sync_bucket_mb)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rounds < 1 or args.prompts < 1 or args.group < 2 or args.threads < 1 or args.sync_gb < 0 \
            or args.sync_bucket_mb <= 0:
        print("bench: error: --rounds, --prompts, --threads must be >= 1, --group >= 2, --sync-gb >= 0 and "
              "--sync-bucket-mb > 0", file=sys.stderr)
        return 2
    import torch

    from mixgrpo_ray.models.tiny import task
    from mixgrpo_ray.models.tiny.model import TinyPolicy
    from mixgrpo_ray.run.bench import format_table, run_benchmark

    torch.set_num_threads(args.threads)
    policy = TinyPolicy.from_pretrained()
    prompts = task.train_prompts()[: args.prompts]
    print(f"tiny model, {args.prompts} prompts x {args.group} images, {args.rounds} interleaved rounds, "
          f"{args.threads} thread(s)", flush=True)
    results = run_benchmark(policy, prompts, group=args.group, rounds=args.rounds)
    print(format_table(results))
    if args.sync_gb > 0:
        sync_bench(args.sync_gb, args.sync_bucket_mb)
    return 0


def sync_bench(size_gb: float, bucket_mb: float) -> None:
    """Weight-sync throughput per transport on a private local Ray (:mod:`mixgrpo_ray.run.sync_bench`)."""
    import os

    import ray

    from mixgrpo_ray.run.sync_bench import format_sync_table, run_sync_bench

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    print(f"\nweight sync: synthetic fp32 state of {size_gb:g} GB, buckets of {bucket_mb:g} MB, 2 receiving actors",
          flush=True)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        print(format_sync_table(run_sync_bench(size_gb, bucket_mb)))
    finally:
        ray.shutdown()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
