"""``mixgrpo-ray eval``: score the base model and a checkpoint with every configured reward.

For each held-out prompt and each of ``--seeds`` fixed noise seeds (``10000, 10001, ...``), one
image is sampled by deterministic ODE sampling and scored by every reward in the config's
``rewards`` section. With ``--checkpoint`` the checkpoint's trainable weights are evaluated
beside the base model on the same prompts and seeds; with ``--mix-fraction p < 1`` the
checkpoint's images use test-time mixed-model sampling (docs/algorithm.md eq. (36)). The job is
:mod:`mixgrpo_ray.eval.heldout_eval`.

Outputs, written into a staging folder and renamed into place when complete::

    OUT/results.md      the table: mean ± standard error per reward and model, and the paired
                        change (checkpoint - base on the same prompt and seed) ± its standard error
    OUT/results.json    the same numbers, the prompts, seeds, sampling settings and config
    OUT/scores.parquet  one row per (prompt, seed): the score of every reward for every model
    OUT/grids/<model>.png  captioned row of images of the first ``run.grid_prompts`` prompts (first seed)
    OUT/grids/compare.png  with a checkpoint: the same images, base row above checkpoint row

``OUT`` defaults to ``RUN/eval/<checkpoint>[-mix<p>]`` for a checkpoint inside a run directory,
else ``<run.output_dir>/eval-<time>``. An existing ``OUT`` is replaced only if it holds an
earlier evaluation (a ``results.json``).

Configuration problems, a bad checkpoint or prompt source and an unusable ``--out`` are one line
on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from mixgrpo_ray.config import ConfigError, preset_names

PROG = "mixgrpo-ray eval"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Score the base model and a checkpoint on held-out prompts with every configured reward.",
        epilog=f"presets: {', '.join(preset_names())}. Without --config, a checkpoint inside a run directory "
        "uses that run's config.yaml.",
    )
    p.add_argument("--config", action="append", default=[], metavar="PRESET_OR_PATH",
                   help="preset name or YAML path; repeat to layer (default: the checkpoint's run config, else tiny)")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="RUN_DIR/checkpoints/iter_N, a weights .safetensors file, or a run directory (latest checkpoint)")
    p.add_argument("--mix-fraction", type=float, default=1.0, metavar="P",
                   help="fraction of steps (from the noisy end) sampled with the checkpoint, the rest with the base "
                   "model; the paper recommends 0.8 (default 1.0: no mixing)")
    p.add_argument("--prompts", metavar="SOURCE", help="prompt source (default: data.eval), e.g. path/to/hpdv2:test")
    p.add_argument("--seeds", type=int, metavar="N", help="images per prompt (default: data.eval_seeds)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per sampling call (default 8)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN/eval/<checkpoint>[-mix<P>] for a "
                   "checkpoint inside a run directory, else <run.output_dir>/eval-<time>)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mixgrpo_ray.eval.heldout_eval import EvalError, evaluate

    try:
        out, table, summary = evaluate(
            presets=args.config, overrides=args.overrides, checkpoint=args.checkpoint,
            mix_fraction=args.mix_fraction, prompt_source=args.prompts, seeds=args.seeds,
            batch_size=args.batch_size, out=args.out,
        )
    except (EvalError, ConfigError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(table)
    print(f"wrote {out}/: results.md, results.json, scores.parquet" + (", grids/" if summary["grids"] else ""), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
