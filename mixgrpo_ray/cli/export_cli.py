"""``mixgrpo-ray export``: a checkpoint's trained weights as a model diffusers (FLUX) or
``TinyPolicy.from_pretrained`` (tiny) loads, with a model card. The job is :mod:`mixgrpo_ray.export`.

The run's ``config.yaml`` (beside ``checkpoints/``) says what was trained and which base model it
started from; pass ``--config``/overrides for a checkpoint outside its run directory. Input
problems (checkpoint, config, an ``--out`` that exists and is not empty) are one line on stderr and
exit code 2; nothing is left half-written.
"""

from __future__ import annotations

import argparse
import sys

from mixgrpo_ray.cli.parsing import OneLineParser, parse

PROG = "mixgrpo-ray export"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Export a checkpoint as a diffusers / tiny model folder.")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="RUN_DIR/checkpoints/iter_N, its weights.safetensors, or a run directory (latest checkpoint)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (must not exist or be empty)")
    p.add_argument("--config", action="append", default=[], metavar="PRESET_OR_PATH",
                   help="preset name or YAML path (default: the checkpoint's run config)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="precision of the exported FLUX weights (default fp32, as trained; bf16 halves the size)")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard of a FLUX transformer (default 5GB)")
    p.add_argument("--no-model-card", action="store_true", help="do not write README.md")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    from mixgrpo_ray.export import ExportError, export

    try:
        out, what = export(checkpoint=args.checkpoint, out=args.out, presets=args.config, overrides=args.overrides,
                           dtype=args.dtype, card=not args.no_model_card, max_shard_size=args.max_shard_size)
    except ExportError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}/: {what}", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
