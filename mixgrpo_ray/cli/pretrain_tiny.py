"""``mixgrpo-ray pretrain-tiny``: pre-train the embedded tiny model on the built-in task.

Flow matching on the task's train combinations with the sampling time shift; text encoder and
transformer train jointly (AdamW, linear warm-up, cosine decay), seeded and reproducible on a
fixed thread count. Writes ``config.json`` and ``model.safetensors`` into ``--out``. The job is
:mod:`mixgrpo_ray.run.pretrain_tiny`.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from mixgrpo_ray.cli.parsing import OneLineParser, parse

PROG = "mixgrpo-ray pretrain-tiny"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description="Pre-train the embedded tiny text-to-image model on the built-in shapes task.",
    )
    p.add_argument("--out", required=True, help="output directory for config.json + model.safetensors")
    p.add_argument("--steps", type=int, default=2500, help="optimizer steps (default: 2500)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps (default: 100)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    p.add_argument("--sigma-shift", type=float, default=3.0, help="time shift of the sigma distribution (default: 3)")
    p.add_argument("--weight-floor", type=float, default=0.05,
                   help="sigma below which the 1/sigma^2 loss weight stops growing (default: 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and data (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="score held-out prompts every N steps (0: only at the end; default: 0)")
    p.add_argument("--eval-prompts", type=int, default=162,
                   help="how many held-out prompts to score (default: 162, all)")
    p.add_argument("--no-eval", action="store_true", help="skip held-out scoring entirely")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _validate(args: argparse.Namespace) -> str | None:
    checks = [
        (args.steps >= 1, f"--steps must be >= 1, got {args.steps}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.lr > 0 and math.isfinite(args.lr), f"--lr must be a positive number, got {args.lr}"),
        (args.warmup >= 0, f"--warmup must be >= 0, got {args.warmup}"),
        (args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}"),
        (args.sigma_shift > 0, f"--sigma-shift must be > 0, got {args.sigma_shift}"),
        (0 < args.weight_floor <= 1, f"--weight-floor must be in (0, 1], got {args.weight_floor}"),
        (args.threads >= 1, f"--threads must be >= 1, got {args.threads}"),
        (args.eval_every >= 0, f"--eval-every must be >= 0, got {args.eval_every}"),
        (args.eval_prompts >= 1, f"--eval-prompts must be >= 1, got {args.eval_prompts}"),
    ]
    for ok, message in checks:
        if not ok:
            return message
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return f"--out {out} exists and is not a directory"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):  # --help, or a one-line usage error already printed
        return args
    error = _validate(args)
    if error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    from mixgrpo_ray.run.pretrain_tiny import DivergedError, pretrain

    try:
        out, loss, seconds, final = pretrain(args)
    except DivergedError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} (loss {loss:.4f}, {seconds:.0f} s)"
          + (f"; held-out {final}" if not args.no_eval else ""))  # fmt: skip
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
