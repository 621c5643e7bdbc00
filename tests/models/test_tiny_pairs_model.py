"""The tiny model's "pairs" task wired through the product: shipped weights, prompt sources, the
``tiny_pairs`` preset (alone, under algorithm presets, in study grids), the checks that keep the
two tasks apart, ``pretrain-tiny --task pairs``, ``sample`` and a two-iteration training run."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from mixgrpo_ray import config as C
from mixgrpo_ray.data.prompts import load_prompts
from mixgrpo_ray.models.tiny import pairs_task as pt
from mixgrpo_ray.models.tiny import tasks
from mixgrpo_ray.models.tiny.model import TinyConfig, TinyPolicy
from mixgrpo_ray.train.preflight import check_inputs
from mixgrpo_ray.eval.tiny_scores import sample_prompts, score_images
from processes import kill_ray_under
from repo_paths import ROOT

PAIRS_DIR = ROOT / "mixgrpo_ray" / "models" / "tiny" / "pairs_assets"


def _architecture(cfg: TinyConfig) -> dict:
    """A tiny config's sizes: everything but the task, its words and an initialisation scale."""
    return {k: v for k, v in cfg.to_dict().items() if k not in ("task", "vocabulary", "position_init")}


# ------------------------------------------------------------------------------ shipped weights
def test_shipped_pairs_weights_are_documented_and_shaped_like_the_shapes_model():
    assert tasks.weights_dir("builtin:tiny_pairs") == PAIRS_DIR
    assert tasks.weights_dir(None) == tasks.weights_dir("builtin:tiny") == PAIRS_DIR.parent / "assets"
    meta = json.loads((PAIRS_DIR / "config.json").read_text())
    cfg = TinyConfig.from_dict(meta["model"])
    assert cfg == TinyConfig(task="pairs", position_init=meta["pretraining"]["options"]["position_init"])
    # the shapes model's architecture (so RL costs the same per iteration); only the words differ
    assert _architecture(cfg) == _architecture(TinyConfig())
    shapes, pairs = TinyPolicy.from_pretrained(), TinyPolicy.from_pretrained("builtin:tiny_pairs")
    assert {k: v.shape for k, v in pairs.trainable_state_dict().items()} == {
        k: v.shape for k, v in shapes.trainable_state_dict().items()}
    assert meta["pretraining"]["command"].startswith("mixgrpo-ray pretrain-tiny --task pairs")
    assert meta["pretraining"]["options"]["task"] == "pairs"
    assert (PAIRS_DIR / "model.safetensors").stat().st_size < 10 * 1024 * 1024
    assert tasks.task_of_weights("builtin:tiny_pairs").name == "pairs" and tasks.task_of_weights(None).name == "shapes"
    with pytest.raises(ValueError, match="builtin:tiny, builtin:tiny_pairs"):
        TinyPolicy.from_pretrained("builtin:tiny_nope")


def test_shipped_pairs_model_beats_random_init_on_held_out_prompts(one_thread):
    base = TinyPolicy.from_pretrained("builtin:tiny_pairs")
    assert base.config.task == "pairs" and "above" in base.config.vocabulary
    prompts = pt.eval_prompts()[::12]  # 18 held-out prompts, every background and relation
    trained = score_images(sample_prompts(base, prompts, seed=0), prompts, "pairs")
    fresh = TinyPolicy(TinyConfig(task="pairs"), seed=0)
    random = score_images(sample_prompts(fresh, prompts, seed=0), prompts, "pairs")
    assert trained["pair_following"][0] > random["pair_following"][0] + 0.2, (trained, random)
    assert trained["pair_layout"][0] > random["pair_layout"][0] + 0.2, (trained, random)


# ------------------------------------------------------------------------------ prompt sources
def test_builtin_prompt_sources():
    assert load_prompts("tiny_pairs:train") == pt.train_prompts()
    assert load_prompts("tiny_pairs:eval") == pt.eval_prompts()
    assert load_prompts("tiny_pairs:eval:5") == pt.eval_prompts()[:5]
    assert len(load_prompts("tiny:eval")) == 162  # the shapes task's, unchanged
    for bad in ("tiny_pairs:test", "tiny_foo:train", "tiny:pairs"):
        with pytest.raises(ValueError) as err:
            load_prompts(bad)
        message = str(err.value)
        assert "\n" not in message and "tiny:train or tiny:eval" in message
        assert "tiny_pairs:train or tiny_pairs:eval" in message


# ------------------------------------------------------------------------------ the preset
def test_preset_resolves_alone_and_under_algorithm_presets():
    cfg = C.resolve(["tiny_pairs"])
    tiny = C.resolve(["tiny"])
    assert (cfg.model.kind, cfg.model.path) == ("tiny", "builtin:tiny_pairs")
    assert (cfg.data.train, cfg.data.eval) == ("tiny_pairs:train", "tiny_pairs:eval")
    assert (cfg.window.size, cfg.window.strategy, cfg.window.initial_start) == (4, "frozen", 8)  # docs/studies/tiny.md, "The pairs task"
    assert cfg.grpo.algorithm == "mixgrpo"
    for section in ("sampling", "optim", "rollout", "learner"):
        assert getattr(cfg, section) == getattr(tiny, section), section
    assert cfg.grpo.group_size == tiny.grpo.group_size
    assert cfg.data.prompts_per_iteration == tiny.data.prompts_per_iteration
    assert {n: (r.kind, r.weight, r.num_cpus) for n, r in cfg.rewards.items()} == {
        "pair_following": ("pair_following", 1.0, 0.5), "pair_layout": ("pair_layout", 0.0, 0.5)}
    assert cfg.rewards["pair_following"].replicas == 1
    check_inputs(cfg)
    for algorithm in ("mixgrpo", "mixgrpo_flash", "mixgrpo_flash_star", "dancegrpo"):
        layered = C.resolve(["tiny_pairs", algorithm])
        assert layered.model.path == "builtin:tiny_pairs" and set(layered.rewards) == set(cfg.rewards)
        check_inputs(layered)
    assert C.resolve(["tiny_pairs", "mixgrpo"]).window.strategy == "progressive"
    assert C.resolve().model.path is None  # the default is still the shapes model


def test_study_grids_on_the_preset(tmp_path):
    from mixgrpo_ray.study.study_runs import estimate, prepare
    from mixgrpo_ray.study.study_grid import eval_prompt_count, parse_grid

    for base in (["tiny_pairs"], ["tiny_pairs", "mixgrpo"]):
        grid = parse_grid({"base": base, "seeds": [1, 2, 3], "iterations": 10, "eval_every": 5,
                           "configs": {"early": ["window.initial_start=0"], "late": ["window.initial_start=16"]}},
                          "pairs")  # fmt: skip
        specs, configs = prepare(grid, tmp_path / "study")
        assert {c.data.eval for c in configs.values()} == {"tiny_pairs:eval"}
        assert all(eval_prompt_count(c) == 216 for c in configs.values())
        assert estimate(grid, specs, configs, parallel=1)["seconds"] > 0
    assert eval_prompt_count(C.resolve(["tiny"])) == 162
    assert eval_prompt_count(C.resolve(["tiny_pairs"], ["data.eval=tiny_pairs:eval:10"])) == 10
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize(
    "presets,overrides,needle",
    [
        (["tiny_pairs"], ["model.path=null"],
         "data.train=tiny_pairs:train holds prompts of the tiny model's pairs task but model.path=null is the shapes "
         "model; use model.path=builtin:tiny_pairs"),
        (["tiny"], ["model.path=builtin:tiny_pairs"], "is the pairs model; use model.path=builtin:tiny"),
        (["tiny_pairs"], ["model.path=random", "rewards.pf.kind=prompt_following"],
         "rewards.pf.kind=prompt_following reads prompts of the tiny model's shapes task"),
        (["tiny"], ["model.path=random", "rewards.layout.kind=pair_layout", "rewards.layout.weight=0"],
         "rewards.layout.kind=pair_layout reads prompts of the tiny model's pairs task"),
        (["tiny_pairs"], ["model.path=builtin:tiny_foo"], "unknown built-in tiny model 'builtin:tiny_foo'"),
        (["tiny_pairs"], ["data.eval=tiny_pairs:test"], "tiny_pairs:train or tiny_pairs:eval"),
    ],
)
def test_mixing_the_tasks_is_one_clear_line(presets, overrides, needle):
    with pytest.raises(C.ConfigError) as err:
        check_inputs(C.resolve(presets, overrides))
    assert needle in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------ commands
def test_pretrain_tiny_task_pairs_writes_a_pairs_model(tmp_path):
    from mixgrpo_ray.cli import pretrain_tiny_cli as pretrain_tiny

    args = ["--task", "pairs", "--steps", "2", "--batch-size", "4", "--warmup", "1", "--quiet", "--eval-prompts", "2"]
    assert pretrain_tiny.main(["--out", str(tmp_path), *args]) == 0
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["model"]["task"] == "pairs" and meta["pretraining"]["command"].startswith(
        "mixgrpo-ray pretrain-tiny --task pairs --steps 2")
    assert set(meta["pretraining"]["held_out"][-1]) == {"step", "loss", "pair_following", "pair_layout"}
    assert set(meta["pretraining"]["held_out_reference"]) == {"random_init", "ground_truth"}
    assert meta["pretraining"]["held_out_reference"]["ground_truth"]["pair_layout"][0] > 0.99
    assert TinyPolicy.from_pretrained(tmp_path).config == TinyConfig(task="pairs")


def test_sample_uses_the_models_task(tmp_path, capsys):
    from mixgrpo_ray.cli import sample_cli as sample

    out = tmp_path / "grid.png"
    argv = ["--out", str(out), "--model", "builtin:tiny_pairs", "--num", "3", "--steps", "3", "--score"]
    assert sample.main(argv) == 0
    printed = capsys.readouterr().out
    assert "pair_following:" in printed and "pair_layout:" in printed and out.is_file()
    assert sample.main(["--out", str(out), "--random-init", "--task", "pairs", "--num", "2", "--steps", "2",
                        "--score"]) == 0  # fmt: skip
    assert "pair_layout:" in capsys.readouterr().out
    assert sample.main(["--out", str(out), "--model", "builtin:tiny_pairs", "--task", "shapes"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pre-trained on the pairs task" in err


SMOKE = [
    "data.prompts_per_iteration=2", "data.eval_prompts=2", "data.eval_seeds=1", "grpo.group_size=4",
    "optim.samples_per_update=8", "sampling.num_steps=6", "window.size=2", "window.initial_start=0",
    "rollout.num_workers=1", "rollout.num_cpus=0.5", "learner.num_cpus=0.5", "rewards.pair_following.num_cpus=0.25",
    "rewards.pair_layout.num_cpus=0.25", "run.iterations=2", "run.checkpoint_every=0", "run.grid_every=0",
    "run.grid_prompts=0", "run.progress=false", "run.log_rollouts=false", "ray.dashboard=false", "ray.num_cpus=2",
    "run.name=smoke",
]


def test_two_training_iterations_on_the_pairs_preset(tmp_path):
    from mixgrpo_ray.train.run_dir import RunDir

    tmpdir = tempfile.mkdtemp(prefix="rayp", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT), "RAY_TMPDIR": tmpdir}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "mixgrpo_ray.cli.train_cli", "--config", "tiny_pairs", *SMOKE,
           f"run.output_dir={tmp_path}"]  # fmt: skip
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        kill_ray_under(tmpdir)
        shutil.rmtree(tmpdir, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = RunDir(tmp_path / "smoke").read_metrics()
    train = [r for r in rows if "reward_mean" in r]
    assert [r["iteration"] for r in train] == [1, 2]
    assert all("reward/pair_following" in r and "reward/pair_layout" in r for r in train)
    evals = [r for r in rows if "eval/reward/pair_layout" in r]
    assert len(evals) == 2 and all(0 <= r["eval/reward/pair_layout"] <= 1 for r in evals)
