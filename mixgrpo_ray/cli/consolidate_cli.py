"""``mixgrpo-ray consolidate``: write the trainable weights of a sharded checkpoint (written by
``learner.strategy=fsdp``) to one safetensors file, e.g. for tools that read a single file."""

from __future__ import annotations

import sys
from pathlib import Path

from mixgrpo_ray.cli.parsing import OneLineParser, parse

PROG = "mixgrpo-ray consolidate"


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="RUN_DIR/checkpoints/iter_N (or its sharded/ folder)")
    p.add_argument("--out", help="output file (default: CHECKPOINT/weights.safetensors)")
    args = parse(p, argv)
    if isinstance(args, int):
        return args
    from mixgrpo_ray.common.checkpoint import WEIGHTS_FILE
    from mixgrpo_ray.common.sharded_checkpoint import consolidate, sharded_dir

    src = sharded_dir(args.checkpoint)
    if src is None:
        print(f"{PROG}: error: {args.checkpoint}: not a sharded checkpoint (no sharded/.metadata)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else (src.parent if src.name == "sharded" else src) / WEIGHTS_FILE
    print(f"wrote {consolidate(src, out)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
