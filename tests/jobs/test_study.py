"""``mixgrpo-ray study`` on a two-configuration, two-seed, three-iteration grid through the product:
the outputs' structure (table, JSON, PNG, run directories), resumability (finished runs are not
redone, an interrupted one resumes from its checkpoint), the built-in grids, and bad grids (one
line, exit code 2, nothing written)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from mixgrpo_ray.cli.study_cli import main as study_main  # noqa: E402
from mixgrpo_ray.common import checkpoint as ckpt  # noqa: E402
from mixgrpo_ray.study.study_runs import estimate, prepare  # noqa: E402
from mixgrpo_ray.study.study_grid import builtin_grids, load_grid  # noqa: E402
from repo_paths import ROOT  # noqa: E402

SMALL = ["data.eval_prompts=3", "data.eval_seeds=1", "data.prompts_per_iteration=2", "grpo.group_size=4",
         "optim.samples_per_update=8", "rollout.num_workers=1", "run.grid_every=0", "run.checkpoint_every=2"]
GRID = {
    "description": "two configurations, two seeds",
    "base": ["tiny"],
    "overrides": SMALL,
    "seeds": [1, 2],
    "iterations": 3,
    "eval_every": 2,
    "mix_fractions": [0.5],
    "configs": {"mixgrpo": ["mixgrpo"], "frozen_16": ["mixgrpo", "window.strategy=frozen", "window.initial_start=16"]},
}
CONFIGS = list(GRID["configs"])
REWARDS = ["prompt_following", "quality"]


def study(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "mixgrpo_ray.cli", "study", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def starts(log: Path) -> int:
    """How many times the study started this run (one header line per attempt)."""
    return sum(1 for line in log.read_text().splitlines() if line.startswith("=== "))


def test_study_outputs_and_resume(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(GRID, sort_keys=False))
    out = tmp_path / "study"
    res = study(grid, "--out", out, "--parallel", 2, "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 configurations x 2 seeds = 4 runs x 3 iterations = 12 iterations" in res.stdout
    assert "estimated" in res.stdout

    # run directories: one per (configuration, seed), finished, with the final checkpoint and the mixed evaluation
    for c in CONFIGS:
        for s in (1, 2):
            run = out / "runs" / c / f"seed-{s}"
            assert (run / "summary.json").is_file() and (run / "config.yaml").is_file()
            assert yaml.safe_load((run / "config.yaml").read_text())["run"]["seed"] == s
            assert ckpt.latest_checkpoint(run).name == ckpt.checkpoint_name(3)
            assert (run / "eval" / "mix0.5" / "results.json").is_file()
            assert starts(out / "logs" / f"{c}-seed-{s}.log") == 1
    assert yaml.safe_load((out / "grid.yaml").read_text())["configs"] == GRID["configs"]

    # JSON: per configuration, mean ± s.e. over both seeds
    data = json.loads((out / "study.json").read_text())
    assert data["rewards"] == REWARDS and list(data["configs"]) == CONFIGS
    assert data["grid"]["seeds"] == [1, 2] and data["equal_wallclock_s"] > 0
    for c in CONFIGS:
        e = data["configs"][c]
        assert e["seeds"] == [1, 2] and e["missing_seeds"] == []
        for key in ("initial", "final", "gain"):
            assert set(e[key]) == set(REWARDS)
            assert all(set(v) == {"mean", "se", "n"} and v["n"] == 2 for v in e[key].values())
        for r in REWARDS:
            assert e["gain"][r]["mean"] == pytest.approx(e["final"][r]["mean"] - e["initial"][r]["mean"])
        assert [p["iteration"] for p in e["curve"]] == [0, 2, 3]
        assert e["curve"][0]["train_s"] == 0 and e["curve"][-1]["train_s"] == pytest.approx(e["train_s"]["mean"])
        assert set(e["equal_wallclock"]["reward"]) == set(REWARDS)
        assert {"grad_norm", "ratio_spread", "approx_kl"} <= set(e["diagnostics"])
        assert set(e["mix"]) == {"0.5"} and e["mix"]["0.5"]["prompt_following"]["change"]["n"] == 2

    # Markdown: the gains table has one row per configuration and a column per reward's gain and final value
    md = (out / "study.md").read_text()
    table = md.split("## Held-out gain", 1)[1].split("\n\n")[1].splitlines()
    assert len(table) == 2 + len(CONFIGS)
    head = [h.strip() for h in table[0].strip("|").split("|")]
    assert head == ["configuration", "seeds", "gain prompt_following", "gain quality", "final prompt_following",
                    "final quality", "s/iteration", "training s"]
    assert [row.split("|")[1].strip() for row in table[2:]] == CONFIGS
    assert all(row.split("|")[2].strip() == "2" and "±" in row for row in table[2:])
    for section in ("## At equal wall-clock", "## Training diagnostics", "## Test-time mixed-model sampling",
                    "![held-out reward](study.png)"):
        assert section in md
    # the held-out reward at each evaluation (iterations 0, 2 and the final 3), per configuration
    over = md.split("## Held-out reward over training", 1)[1].split("\n\n")[1].splitlines()[2:]
    assert [(r.split("|")[1].strip(), int(r.split("|")[2])) for r in over] == [(c, i) for c in CONFIGS for i in (0, 2, 3)]
    first = {r.split("|")[1].strip(): r.split("|")[4].split("±")[0].strip() for r in over if int(r.split("|")[2]) == 0}
    assert float(first["mixgrpo"]) == pytest.approx(data["configs"]["mixgrpo"]["initial"]["prompt_following"]["mean"], abs=1e-3)

    # PNG: a valid image
    from PIL import Image

    png = out / "study.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        im.verify()

    # again: nothing is redone; one run "interrupted" after its iteration-2 checkpoint resumes from it
    run = out / "runs" / "frozen_16" / "seed-2"
    (run / "summary.json").unlink()
    ckpt_dir = ckpt.checkpoints_dir(run)
    import shutil

    shutil.rmtree(ckpt_dir / ckpt.checkpoint_name(3))
    (ckpt_dir / ckpt.LATEST_MARKER).write_text(ckpt.checkpoint_name(2))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["iteration"] <= 2))
    finished_mtime = (out / "runs" / "mixgrpo" / "seed-1" / "metrics.jsonl").stat().st_mtime_ns
    res = study(grid, "--out", out, "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "3 runs finished already" in res.stdout
    for c in CONFIGS:
        for s in (1, 2):
            assert starts(out / "logs" / f"{c}-seed-{s}.log") == (2 if (c, s) == ("frozen_16", 2) else 1)
    assert "resumed from" in (out / "logs" / "frozen_16-seed-2.log").read_text()
    assert (out / "runs" / "mixgrpo" / "seed-1" / "metrics.jsonl").stat().st_mtime_ns == finished_mtime
    assert (run / "summary.json").is_file()
    assert json.loads((out / "study.json").read_text())["configs"]["frozen_16"]["seeds"] == [1, 2]


def test_builtin_grids_resolve_and_estimate(tmp_path):
    """Every built-in grid's configurations resolve, with at least 3 seeds, and have a time estimate."""
    assert {"algorithms", "window_start", "schedule", "noise"} <= set(builtin_grids())
    for name in builtin_grids():
        grid = load_grid(name)
        assert len(grid.seeds) >= 3
        specs, configs = prepare(grid, tmp_path / name)
        plan = estimate(grid, specs, configs, parallel=1)
        assert plan["runs"] == len(grid.configs) * len(grid.seeds) == plan["todo"] and plan["seconds"] > 0
        assert not (tmp_path / name).exists()
    algorithms = load_grid("algorithms")
    assert algorithms.mix_fractions == [0.5, 0.8, 1.0]
    starts_ = [resolve_start(s) for s in prepare(load_grid("window_start"), tmp_path / "w")[0] if s.seed == 1]
    assert starts_ == [0, 4, 8, 12, 16, 19]


def resolve_start(spec):
    from mixgrpo_ray.study.study_grid import resolve_run

    cfg = resolve_run(spec)
    assert cfg.window.strategy == "frozen" and cfg.window.size == 4 and cfg.sampling.tail == "euler"
    return cfg.window.initial_start


@pytest.mark.parametrize("grid_text, args, message", [
    (None, ["no_such_grid"], "unknown grid 'no_such_grid'"),
    ("configs: [unclosed", [], "is not valid YAML"),
    ("configs:\n  a: [no_such_preset]\n", [], "unknown preset 'no_such_preset'"),
    ("configs:\n  a: [mixgrpo, window.no_such_key=1]\n", [], "no_such_key"),
    ("configs:\n  a: [mixgrpo]\nfoo: 1\n", [], "unknown key 'foo'"),
    ("configs:\n  a: [mixgrpo]\n", ["--seeds", "0"], "--seeds must be"),
    ("configs:\n  a: [mixgrpo]\n", ["--configs", "a,b"], "--configs: b not in grid"),
    ("configs:\n  a: [mixgrpo, run.seed=3]\n", [], "run.seed is set by the study"),
])
def test_bad_grid_is_one_line_and_exit_2(tmp_path, capsys, grid_text, args, message):
    out = tmp_path / "study"
    if grid_text is not None:
        (tmp_path / "bad.yaml").write_text(grid_text)
        args = [str(tmp_path / "bad.yaml"), *args]
    assert study_main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mixgrpo-ray study: error:") and message in err, err
    assert not out.exists()


def test_configs_option_trains_a_subset_in_the_grids_order(tmp_path, capsys):
    args = ["schedule", "--configs", "frozen_0,progressive_park", "--estimate", "--out", str(tmp_path / "s")]
    assert study_main(args) == 0
    out = capsys.readouterr().out
    assert "2 configurations x 3 seeds = 6 runs" in out
    listed = [line.split()[0] for line in out.splitlines() if "min per run" in line]
    assert listed == ["progressive_park", "frozen_0"]


def test_base_option_runs_a_grid_on_another_preset(tmp_path, capsys):
    from mixgrpo_ray.study.study_grid import resolve_run, with_options

    grid = with_options(load_grid("window_start"), base=["tiny_pairs", "mixgrpo"])
    specs = [s for s in prepare(grid, tmp_path / "w")[0] if s.seed == 1]
    cfgs = [resolve_run(s) for s in specs]
    assert [c.window.initial_start for c in cfgs] == [0, 4, 8, 12, 16, 19]
    assert {(c.data.train, c.data.eval) for c in cfgs} == {("tiny_pairs:train", "tiny_pairs:eval")}
    args = ["window_start", "--base", "no_such_preset", "--estimate", "--out", str(tmp_path / "x")]
    assert study_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown preset 'no_such_preset'" in err and not (tmp_path / "x").exists()


def test_cli_lists_study():
    res = subprocess.run([sys.executable, "-m", "mixgrpo_ray.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "study" in res.stdout
