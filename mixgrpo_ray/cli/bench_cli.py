"""``mixgrpo-ray bench``: training iterations of every algorithm variant through the product and
in one plain process, side by side (the job is :mod:`mixgrpo_ray.bench.e2e`).
``mixgrpo-ray bench phases`` keeps the in-process benchmark of the rollout and update phases
(:mod:`mixgrpo_ray.bench.phases`); ``mixgrpo-ray bench slice`` trains FLUX at its real width on CPU,
exports, reloads in diffusers and sets each role's measured memory beside the plan
(:mod:`mixgrpo_ray.bench.flux_slice_run`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from mixgrpo_ray.cli.parsing import OneLineParser, parse

PROG = "mixgrpo-ray bench"


def phases_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=f"{PROG} phases", description="rollout and update cost of each variant, in-process")
    p.add_argument("--rounds", type=int, default=6, help="iterations per variant (interleaved)")
    p.add_argument("--prompts", type=int, default=2, help="prompts per iteration")
    p.add_argument("--group", type=int, default=12, help="images per prompt (docs/algorithm.md §1: 12)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--task", choices=("shapes", "pairs"), default="shapes",
                   help="the tiny model's built-in task: its shipped weights and train prompts (default: shapes)")
    p.add_argument("--sync-gb", type=float, default=1.0,
                   help="weight-sync benchmark: size of the synthetic state in GB (0: skip)")
    p.add_argument("--sync-model", metavar="FOLDER",
                   help="weight-sync benchmark of a FluxPipeline folder's transformer in bf16 instead of the synthetic "
                        "state, e.g. the real-width slice of python -m mixgrpo_ray.models.flux.flux_slice")
    p.add_argument("--sync-bucket-mb", type=float, default=256.0, help="weight-sync bucket size (learner.sync_bucket_mb)")
    p.add_argument("--traffic-side", type=int, default=1024,
                   help="reward-traffic count: side of the square images, with the flux preset's rewards and "
                        "batch (0: skip)")
    return p


def build_parser() -> argparse.ArgumentParser:
    from mixgrpo_ray.bench.e2e import VARIANTS

    p = OneLineParser(prog=PROG, description="Real training iterations of each variant through the Ray pipeline "
                      "and as one plain process, interleaved in blocks. `mixgrpo-ray bench slice --help`: FLUX at its "
                      "real width on CPU. `mixgrpo-ray bench phases --help`: the "
                      "in-process phase benchmark.")
    p.add_argument("--iterations", type=int, default=60, help="training iterations per variant")
    p.add_argument("--block", type=int, default=10, help="iterations a variant runs before the next takes its turn")
    p.add_argument("--eval-every", type=int, default=20, help="held-out evaluation every N iterations (0: start and end)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--config", action="append", default=[], metavar="PRESET_OR_PATH",
                   help="model preset(s) under the algorithm presets (default: tiny)")
    p.add_argument("--no-plain", action="store_true", help="skip the plain single-process loop")
    p.add_argument("--out", default="", help="output folder (default: runs/bench-<time>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every variant")
    return p


def main_phases(argv: list[str]) -> int:
    args = parse(phases_parser(), argv)
    if isinstance(args, int):
        return args
    if args.rounds < 1 or args.prompts < 1 or args.group < 2 or args.threads < 1 or args.sync_gb < 0 \
            or args.sync_bucket_mb <= 0 or args.traffic_side < 0:
        print(f"{PROG} phases: error: --rounds, --prompts, --threads must be >= 1, --group >= 2, --sync-gb >= 0, "
              "--sync-bucket-mb > 0 and --traffic-side >= 0", file=sys.stderr)
        return 2
    if args.sync_model and not (Path(args.sync_model) / "transformer" / "config.json").is_file():
        print(f"{PROG} phases: error: --sync-model {args.sync_model}: not a FluxPipeline folder (no "
              "transformer/config.json); write one with python -m mixgrpo_ray.models.flux.flux_slice", file=sys.stderr)
        return 2
    import torch

    from mixgrpo_ray.models.tiny.model import TinyPolicy
    from mixgrpo_ray.models.tiny.tasks import get_task
    from mixgrpo_ray.bench.phases import format_table, run_benchmark

    torch.set_num_threads(args.threads)
    builtin = get_task(args.task)
    policy = TinyPolicy.from_pretrained(f"builtin:{builtin.key}")
    prompts = builtin.load().train_prompts()[: args.prompts]
    print(f"tiny {args.task} model, {args.prompts} prompts x {args.group} images, {args.rounds} interleaved rounds, "
          f"{args.threads} thread(s)", flush=True)
    print(format_table(run_benchmark(policy, prompts, group=args.group, rounds=args.rounds)))
    if args.sync_gb > 0 or args.sync_model:
        sync_bench(args.sync_gb, args.sync_bucket_mb, args.sync_model)
    if args.traffic_side > 0:
        traffic_bench(args.traffic_side)
    return 0


def traffic_bench(side: int) -> None:
    """Bytes the flux preset's reward servers receive per iteration, images as sampled vs resized
    ahead as each reward declares (:func:`mixgrpo_ray.bench.phases.reward_traffic`)."""
    from mixgrpo_ray.config import resolve
    from mixgrpo_ray.bench.phases import FLUX_REWARD_INPUTS, format_traffic, reward_traffic

    cfg = resolve(["flux"], [])
    images = cfg.data.prompts_per_iteration * cfg.grpo.group_size
    inputs = {name: FLUX_REWARD_INPUTS.get(r.kind) for name, r in cfg.rewards.items()}
    print(format_traffic(reward_traffic(inputs, side, side, images)), flush=True)


def slice_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=f"{PROG} slice", description="FLUX at its real width on CPU: 2 training iterations with "
                      "full fine-tuning on fsdp ranks and with LoRA, export, reload in diffusers, plan vs measured "
                      "memory per role (about 4 minutes and 20 GB of memory for the default slice)")
    p.add_argument("--model", metavar="FOLDER", help="a FluxPipeline folder (default: write the real-width slice "
                   "of python -m mixgrpo_ray.models.flux.flux_slice into OUT/flux-slice)")
    p.add_argument("--out", default="", help="output folder (default: runs/bench-slice-<time>)")
    p.add_argument("--ranks", type=int, default=2, help="fsdp learner ranks of the full fine-tuning run")
    p.add_argument("--tolerance", type=float, default=0.15, help="largest allowed |measured / plan - 1| per role")
    p.add_argument("--only", choices=("full", "lora"), help="run only one of the two runs")
    return p


def main_slice(argv: list[str]) -> int:
    args = parse(slice_parser(), argv)
    if isinstance(args, int):
        return args
    out = Path(args.out or f"runs/bench-slice-{time.strftime('%Y%m%d-%H%M%S')}")
    error = None
    if args.ranks < 1 or args.tolerance <= 0:
        error = "--ranks must be >= 1 and --tolerance > 0"
    elif args.model and not (Path(args.model) / "model_index.json").is_file():
        error = (f"--model {args.model}: not a FluxPipeline folder (no model_index.json); write one with "
                 "python -m mixgrpo_ray.models.flux.flux_slice")
    elif out.exists() and any(p.name != "flux-slice" for p in out.iterdir()):
        error = f"--out {out} already holds a report or runs; choose a new folder"
    if error:
        print(f"{PROG} slice: error: {error}", file=sys.stderr)
        return 2
    from mixgrpo_ray.bench.flux_slice_run import format_report, run_slice_bench

    report = run_slice_bench(out, args.model, ranks=args.ranks, tolerance=args.tolerance,
                             full=args.only != "lora", lora=args.only != "full")
    print(format_report(report), flush=True)
    print(f"report: {out / 'report.md'}")
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["phases"]:
        return main_phases(argv[1:])
    if argv[:1] == ["slice"]:
        return main_slice(argv[1:])
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    from mixgrpo_ray.config import ConfigError
    from mixgrpo_ray.bench.e2e import VARIANTS, variant_config

    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    error = None
    if unknown or not names:
        error = f"--variants: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(VARIANTS)}"
    elif args.iterations < 1 or args.block < 1 or args.eval_every < 0:
        error = "--iterations and --block must be >= 1 and --eval-every >= 0"
    else:
        try:
            for n in names:
                variant_config(n, args.config or ["tiny"], args.overrides)
        except ConfigError as exc:
            error = str(exc)
    if error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return run(args, names)


def run(args: argparse.Namespace, names: list[str]) -> int:
    import platform

    from mixgrpo_ray.bench.e2e import run_benchmark, variant_config
    from mixgrpo_ray.bench.e2e_report import format_table, write_report
    from mixgrpo_ray.cluster.ray_start import ray_running
    from mixgrpo_ray.config import required_resources

    out = Path(args.out or f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    # every variant's actors live at once (they take turns, so logical CPUs may exceed cores)
    need = sum(required_resources(variant_config(n, args.config or ["tiny"], args.overrides))["CPU"] for n in names)
    with ray_running(private=True, need={"CPU": need}, log_to_driver=False):
        t0 = time.perf_counter()
        results = run_benchmark(names, out / "runs", iterations=args.iterations, block=args.block,
                                eval_every=args.eval_every, base=args.config or ["tiny"], overrides=args.overrides,
                                plain=not args.no_plain, log=lambda s: print(s, file=sys.stderr, flush=True))
        header = (f"`{PROG}` — {args.iterations} iterations per variant in blocks of {args.block}, "
                  f"{platform.machine()} {os.cpu_count()} CPU(s), {time.perf_counter() - t0:.0f} s in all")
        files = write_report(results, out, header)
    print(format_table(results))
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0


def sync_bench(size_gb: float, bucket_mb: float, model: "str | None" = None) -> None:
    """Weight-sync throughput per transport on a private local Ray (:mod:`mixgrpo_ray.bench.sync_throughput`)."""
    from mixgrpo_ray.bench.sync_throughput import format_sync_table, run_sync_bench
    from mixgrpo_ray.cluster.ray_start import ray_running

    state = f"the transformer of {model} in bf16" if model else f"synthetic fp32 state of {size_gb:g} GB"
    print(f"\nweight sync: {state}, buckets of {bucket_mb:g} MB, 2 receiving actors", flush=True)
    with ray_running(private=True, num_cpus=2, log_to_driver=False):
        print(format_sync_table(run_sync_bench(size_gb, bucket_mb, model=model)))
