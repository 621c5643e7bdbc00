"""The run directory: resolved config, ``metrics.jsonl``, rollout Parquet files, image grids,
checkpoints, and the reward-curve plot. Every write is atomic (temporary name, then rename).

Layout::

    RUN/config.yaml              resolved configuration
    RUN/metrics.jsonl            one JSON object per iteration (and eval rows)
    RUN/rollouts/iter_000001.parquet
    RUN/grids/iter_000000.png    held-out prompts, every run.grid_every iterations
    RUN/checkpoints/iter_000050/ weights.safetensors, optimizer.pt, state.json (see common/checkpoint.py)
    RUN/reward_curve.png
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from mixgrpo_ray.common.checkpoint import latest_checkpoint
from mixgrpo_ray.common.files import atomic_write_bytes, atomic_write_text


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        #: where metrics rows and grids also go (``run.loggers``: :class:`mixgrpo_ray.train.loggers.Loggers`)
        self.loggers: Optional[Any] = None

    @classmethod
    def create(cls, output_dir: str, name: str = "") -> "RunDir":
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(output_dir) / (name or f"run-{stamp}")
        path, k = base, 1
        while path.exists():
            k += 1
            path = Path(f"{base}-{k}")
        path.mkdir(parents=True)
        return cls(path)

    # --- config and metrics ---------------------------------------------------------------
    def write_config(self, yaml_text: str) -> None:
        atomic_write_text(self.path / "config.yaml", yaml_text)

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(dict(row), sort_keys=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.loggers is not None:
            self.loggers.log_row(row)

    def read_metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, last_iteration: int) -> None:
        """Drop rows after ``last_iteration`` (used on resume: the run restarts from there)."""
        rows = [r for r in self.read_metrics() if r.get("iteration", 0) <= last_iteration]
        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    # --- rollouts and pictures ----------------------------------------------------------------
    def write_rollouts(self, iteration: int, columns: Mapping[str, list]) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.path / "rollouts" / f"iter_{iteration:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(pa.table(dict(columns)), tmp)
        os.replace(tmp, path)
        return path

    def write_grid(self, name: str, png: bytes) -> Path:
        path = self.path / "grids" / name
        atomic_write_bytes(path, png)
        if self.loggers is not None:
            self.loggers.log_grid(name, png)
        return path

    # --- checkpoints (layout: mixgrpo_ray.common.checkpoint) --------------------------------------
    def latest_checkpoint(self) -> Optional[Path]:
        return latest_checkpoint(self.path)

    # --- the reward curve -------------------------------------------------------------------------
    def plot_reward_curve(self) -> Optional[Path]:
        rows = [r for r in self.read_metrics() if "reward_mean" in r]
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = sorted({k for r in rows for k in r
                        if k.startswith("reward/") and not k.endswith(("_std", "_failures"))})
        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
        its = [r["iteration"] for r in rows]
        evals = [r for r in self.read_metrics() if any(k.startswith("eval/") for k in r)]
        for c, name in enumerate(names):
            colour = f"C{c}"
            label = name.split("/", 1)[1]
            values = [r.get(name, float("nan")) for r in rows]
            ax.plot(its, values, color=colour, alpha=0.25, linewidth=0.8)
            k = max(1, min(15, len(values) // 10))
            smooth = [sum(values[max(0, i - k + 1) : i + 1]) / len(values[max(0, i - k + 1) : i + 1])
                      for i in range(len(values))]
            ax.plot(its, smooth, color=colour, linewidth=2, label=f"train {label} (mean of {k})")
            key = "eval/" + name
            pts = [(r["iteration"], r[key], r.get(key + "_se", 0.0)) for r in evals if key in r]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[3 * p[2] for p in pts],
                            fmt="o", color=colour, mec="black", capsize=4, label=f"held-out {label} (±3 SE)")
        ax.set_xlabel("iteration")
        ax.set_ylabel("reward")
        ax.set_title("MixGRPO training reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = self.path / "reward_curve.png"
        tmp = path.with_name(".reward_curve.tmp.png")
        fig.savefig(tmp)
        plt.close(fig)
        os.replace(tmp, path)
        return path
