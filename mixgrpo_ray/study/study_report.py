"""A study's outputs (``mixgrpo-ray study``): per configuration, over its seeds, the held-out gain
per reward (final minus initial held-out reward), the final values, the held-out reward at equal
training wall-clock, training diagnostics and test-time mixed-model sampling, each as mean ±
standard error over seeds — ``study.md`` and ``study.json`` — and ``study.png``: held-out reward
against iterations and against training wall-clock (mean over seeds, shaded ± s.e.).

Training wall-clock is the sum of the runs' ``time/iteration_s`` (held-out evaluations and start-up
left out); runs trained side by side (``--parallel``) share the machine's cores, so compare
wall-clock only between studies run alike.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from mixgrpo_ray.common.files import atomic_write_text
from mixgrpo_ray.common.stats import summarize
from mixgrpo_ray.eval.eval_report import stat_cell
from mixgrpo_ray.common.plots import Curve, Panel, plot_panels
from mixgrpo_ray.train.run_dir import RunDir
from mixgrpo_ray.study.study_grid import Grid, RunSpec

EVAL_PREFIX = "eval/reward/"
#: training diagnostics, mean over a run's iterations: name -> how to read it from a metrics row
DIAGNOSTICS: dict[str, Callable[[dict], Optional[float]]] = {
    "grad_norm": lambda r: r.get("train/grad_norm"),
    "ratio_spread": lambda r: (r["train/ratio_max"] - r["train/ratio_min"]) if "train/ratio_max" in r else None,
    "approx_kl": lambda r: r.get("train/approx_kl"),
    "clip_fraction": lambda r: r.get("train/clip_fraction"),
    "advantage_abs_mean": lambda r: r.get("advantage_abs_mean"),
}


def stat(values: Sequence[float]) -> dict:
    """``{"mean", "se", "n"}`` over seeds (``se`` is None with fewer than two)."""
    s = summarize(torch.tensor([float(v) for v in values], dtype=torch.float64))
    return {"mean": s["mean"] if s["n"] else None, "se": s["se"], "n": s["n"]}


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------
def read_run(path: Path) -> dict:
    """A finished run's held-out curve ``[{iteration, train_s, rewards}]`` (the first point is
    before training, the last the final evaluation), its training seconds and diagnostics."""
    rows = RunDir(path).read_metrics()
    train_s, points, diag = 0.0, [], {k: [] for k in DIAGNOSTICS}
    for r in rows:
        if "reward_mean" in r:
            train_s += r.get("time/iteration_s", 0.0)
            for k, fn in DIAGNOSTICS.items():
                v = fn(r)
                if v is not None:
                    diag[k].append(float(v))
        rewards = {k[len(EVAL_PREFIX):]: v for k, v in r.items() if k.startswith(EVAL_PREFIX) and not k.endswith("_se")}
        if rewards:
            point = {"iteration": r["iteration"], "train_s": train_s, "rewards": rewards}
            if points and points[-1]["iteration"] == r["iteration"]:
                points[-1] = point  # the final evaluation of a run resumed at its last iteration
            else:
                points.append(point)
    iterations = sum(1 for r in rows if "reward_mean" in r)
    return {"curve": points, "train_s": train_s, "iterations": iterations,
            "diagnostics": {k: sum(v) / len(v) for k, v in diag.items() if v}}


def interpolate(curve: list[dict], reward: str, t: float) -> Optional[float]:
    """The held-out ``reward`` at ``t`` seconds of training, linear between evaluations."""
    pts = [(p["train_s"], p["rewards"][reward]) for p in curve if reward in p["rewards"]]
    for (t0, y0), (t1, y1) in zip(pts, pts[1:]):
        if t0 <= t <= t1:
            return y0 if t1 == t0 else y0 + (y1 - y0) * (t - t0) / (t1 - t0)
    return pts[-1][1] if pts and t >= pts[-1][0] else None


def read_mix(folder: Path) -> Optional[dict]:
    """``{reward: (checkpoint's mean, paired change)}`` of an evaluation folder (None: not there)."""
    path = folder / "results.json"
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    return {n: (s["mean"], (res.get("change") or {}).get(n, {}).get("mean"))
            for n, s in res["models"]["checkpoint"]["rewards"].items()}


# ---------------------------------------------------------------------------------------------
# Over seeds
# ---------------------------------------------------------------------------------------------
def summarize_study(grid: Grid, specs: Sequence[RunSpec], is_done: Callable[[RunSpec], bool],
                    mix_folder: Callable[[RunSpec, float], Path]) -> dict:
    """Per configuration, mean ± s.e. over its finished seeds (see the module docstring)."""
    runs = {s: read_run(s.path) for s in specs if is_done(s)}
    rewards = sorted({r for run in runs.values() for p in run["curve"] for r in p["rewards"]})
    configs: dict = {}
    for cname in grid.configs:
        mine = [(s, runs[s]) for s in specs if s.config == cname and s in runs]
        entry: dict = {"seeds": [s.seed for s, _ in mine],
                       "missing_seeds": [s.seed for s in specs if s.config == cname and s not in runs]}
        configs[cname] = entry
        if not mine:
            continue
        first = {r: [run["curve"][0]["rewards"][r] for _, run in mine] for r in rewards}
        last = {r: [run["curve"][-1]["rewards"][r] for _, run in mine] for r in rewards}
        entry["initial"] = {r: stat(first[r]) for r in rewards}
        entry["final"] = {r: stat(last[r]) for r in rewards}
        entry["gain"] = {r: stat([b - a for a, b in zip(first[r], last[r])]) for r in rewards}
        entry["train_s"] = stat([run["train_s"] for _, run in mine])
        entry["s_per_iteration"] = stat([run["train_s"] / max(1, run["iterations"]) for _, run in mine])
        entry["diagnostics"] = {k: stat([run["diagnostics"][k] for _, run in mine if k in run["diagnostics"]])
                                for k in DIAGNOSTICS if any(k in run["diagnostics"] for _, run in mine)}
        its = sorted(set.intersection(*({p["iteration"] for p in run["curve"]} for _, run in mine)))
        entry["curve"] = []
        for it in its:
            pts = [next(p for p in run["curve"] if p["iteration"] == it) for _, run in mine]
            entry["curve"].append({"iteration": it, "train_s": sum(p["train_s"] for p in pts) / len(pts),
                                   "rewards": {r: stat([p["rewards"][r] for p in pts]) for r in rewards}})
        entry["mix"] = {}
        for frac in grid.mix_fractions:
            got = [m for m in (read_mix(mix_folder(s, frac)) for s, _ in mine) if m is not None]
            if got:
                entry["mix"][f"{frac:g}"] = {r: {"value": stat([m[r][0] for m in got]),
                                                 "change": stat([m[r][1] for m in got if m[r][1] is not None])}
                                             for r in rewards if all(r in m for m in got)}
    done = {c: e for c, e in configs.items() if e["seeds"]}
    equal_s = min((e["train_s"]["mean"] for e in done.values()), default=None)
    for cname, e in done.items():  # the held-out reward after the fastest configuration's training time
        curves = [run["curve"] for s, run in runs.items() if s.config == cname]
        at = {r: [interpolate(c, r, equal_s) for c in curves] for r in rewards}
        e["equal_wallclock"] = {
            "reward": {r: stat([v for v in at[r] if v is not None]) for r in rewards},
            "gain": {r: stat([v - c[0]["rewards"][r] for v, c in zip(at[r], curves) if v is not None])
                     for r in rewards},
        }
    return {"grid": grid.to_dict(), "rewards": rewards, "equal_wallclock_s": equal_s, "configs": configs}


# ---------------------------------------------------------------------------------------------
# Markdown, JSON, PNG
# ---------------------------------------------------------------------------------------------
def _cell(s: Optional[dict], signed: bool = False) -> str:
    return "—" if not s or s["mean"] is None else stat_cell(s, signed)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def format_tables(summary: dict) -> str:
    rewards, configs = summary["rewards"], summary["configs"]
    done = {c: e for c, e in configs.items() if e["seeds"]}
    lines = ["## Held-out gain (final − initial), mean ± s.e. over seeds", ""]
    lines += _table(["configuration", "seeds", *(f"gain {r}" for r in rewards), *(f"final {r}" for r in rewards),
                     "s/iteration", "training s"],
                    [[c, str(len(e["seeds"])), *(_cell(e["gain"][r], True) for r in rewards),
                      *(_cell(e["final"][r]) for r in rewards), _cell(e["s_per_iteration"]), _cell(e["train_s"])]
                     for c, e in done.items()])
    t = summary["equal_wallclock_s"]
    lines += ["", f"## At equal wall-clock ({t:.1f} s of training, the fastest configuration's)", ""]
    lines += _table(["configuration", *(f"held-out {r}" for r in rewards), *(f"gain {r}" for r in rewards)],
                    [[c, *(_cell(e["equal_wallclock"]["reward"][r]) for r in rewards),
                      *(_cell(e["equal_wallclock"]["gain"][r], True) for r in rewards)] for c, e in done.items()])
    lines += ["", "## Held-out reward over training (mean ± s.e. over seeds at each evaluation)", ""]
    lines += _table(["configuration", "iteration", "training s", *(f"held-out {r}" for r in rewards)],
                    [[c, str(p["iteration"]), f"{p['train_s']:.1f}", *(_cell(p["rewards"].get(r)) for r in rewards)]
                     for c, e in done.items() for p in e["curve"]])
    names = [k for k in DIAGNOSTICS if any(k in e["diagnostics"] for e in done.values())]
    lines += ["", "## Training diagnostics (mean over iterations; mean ± s.e. over seeds)", ""]
    lines += _table(["configuration", *names], [[c, *(_cell(e["diagnostics"].get(k)) for k in names)]
                                                 for c, e in done.items()])
    mix = [(c, p, m) for c, e in done.items() for p, m in e["mix"].items()]
    if mix:
        lines += ["", "## Test-time mixed-model sampling of the final checkpoints (first p of the steps with the "
                  "trained model, the rest with the base model)", ""]
        lines += _table(["configuration", "p", *(f"held-out {r}" for r in rewards), *(f"change {r}" for r in rewards)],
                        [[c, p, *(_cell(m.get(r, {}).get("value")) for r in rewards),
                          *(_cell(m.get(r, {}).get("change"), True) for r in rewards)] for c, p, m in mix])
    missing = [f"{c} (seeds {', '.join(map(str, e['missing_seeds']))})" for c, e in configs.items() if e["missing_seeds"]]
    if missing:
        lines += ["", "Not finished, left out: " + "; ".join(missing) + "."]
    return "\n".join(lines)


def plot_study(summary: dict, path: Path) -> Path:
    """Held-out reward against iterations (top) and training wall-clock (bottom), per reward."""
    rows: list[list[Panel]] = [[], []]
    for reward in summary["rewards"]:
        by_it, by_s = [], []
        for cname, e in summary["configs"].items():
            pts = [p for p in e.get("curve", []) if reward in p["rewards"]]
            if not pts:
                continue
            y = [p["rewards"][reward]["mean"] for p in pts]
            band = [p["rewards"][reward]["se"] or 0.0 for p in pts]
            by_it.append(Curve(cname, [p["iteration"] for p in pts], y, band))
            by_s.append(Curve(cname, [p["train_s"] for p in pts], y, band))
        rows[0].append(Panel("iteration", f"held-out {reward}", by_it))
        rows[1].append(Panel("training wall-clock (s)", f"held-out {reward}", by_s))
    return plot_panels(rows, path, f"study {summary['grid']['name']}: held-out reward, mean over seeds ± s.e.")


def write_report(grid: Grid, out: Path, specs: Sequence[RunSpec], is_done: Callable[[RunSpec], bool],
                 mix_folder: Callable[[RunSpec, float], Path], *, command: str = "", parallel: int = 1,
                 elapsed_s: float = 0.0) -> dict[str, Path]:
    summary = summarize_study(grid, specs, is_done, mix_folder)
    summary["machine"] = {"arch": platform.machine(), "cpus": os.cpu_count(), "system": platform.system()}
    summary.update(command=command, parallel=parallel, elapsed_s=elapsed_s)
    seeds = ", ".join(map(str, grid.seeds))
    header = [f"# Study `{grid.name}`", "", *([grid.description, ""] if grid.description else []),
              *([f"- command: `{command}`"] if command else []),
              f"- machine: {platform.machine()}, {os.cpu_count()} CPU(s); {parallel} run(s) at a time; "
              f"{elapsed_s:.0f} s this invocation",
              f"- {len(grid.configs)} configurations x {len(grid.seeds)} seeds ({seeds}), {grid.iterations} iterations "
              f"each, held-out evaluation every {grid.eval_every or grid.iterations} iterations; base presets "
              f"{', '.join(grid.base)}",
              "- gain: final minus initial held-out reward of each run (same prompts and noise seeds), then mean ± "
              "standard error over seeds", ""]
    png = plot_study(summary, out / "study.png")
    text = "\n".join(header) + "\n" + format_tables(summary) + f"\n\n![held-out reward]({png.name})\n"
    atomic_write_text(out / "study.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "study.md", text)
    return {"markdown": out / "study.md", "json": out / "study.json", "png": png}
