"""``mixgrpo-ray pretrain-tiny``: pre-train the embedded tiny model on a built-in task (``--task``:
``shapes``, one coloured shape, the default; ``pairs``, two shapes in a named layout).

Flow matching on the task's train combinations with the sampling time shift; text encoder and
transformer train jointly (AdamW, linear warm-up, cosine decay), seeded and reproducible on a
fixed thread count. Writes ``config.json`` and ``model.safetensors`` into ``--out``. The job is
:mod:`mixgrpo_ray.pretrain_tiny`.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from mixgrpo_ray.cli.parsing import OneLineParser, parse
from mixgrpo_ray.models.tiny.tasks import TASKS

PROG = "mixgrpo-ray pretrain-tiny"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description="Pre-train the embedded tiny text-to-image model on a built-in task.",
    )
    p.add_argument("--task", choices=tuple(TASKS), default="shapes",
                   help="built-in task: shapes (one coloured shape) or pairs (two shapes in a named layout); "
                        "default: shapes")
    p.add_argument("--out", required=True, help="output directory for config.json + model.safetensors")
    p.add_argument("--steps", type=int, default=2500, help="optimizer steps (default: 2500)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps (default: 100)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    p.add_argument("--sigma-shift", type=float, default=3.0, help="time shift of the sigma distribution (default: 3)")
    p.add_argument("--weight-floor", type=float, default=0.05,
                   help="sigma below which the 1/sigma^2 loss weight stops growing (default: 0.05)")
    p.add_argument("--position-init", type=float, default=0.02,
                   help="initial standard deviation of the text encoder's word-position embeddings (word "
                        "embeddings start at 1; default: 0.02)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and data (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="score held-out prompts every N steps (0: only at the end; default: 0)")
    p.add_argument("--eval-prompts", type=int, default=None,
                   help="how many held-out prompts to score (default: all of the task's: shapes 162, pairs 216)")
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
        (args.position_init >= 0 and math.isfinite(args.position_init),
         f"--position-init must be a number >= 0, got {args.position_init}"),
        (args.eval_every >= 0, f"--eval-every must be >= 0, got {args.eval_every}"),
        (args.eval_prompts is None or args.eval_prompts >= 1, f"--eval-prompts must be >= 1, got {args.eval_prompts}"),
    ]
    for ok, message in checks:
        if not ok:
            return message
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return f"--out {out} exists and is not a directory"
    return None


def _scores(scores: dict) -> str:
    """``{reward: [mean, sem], ...}`` (other entries skipped) as ``reward mean +- sem, ...``."""
    return ", ".join(f"{k} {v[0]:.4f} +- {v[1]:.4f}" for k, v in scores.items() if isinstance(v, list))


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):  # --help, or a one-line usage error already printed
        return args
    error = _validate(args)
    if error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    from mixgrpo_ray.pretrain_tiny import DivergedError, pretrain

    if args.eval_prompts is None:  # recorded in config.json as the number it stands for
        args.eval_prompts = len(TASKS[args.task].load().eval_prompts())
    try:
        out, loss, seconds, final = pretrain(args)
    except DivergedError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    line = f"wrote {out} (loss {loss:.4f}, {seconds:.0f} s)"
    if not args.no_eval:
        line += (f"; held-out ({args.eval_prompts} prompts): trained {_scores(final)}; random init "
                 f"{_scores(final['random_init'])}; ground truth {_scores(final['ground_truth'])}")
    print(line)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
