"""``mixgrpo-ray sample``: sample the tiny model (base weights or an RL checkpoint) for prompts
and write a captioned PNG grid.

Images are deterministic ODE samples (Euler, 25 steps, shift 3 by default); prompt ``i`` starts
from the noise of seed ``--seed + i``. Without ``--prompt``/``--prompts-file``, ``--num``
held-out prompts of the model's built-in task (shapes or pairs), spread over the set, are used.
``--model`` is a model folder or ``builtin:tiny`` (the default) / ``builtin:tiny_pairs``;
``--checkpoint`` is a safetensors file of trainable (transformer) weights as published by the
learner; ``--score`` also prints the task's offline rewards of the images (shapes:
``prompt_following``, ``quality``; pairs: ``pair_following``, ``pair_layout``). The job is
:mod:`mixgrpo_ray.sample`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mixgrpo_ray.cli.parsing import OneLineParser, parse

PROG = "mixgrpo-ray sample"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Sample a captioned image grid from the tiny model.")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("-p", "--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts-file", help="text file with one prompt per line")
    p.add_argument("--num", type=int, default=16, help="held-out prompts (spread over the set) when none are given (default: 16)")
    p.add_argument("--model", help="tiny model directory (config.json + model.safetensors) or builtin:tiny / "
                   "builtin:tiny_pairs (default: builtin:tiny)")
    p.add_argument("--task", choices=("shapes", "pairs"),
                   help="built-in task of the default prompts and of --score (default: the model's own; shapes "
                        "for --random-init)")
    p.add_argument("--random-init", action="store_true", help="use a randomly initialised model (seeded by --seed)")
    p.add_argument("--checkpoint", help="safetensors file of trainable weights to load on top of the model")
    p.add_argument("--steps", type=int, default=25, help="Euler steps (default: 25)")
    p.add_argument("--shift", type=float, default=3.0, help="time shift of the sigma schedule (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the first prompt (default: 0)")
    p.add_argument("--columns", type=int, default=None, help="grid columns (default: about sqrt of the count)")
    p.add_argument("--scale", type=int, default=4, help="pixel enlargement in the grid (default: 4)")
    p.add_argument("--title", default=None, help="grid title (default: what was sampled)")
    p.add_argument("--score", action="store_true", help="print the task's offline rewards of the images")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    return p


def _problem(args: argparse.Namespace) -> str | None:
    for ok, message in (
        (args.steps >= 1, f"--steps must be >= 1, got {args.steps}"),
        (args.shift > 0, f"--shift must be > 0, got {args.shift}"),
        (args.num >= 1, f"--num must be >= 1, got {args.num}"),
        (args.scale >= 1, f"--scale must be >= 1, got {args.scale}"),
        (args.columns is None or args.columns >= 1, f"--columns must be >= 1, got {args.columns}"),
        (args.threads >= 1, f"--threads must be >= 1, got {args.threads}"),
        (not (args.random_init and args.model), "--random-init and --model exclude each other"),
        (args.checkpoint is None or Path(args.checkpoint).is_file(), f"--checkpoint {args.checkpoint} not found"),
        (args.model is None or args.model.startswith("builtin:") or Path(args.model).is_dir(),
         f"--model {args.model} is not a directory (nor builtin:tiny / builtin:tiny_pairs)"),
        (not Path(args.out).is_dir(), f"--out {args.out} is a directory; give a .png file"),
    ):
        if not ok:
            return message
    return None


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    problem = _problem(args)
    if problem:
        return _fail(problem)
    from mixgrpo_ray.models.tiny.tasks import task_of_weights
    from mixgrpo_ray.sample import load_policy, read_prompts, write_grid

    task = args.task or "shapes"
    if not args.random_init:
        try:
            task = task_of_weights(args.model).name
        except (OSError, ValueError) as exc:
            return _fail(f"cannot load the model: {str(exc).splitlines()[0]}")
        if args.task not in (None, task):
            return _fail(f"--task {args.task} but the model was pre-trained on the {task} task; drop --task or "
                         f"pass a {args.task} model")
    try:
        prompts = read_prompts(args.prompt, args.prompts_file, args.num, task)
    except ValueError as exc:
        return _fail(str(exc))

    import torch

    from mixgrpo_ray.eval.tiny_scores import score_images

    torch.set_num_threads(args.threads)
    try:
        policy = load_policy(args.model, args.random_init, args.seed, args.checkpoint, task)
    except (OSError, ValueError, RuntimeError) as exc:
        return _fail(f"cannot load the model: {str(exc).splitlines()[0]}")
    what = "random init" if args.random_init else ("checkpoint " + Path(args.checkpoint).name if args.checkpoint
                                                  else "base model")  # fmt: skip
    title = args.title if args.title is not None else (
        f"tiny {what}: {args.steps} Euler steps, shift {args.shift:g}, seed {args.seed}"
    )
    out, images = write_grid(args.out, policy, prompts, seed=args.seed, num_steps=args.steps, shift=args.shift,
                             title=title, columns=args.columns, scale=args.scale)
    print(f"wrote {out} ({len(prompts)} images)")
    if args.score:
        try:
            scores = score_images(images, prompts, task)
        except ValueError as exc:
            return _fail(f"cannot score: {exc}")
        for name, (mean, sem) in scores.items():
            print(f"{name}: {mean:.3f} +- {sem:.3f}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
