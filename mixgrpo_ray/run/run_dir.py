"""The run directory: resolved config, ``metrics.jsonl``, rollout Parquet files, image grids,
checkpoints, and the reward-curve plot. Every write is atomic (temporary name, then rename).

Layout::

    RUN/config.yaml              resolved configuration
    RUN/metrics.jsonl            one JSON object per iteration (and eval rows)
    RUN/rollouts/iter_000001.parquet
    RUN/grids/iter_000000.png    held-out prompts, every run.grid_every iterations
    RUN/checkpoints/iter_000050/ weights.safetensors, optimizer.pt, state.json
    RUN/reward_curve.png
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Optional


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

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
        return path

    # --- checkpoints ----------------------------------------------------------------------------
    def checkpoint_path(self, iteration: int) -> Path:
        return self.path / "checkpoints" / f"iter_{iteration:06d}"

    def staging_path(self, iteration: int) -> Path:
        path = self.path / "checkpoints" / f".iter_{iteration:06d}.partial"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def commit_checkpoint(self, staging: Path, iteration: int, state: Mapping[str, Any]) -> Path:
        """Write the driver state into ``staging`` and rename it into place (atomic)."""
        atomic_write_text(staging / "state.json", json.dumps(dict(state), indent=2))
        final = self.checkpoint_path(iteration)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        atomic_write_text(self.path / "checkpoints" / "latest", final.name)
        return final

    def latest_checkpoint(self) -> Optional[Path]:
        marker = self.path / "checkpoints" / "latest"
        if marker.exists():
            path = self.path / "checkpoints" / marker.read_text().strip()
            if (path / "state.json").exists():
                return path
        done = sorted(p for p in (self.path / "checkpoints").glob("iter_*") if (p / "state.json").exists())
        return done[-1] if done else None

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
