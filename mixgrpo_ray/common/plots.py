"""Line plots of the reports (benchmark, study): one panel per quantity, one line per variant,
optionally with a shaded band (e.g. ± one standard error over seeds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from mixgrpo_ray.common.files import atomic_write_bytes


@dataclass
class Curve:
    """One line: ``x`` and ``y``, and optionally the half-width of a shaded band around ``y``."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    band: Optional[Sequence[float]] = None


@dataclass
class Panel:
    xlabel: str
    ylabel: str
    curves: list[Curve]


def plot_panels(rows: Sequence[Sequence[Panel]], path: Path, title: str) -> Path:
    """A grid of panels (``rows`` of columns) written as a PNG at ``path`` (atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(6 * ncols, 4 * len(rows)), dpi=110, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(row):
                ax.axis("off")
                continue
            panel = row[c]
            for k, curve in enumerate(panel.curves):
                colour = f"C{k % 10}"
                ax.plot(curve.x, curve.y, marker="o", markersize=3, color=colour, label=curve.label)
                if curve.band is not None:
                    lo = [y - b for y, b in zip(curve.y, curve.band)]
                    hi = [y + b for y, b in zip(curve.y, curve.band)]
                    ax.fill_between(curve.x, lo, hi, color=colour, alpha=0.2, linewidth=0)
            ax.set_xlabel(panel.xlabel)
            ax.set_ylabel(panel.ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
