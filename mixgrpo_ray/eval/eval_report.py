"""The outputs of ``mixgrpo-ray eval``: per-model statistics, the markdown table and the output
folder (``results.md``, ``results.json``, ``scores.parquet``, ``grids/``), written into a
staging folder and renamed into place when complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from mixgrpo_ray.common.images import grid_png
from mixgrpo_ray.common.stats import summarize


@dataclass
class ModelResult:
    """Per-image scores of one model (``name -> (num_images,)``, NaN = failed) and its grid."""

    key: str
    label: str
    scores: dict[str, torch.Tensor]
    grid_images: Optional[torch.Tensor] = None
    stats: dict[str, dict] = field(default_factory=dict)


def reward_stats(scores: torch.Tensor) -> dict:
    """``{"mean", "se", "n", "failures"}`` of the finite scores (docs/algorithm.md eq. (37)); the
    mean is ``None`` when no score is finite."""
    s = summarize(scores)
    return {"mean": s["mean"] if s["n"] else None, "se": s["se"], "n": s["n"], "failures": s["failed"]}


def paired_change(after: torch.Tensor, before: torch.Tensor) -> dict:
    """Mean and standard error of ``after - before`` over images both scored."""
    return reward_stats(after.double() - before.double())


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
def _decimals(se: Optional[float]) -> int:
    """Decimal places that show a standard error with two significant digits (4 to 8)."""
    if not se or not math.isfinite(se):
        return 4
    return int(min(8, max(4, 1 - math.floor(math.log10(se)))))


def stat_cell(stat: dict, signed: bool = False) -> str:
    """``mean ± se`` of a ``{"mean", "se"[, "failures"]}`` dict, to the decimals its error needs."""
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
        lines.append(f"| {r.label} | " + " | ".join(stat_cell(r.stats[n]) for n in names) + " |")
    if change is not None:
        lines.append("| change (paired) | " + " | ".join(stat_cell(change[n], signed=True) for n in names) + " |")
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


# ---------------------------------------------------------------------------------------------
# The output folder
# ---------------------------------------------------------------------------------------------
def check_out(out: Path) -> Optional[str]:
    """Why ``out`` cannot take an evaluation (``None`` when it can: absent, empty, or holding an
    earlier evaluation, a ``results.json``)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "results.json").is_file())):
        return f"--out {out}: exists and is not an earlier evaluation; choose another folder"
    return None


def _write_grids(folder: Path, results: list[ModelResult], grid_captions: Sequence[str]) -> None:
    grids = [r for r in results if r.grid_images is not None]
    for r in grids:
        (folder / "grids").mkdir(exist_ok=True)
        png = grid_png(r.grid_images, grid_captions, r.label, columns=len(grid_captions))
        (folder / "grids" / f"{r.key}.png").write_bytes(png)
    if len(grids) == 2:  # base and checkpoint, one row each, the same prompt and seed per column
        png = grid_png(torch.cat([r.grid_images for r in grids]), list(grid_captions) * 2,
                       f"{grids[0].label} vs {grids[1].label}", columns=len(grid_captions),
                       row_labels=[r.label for r in grids])
        (folder / "grids" / "compare.png").write_bytes(png)


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
        _write_grids(staging, results, grid_captions)
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
