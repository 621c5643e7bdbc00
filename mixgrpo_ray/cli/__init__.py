"""The ``mixgrpo-ray`` command: one subcommand per job, each living in its own module.

Subcommands are imported lazily so ``mixgrpo-ray --help`` is instant and a job only pays for
the libraries it uses. Each target module exposes ``main(argv: list[str]) -> int``.
"""

from __future__ import annotations

import importlib
import sys

#: subcommand -> (module, one-line description)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("mixgrpo_ray.cli.train_cli", "run MixGRPO training (local Ray or the cluster in RAY_ADDRESS)"),
    "eval": ("mixgrpo_ray.cli.eval_cli", "score a checkpoint on held-out prompts with every configured reward"),
    "sample": ("mixgrpo_ray.cli.sample_cli", "sample an image grid for prompts and write a captioned PNG"),
    "pretrain-tiny": ("mixgrpo_ray.cli.pretrain_tiny_cli", "pre-train the embedded tiny model on the built-in task"),
    "export": ("mixgrpo_ray.cli.export_cli", "export a checkpoint as a diffusers (FLUX) or tiny model folder with a model card"),
    "bench": ("mixgrpo_ray.cli.bench_cli", "time each algorithm variant through the pipeline and a plain loop, side by side"),
    "study": ("mixgrpo_ray.cli.study_cli", "train a grid of configurations x seeds; held-out gains with standard errors"),
    "plan": ("mixgrpo_ray.cli.plan_cli", "per-role GPU memory of a config, and the smallest learner count that fits"),
    "consolidate": ("mixgrpo_ray.cli.consolidate_cli", "write a sharded checkpoint's weights to one safetensors file"),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [
        "usage: mixgrpo-ray <command> [options]",
        "",
        "MixGRPO post-training of flow-matching text-to-image models on Ray.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in SUBCOMMANDS.items()]
    lines += ["", "Run 'mixgrpo-ray <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from mixgrpo_ray import __version__

        print(f"mixgrpo-ray {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(
            f"mixgrpo-ray: unknown command {command!r}; choose one of: {', '.join(SUBCOMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(SUBCOMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
