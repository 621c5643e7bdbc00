"""``mixgrpo-ray eval``: score the base model and a checkpoint with every configured reward.

For each held-out prompt and each of ``--seeds`` fixed noise seeds (``10000, 10001, ...``, the
seeds training's own before/after evaluation uses), one image is sampled by deterministic ODE
sampling (``sampling.num_steps`` Euler steps, ``sampling.shift``) and scored in-process by every
reward in the config's ``rewards`` section (weight-0 rewards included; no Ray). With
``--checkpoint`` the checkpoint's trainable weights are evaluated beside the base model on the
same prompts and seeds; with ``--mix-fraction p < 1`` the checkpoint's images use test-time
mixed-model sampling (SPEC §8): the first ``round(p * num_steps)`` steps with the checkpoint,
the rest with the base model.

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
import gc
import io
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from mixgrpo_ray.common.images import grid_png
from mixgrpo_ray.config import Config, ConfigError, preset_names, resolve

PROG = "mixgrpo-ray eval"
#: first noise seed of evaluation images (the same as training's before/after evaluation)
SEED_BASE = 10_000
WEIGHTS_FILE = "weights.safetensors"


class EvalError(ValueError):
    """A problem with the command's inputs, reported as one line (exit code 2)."""


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


# ---------------------------------------------------------------------------------------------
# Inputs: config, checkpoint, prompts, output folder
# ---------------------------------------------------------------------------------------------
def find_checkpoint(path: str) -> Path:
    """The weights file of ``path``: a ``.safetensors`` file, a checkpoint folder holding
    ``weights.safetensors``, or a run directory (its latest checkpoint)."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix != ".safetensors":
            raise EvalError(f"--checkpoint {path}: not a .safetensors file; pass RUN_DIR/checkpoints/iter_N or its {WEIGHTS_FILE}")
        return p
    if p.is_dir():
        if (p / WEIGHTS_FILE).is_file():
            return p / WEIGHTS_FILE
        if (p / "checkpoints").is_dir():
            from mixgrpo_ray.run.run_dir import RunDir

            latest = RunDir(p).latest_checkpoint()
            if latest is not None and (latest / WEIGHTS_FILE).is_file():
                return latest / WEIGHTS_FILE
            raise EvalError(f"--checkpoint {path}: the run has no complete checkpoint yet; pass a run with checkpoints/iter_N/{WEIGHTS_FILE}")
        raise EvalError(f"--checkpoint {path}: no {WEIGHTS_FILE} in this folder; pass RUN_DIR/checkpoints/iter_N")
    raise EvalError(f"--checkpoint {path}: does not exist; pass RUN_DIR/checkpoints/iter_N or a weights .safetensors file")


def checkpoint_run_dir(weights: Path) -> Optional[Path]:
    """``RUN`` when ``weights`` is ``RUN/checkpoints/<name>/weights.safetensors``."""
    ckpt = weights.parent
    if ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent
    return None


def read_weights(weights: Path, header_only: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (``header_only``: just check that it reads, return
    ``{}``); an unreadable file is a one-line :class:`EvalError`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        if header_only:
            with safe_open(str(weights), framework="pt") as f:
                if not list(f.keys()):
                    raise ValueError("the file holds no tensors")
            return {}
        return load_file(str(weights), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EvalError(f"--checkpoint {weights}: cannot read weights ({first})") from None


def resolve_eval_config(args: argparse.Namespace, weights: Optional[Path]) -> Config:
    """``--config`` presets and overrides; without ``--config``, the checkpoint's run config."""
    presets = list(args.config)
    if not presets and weights is not None:
        run = checkpoint_run_dir(weights)
        if run is not None and (run / "config.yaml").is_file():
            presets = [str(run / "config.yaml")]
    return resolve(presets or None, args.overrides)


def default_out(cfg: Config, weights: Optional[Path], mix_fraction: float) -> Path:
    run = checkpoint_run_dir(weights) if weights is not None else None
    if run is not None:
        name = weights.parent.name + (f"-mix{mix_fraction:g}" if mix_fraction < 1 else "")
        return run / "eval" / name
    return Path(cfg.run.output_dir) / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "results.json").is_file())):
        raise EvalError(f"--out {out}: exists and is not an earlier evaluation; choose another folder")


# ---------------------------------------------------------------------------------------------
# Sampling and scoring
# ---------------------------------------------------------------------------------------------
@dataclass
class ModelResult:
    """Per-image scores of one model (``name -> (num_images,)``, NaN = failed) and its grid."""

    key: str
    label: str
    scores: dict[str, torch.Tensor]
    grid_images: Optional[torch.Tensor] = None
    stats: dict[str, dict] = field(default_factory=dict)


def build_rewards(cfg: Config) -> dict:
    """Every configured reward model, in-process, by name."""
    from mixgrpo_ray.rewards.registry import build_reward

    out = {}
    for name, rc in cfg.rewards.items():
        try:
            out[name] = build_reward(rc.kind, **dict(rc.options))
        except (ValueError, FileNotFoundError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EvalError(f"rewards.{name}: cannot build reward {rc.kind!r}: {first}") from None
    return out


def score_model(
    key: str,
    label: str,
    policy,
    prompts: Sequence[str],
    seeds: Sequence[int],
    rewards: dict,
    cfg: Config,
    *,
    batch_size: int,
    grid_prompts: int,
    base_policy=None,
    mix_fraction: float = 1.0,
) -> ModelResult:
    """Sample one image per (prompt, seed), prompt-major, and score each batch with every reward."""
    from tqdm import tqdm

    from mixgrpo_ray.algo.rollout import sample_images

    pairs = [(p, s) for p in prompts for s in seeds]
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in rewards}
    grid: list[torch.Tensor] = []
    grid_rows = {i * len(seeds) for i in range(min(grid_prompts, len(prompts)))}
    bar = tqdm(total=len(pairs), desc=label, unit="img", disable=not cfg.run.progress, dynamic_ncols=True)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        texts = [p for p, _ in chunk]
        images = sample_images(
            policy, texts, [s for _, s in chunk], num_steps=cfg.sampling.num_steps, shift=cfg.sampling.shift,
            base_policy=base_policy, mix_fraction=mix_fraction,
        )
        for name, model in rewards.items():
            step = max(1, cfg.rewards[name].batch_size)
            for i in range(0, len(chunk), step):
                scores[name].append(model(images[i : i + step], texts[i : i + step]))
        grid += [images[j - start] for j in range(start, start + len(chunk)) if j in grid_rows]
        bar.update(len(chunk))
    bar.close()
    flat = {name: torch.cat(s) if s else torch.zeros(0) for name, s in scores.items()}
    for name, s in flat.items():
        if not rewards[name].can_fail and not bool(torch.isfinite(s).all()):
            raise RuntimeError(f"reward {name!r} returned non-finite scores for {label}")
    result = ModelResult(key, label, flat, torch.stack(grid) if grid else None)
    result.stats = {name: summarize(s) for name, s in flat.items()}
    return result


def summarize(scores: torch.Tensor) -> dict:
    """Mean and standard error (unbiased std / sqrt(n)) of the finite scores; failures counted."""
    ok = scores[torch.isfinite(scores)].double()
    n = int(ok.numel())
    mean = float(ok.mean()) if n else None
    se = float(ok.std() / math.sqrt(n)) if n > 1 else None
    return {"mean": mean, "se": se, "n": n, "failures": int(scores.numel() - n)}


def paired_change(after: torch.Tensor, before: torch.Tensor) -> dict:
    """Mean and standard error of ``after - before`` over images both scored."""
    return summarize(after.double() - before.double())


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------
def _decimals(se: Optional[float]) -> int:
    """Decimal places that show a standard error with two significant digits (4 to 8)."""
    if not se or not math.isfinite(se):
        return 4
    return int(min(8, max(4, 1 - math.floor(math.log10(se)))))


def _cell(stat: dict, signed: bool = False) -> str:
    if stat["mean"] is None:
        return "n/a"
    d = _decimals(stat["se"])
    text = f"{stat['mean']:+.{d}f}" if signed else f"{stat['mean']:.{d}f}"
    if stat["se"] is not None:
        text += f" ± {stat['se']:.{d}f}"
    if stat.get("failures"):
        text += f" ({stat['failures']} failed)"
    return text


def format_table(results: list[ModelResult], change: Optional[dict], names: Sequence[str]) -> str:
    """A markdown table: one row per model (and the paired change), one column per reward."""
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in results:
        lines.append(f"| {r.label} | " + " | ".join(_cell(r.stats[n]) for n in names) + " |")
    if change is not None:
        lines.append("| change (paired) | " + " | ".join(_cell(change[n], signed=True) for n in names) + " |")
    return "\n".join(lines)


def render_markdown(summary: dict, table: str) -> str:
    s = summary
    lines = [
        "# Evaluation",
        "",
        f"- prompts: `{s['prompts']['source']}` ({s['prompts']['count']} prompts x {len(s['seeds'])} seeds = "
        f"{s['images_per_model']} images per model)",
        f"- sampling: {s['sampling']['num_steps']} Euler steps, shift {s['sampling']['shift']:g}, seeds "
        f"{s['seeds'][0]}..{s['seeds'][-1]}",
    ]
    if s["checkpoint"]:
        lines.append(f"- checkpoint: `{s['checkpoint']}`")
        if s["mix_fraction"] < 1:
            lines.append(
                f"- mixed-model sampling: the first {s['mix_steps']} of {s['sampling']['num_steps']} steps with the "
                f"checkpoint, the rest with the base model (p = {s['mix_fraction']:g})"
            )
    lines += ["", table, "",
              "Mean ± standard error over images; change: checkpoint minus base on the same prompt and seed.", ""]
    return "\n".join(lines)


def write_outputs(out: Path, summary: dict, markdown: str, results: list[ModelResult],
                  prompts: Sequence[str], seeds: Sequence[int], grid_captions: Sequence[str]) -> None:
    """Write everything into a staging folder beside ``out``, then move it into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        grids = [r for r in results if r.grid_images is not None]
        for r in grids:
            (staging / "grids").mkdir(exist_ok=True)
            png = grid_png(r.grid_images, grid_captions, r.label, columns=len(grid_captions))
            (staging / "grids" / f"{r.key}.png").write_bytes(png)
        if len(grids) == 2:  # base and checkpoint, one row each, the same prompt and seed per column
            png = grid_png(torch.cat([r.grid_images for r in grids]), list(grid_captions) * 2,
                           f"{grids[0].label} vs {grids[1].label}", columns=len(grid_captions),
                           row_labels=[r.label for r in grids])
            (staging / "grids" / "compare.png").write_bytes(png)
        columns: dict[str, list] = {"prompt": [p for p in prompts for _ in seeds], "seed": [s for _ in prompts for s in seeds]}
        for r in results:
            for name, s in r.scores.items():
                columns[f"{r.key}/{name}"] = [float(v) if math.isfinite(v) else None for v in s.tolist()]
        pq.write_table(pa.table(columns), staging / "scores.parquet")
        (staging / "results.md").write_text(markdown)
        (staging / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def _release_memory() -> None:
    """Return freed model memory (call after dropping the last reference to a policy)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _build(cfg: Config, device: torch.device):
    from mixgrpo_ray.models.build import build_policy

    try:
        return build_policy(cfg.model, device, trainable=False)
    except (ValueError, OSError) as exc:  # OSError: missing / unreadable model files
        raise EvalError(f"model: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}") from None


def score_models(cfg: Config, prompts: Sequence[str], seeds: Sequence[int], rewards: dict,
                 weights: Optional[Path], label: str, mix_fraction: float, batch_size: int) -> list[ModelResult]:
    """``[base]``, or ``[base, checkpoint]`` when ``weights`` (a trainable-weights file) is given.

    The checkpoint is loaded first, so weights that do not fit the model fail before any
    sampling. At most two policies live at once, and two only when mixing (``mix_fraction < 1``).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    common = dict(batch_size=batch_size, grid_prompts=cfg.run.grid_prompts)
    policy = _build(cfg, device)
    results: list[ModelResult] = []
    if weights is not None:
        try:
            policy.load_trainable_state_dict(read_weights(weights))
        except (ValueError, RuntimeError, KeyError) as exc:
            raise EvalError(
                f"--checkpoint {weights}: does not fit model.kind={cfg.model.kind} "
                f"({str(exc).splitlines()[0]}); pass the config the run was trained with"
            ) from None
        base = _build(cfg, device) if mix_fraction < 1 else None
        results.append(score_model("checkpoint", label, policy, prompts, seeds, rewards, cfg,
                                   base_policy=base, mix_fraction=mix_fraction, **common))
        policy = None
        _release_memory()
        policy = base if base is not None else _build(cfg, device)
        base = None
    results.insert(0, score_model("base", "base", policy, prompts, seeds, rewards, cfg, **common))
    policy = None
    _release_memory()
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (EvalError, ConfigError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Evaluate as ``args`` says; returns 0 (input problems raise :class:`EvalError`)."""
    from mixgrpo_ray.data.prompts import load_prompts

    if not 0 < args.mix_fraction <= 1:
        raise EvalError(f"--mix-fraction must be in (0, 1], got {args.mix_fraction:g} (0.8 is the paper's choice)")
    if args.seeds is not None and args.seeds < 1:
        raise EvalError(f"--seeds must be >= 1, got {args.seeds}")
    if args.batch_size < 1:
        raise EvalError(f"--batch-size must be >= 1, got {args.batch_size}")
    weights = find_checkpoint(args.checkpoint) if args.checkpoint else None
    cfg = resolve_eval_config(args, weights)
    source = args.prompts or cfg.data.eval
    try:
        prompts = load_prompts(source)
    except (ValueError, FileNotFoundError) as exc:
        raise EvalError(f"prompts {source!r}: {exc}") from None
    if cfg.data.eval_prompts:
        prompts = prompts[: cfg.data.eval_prompts]
    seeds = [SEED_BASE + k for k in range(args.seeds or cfg.data.eval_seeds)]
    out = Path(args.out).expanduser() if args.out else default_out(cfg, weights, args.mix_fraction)
    check_out(out)
    label = "checkpoint"
    if weights is not None:
        read_weights(weights, header_only=True)
        label = weights.parent.name if weights.name == WEIGHTS_FILE else weights.stem
        label += f" (mix {args.mix_fraction:g})" if args.mix_fraction < 1 else ""
    rewards = build_rewards(cfg)
    results = score_models(cfg, prompts, seeds, rewards, weights, label, args.mix_fraction, args.batch_size)

    names = list(rewards)
    change = None
    if len(results) == 2:
        change = {n: paired_change(results[1].scores[n], results[0].scores[n]) for n in names}
    summary = {
        "prompts": {"source": source, "count": len(prompts)},
        "seeds": seeds,
        "images_per_model": len(prompts) * len(seeds),
        "sampling": {"num_steps": cfg.sampling.num_steps, "shift": cfg.sampling.shift, "solver": "euler"},
        "checkpoint": str(weights) if weights is not None else None,
        "mix_fraction": args.mix_fraction,
        "mix_steps": int(round(args.mix_fraction * cfg.sampling.num_steps)),
        "models": {r.key: {"label": r.label, "rewards": r.stats} for r in results},
        "change": change,
        "grids": {r.key: f"grids/{r.key}.png" for r in results if r.grid_images is not None},
        **({"compare_grid": "grids/compare.png"} if len(results) == 2 and cfg.run.grid_prompts else {}),
        "config": cfg.to_dict(),
    }
    table = format_table(results, change, names)
    grid_captions = prompts[: cfg.run.grid_prompts]
    write_outputs(out, summary, render_markdown(summary, table), results, prompts, seeds, grid_captions)
    print(table)
    print(f"wrote {out}/: results.md, results.json, scores.parquet" + (", grids/" if summary["grids"] else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
