"""The end-to-end benchmark's outputs: a Markdown table, JSON, and a PNG of held-out reward
against training wall-clock per variant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from mixgrpo_ray.common.files import atomic_write_text


def _num(value: Optional[float], fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def format_table(results: dict, reward: Optional[str] = None) -> str:
    """Markdown: one row per variant."""
    reward = reward or next(iter(next(iter(results.values()))["heldout"]), None)
    head = ("| variant | rollout NFE | policy NFE | s/iter (median ± ½IQR) | ratio | paper | pipeline / plain "
            "| rollout · reward · train · sync s | idle rollout · reward · learner "
            f"| held-out {reward} |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for name, r in results.items():
        p, idle = r["phase_s"], r["idle_share"]
        lines.append(
            f"| {name} | {r['nfe_rollout']:.1f} | {r['nfe_policy']:.1f} | {r['median_s']:.3f} ± {r['spread_s']:.3f} "
            f"| {_num(r['ratio'], '.2f')} | {_num(r['paper_ratio'], '.2f')} | {_num(r['pipeline_over_plain'], '.2f')} "
            f"| {p['rollout']:.3f} · {p['reward']:.3f} · {p['train']:.3f} · {p['sync']:.3f} "
            f"| {idle['rollout']:.0%} · {idle['reward']:.0%} · {idle['learner']:.0%} "
            f"| {_num(r['heldout'].get(reward), '.4f')} |"
        )
    reach = results.get("mixgrpo_async", {}).get("time_to_sync_final")
    if reach:
        got = (f"after {reach['async_s']:.1f} s, {reach['speedup']:.2f}x faster" if reach["speedup"]
               else f"not within the same training time ({results['mixgrpo_async']['iterations']} iterations)")
        lines += ["", f"`mixgrpo_async` reaches the synchronous run's final held-out {reach['reward']} "
                      f"({reach['target']:.4f}, after {reach['sync_s']:.1f} s of training) {got}."]
    colocated = results.get("mixgrpo_colocated", {}).get("over_disaggregated")
    if colocated:
        c, d = results["mixgrpo_colocated"], results["mixgrpo"]
        lines += ["", f"`mixgrpo_colocated` (2 hybrid workers) takes {colocated:.2f}x the s/iteration of `mixgrpo` "
                      f"(1 rollout actor + 1 learner rank) at equal CPU threads; idle share: hybrid "
                      f"{c['idle_share']['hybrid']:.0%}, against rollout {d['idle_share']['rollout']:.0%} and learner "
                      f"{d['idle_share']['learner']:.0%} (CPU processes sharing cores, not GPUs: see docs/performance.md)."]
    return "\n".join(lines)


def plot_heldout(results: dict, path: Path) -> Optional[Path]:
    """Held-out reward (each reward a panel) against seconds of training, one line per variant."""
    from mixgrpo_ray.common.plots import Curve, Panel, plot_panels

    rewards = sorted(next(iter(results.values()))["heldout"])
    if not rewards:
        return None
    panels = []
    for reward in rewards:
        curves = []
        for name, r in results.items():
            pts = [(p["train_s"], p[reward]) for p in r["heldout_curve"] if reward in p]
            curves.append(Curve(name, [p[0] for p in pts], [p[1] for p in pts]))
        panels.append(Panel("training wall-clock (s)", f"held-out {reward}", curves))
    return plot_panels([panels], path, "held-out reward against wall-clock, per variant")


def write_report(results: dict, out: Path, header: str) -> dict[str, Path]:
    out = Path(out)
    table = format_table(results)
    atomic_write_text(out / "bench.md", f"{header}\n\n{table}\n")
    atomic_write_text(out / "bench.json", json.dumps(results, indent=2))
    png = plot_heldout(results, out / "bench_heldout.png")
    return {"markdown": out / "bench.md", "json": out / "bench.json", **({"png": png} if png else {})}
