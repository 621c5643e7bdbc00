"""``mixgrpo-ray eval`` on the embedded tiny model (shipped weights) with its offline rewards."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mixgrpo_ray.cli import eval_cli
from mixgrpo_ray.common.images import GRID_CELL, grid_png
from mixgrpo_ray.common.seeds import EVAL_SEED_BASE
from mixgrpo_ray.eval import eval_report
from mixgrpo_ray.config import resolve
from mixgrpo_ray.data.prompts import load_prompts
from mixgrpo_ray.algo.rollout import sample_images
from mixgrpo_ray.models.tiny.model import TinyPolicy
from mixgrpo_ray.rewards.registry import build_reward

STEPS, PROMPTS, SEEDS = 6, 5, 2
OVERRIDES = [f"sampling.num_steps={STEPS}", "window.initial_start=0", f"data.eval_prompts={PROMPTS}", f"data.eval_seeds={SEEDS}",
             "run.grid_prompts=3", "run.progress=false"]
FAST = ["--config", "tiny", *OVERRIDES]
REWARDS = ("prompt_following", "quality")


def perturbed_state(scale=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = TinyPolicy.from_pretrained().trainable_state_dict()
    return {k: (v + scale * torch.randn(v.shape, generator=gen)).contiguous() for k, v in base.items()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as training leaves it: config.yaml and checkpoints/iter_000010 holding
    perturbed trainable weights."""
    run = tmp_path_factory.mktemp("run")
    (run / "config.yaml").write_text(resolve(["tiny"], OVERRIDES).to_yaml())
    ckpt = run / "checkpoints" / "iter_000010"
    ckpt.mkdir(parents=True)
    save_file(perturbed_state(), str(ckpt / "weights.safetensors"))
    (ckpt / "state.json").write_text(json.dumps({"iteration": 10}))
    (run / "checkpoints" / "latest").write_text("iter_000010")
    return run


@pytest.fixture(scope="module")
def policies(run_dir):
    from safetensors.torch import load_file

    base = TinyPolicy.from_pretrained()
    trained = TinyPolicy.from_pretrained()
    trained.load_trainable_state_dict(load_file(str(run_dir / "checkpoints" / "iter_000010" / "weights.safetensors")))
    return base, trained


def expected(policy, base=None, mix=1.0):
    """Scores computed directly: prompt-major (prompt, seed) pairs, seeds 10000, 10001, ..."""
    prompts = load_prompts("tiny:eval")[:PROMPTS]
    pairs = [(p, EVAL_SEED_BASE + k) for p in prompts for k in range(SEEDS)]
    texts = [p for p, _ in pairs]
    images = sample_images(policy, texts, [s for _, s in pairs], num_steps=STEPS, shift=3.0,
                           base_policy=base, mix_fraction=mix)
    return {name: build_reward(name)(images, texts) for name in REWARDS}


def column(out: Path, key: str, name: str) -> torch.Tensor:
    return torch.tensor(pq.read_table(out / "scores.parquet").column(f"{key}/{name}").to_pylist())


def run_eval(args, capsys):
    code = eval_cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- results
def test_base_model_only(tmp_path, capsys, policies):
    out = tmp_path / "eval"
    code, stdout, _ = run_eval([*FAST, "--out", str(out)], capsys)
    assert code == 0
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["models"]) == {"base"} and summary["change"] is None and summary["checkpoint"] is None
    assert summary["images_per_model"] == PROMPTS * SEEDS and summary["seeds"] == [10000, 10001]
    want = expected(policies[0])
    for name in REWARDS:
        got = column(out, "base", name)
        torch.testing.assert_close(got, want[name], atol=1e-3, rtol=0)
        stats = summary["models"]["base"]["rewards"][name]
        assert stats["n"] == PROMPTS * SEEDS and stats["failures"] == 0
        assert stats["mean"] == pytest.approx(float(got.double().mean()), abs=1e-6)
        assert stats["se"] == pytest.approx(float(got.double().std() / (PROMPTS * SEEDS) ** 0.5), abs=1e-6)
    table = (out / "results.md").read_text()
    assert "| model | prompt_following | quality |" in table and "| base |" in table
    assert "| model | prompt_following | quality |" in stdout
    with Image.open(out / "grids" / "base.png") as grid:
        assert grid.format == "PNG" and grid.size[0] > 32 and grid.size[1] > 32
    assert sorted(p.name for p in out.iterdir()) == ["grids", "results.json", "results.md", "scores.parquet"]


def test_checkpoint_beside_base_and_mix_fraction_one_is_no_mixing(tmp_path, capsys, run_dir, policies):
    out = tmp_path / "eval"
    ckpt = run_dir / "checkpoints" / "iter_000010"
    code, stdout, _ = run_eval([*FAST, "--checkpoint", str(ckpt), "--mix-fraction", "1.0", "--batch-size", "3",
                                "--out", str(out)], capsys)
    assert code == 0
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["models"]) == {"base", "checkpoint"}
    assert summary["models"]["checkpoint"]["label"] == "iter_000010"
    base_want, ckpt_want = expected(policies[0]), expected(policies[1])  # the trained model alone
    for name in REWARDS:
        base, trained = column(out, "base", name), column(out, "checkpoint", name)
        torch.testing.assert_close(base, base_want[name], atol=1e-3, rtol=0)
        torch.testing.assert_close(trained, ckpt_want[name], atol=1e-3, rtol=0)
        assert summary["change"][name]["mean"] == pytest.approx(float((trained - base).double().mean()), abs=1e-6)
    assert not torch.allclose(column(out, "base", "quality"), column(out, "checkpoint", "quality"))
    table = (out / "results.md").read_text()
    for row in ("| base |", "| iter_000010 |", "| change (paired) |"):
        assert row in table and row in stdout
    with Image.open(out / "grids" / "base.png") as one, Image.open(out / "grids" / "compare.png") as both:
        assert (out / "grids" / "checkpoint.png").is_file()
        assert both.size[1] > 1.5 * one.size[1]  # two rows of images: base above checkpoint
    assert summary["compare_grid"] == "grids/compare.png"


def test_mixed_model_sampling(tmp_path, capsys, run_dir, policies):
    ckpt = str(run_dir / "checkpoints" / "iter_000010")
    out = tmp_path / "mix"
    assert run_eval([*FAST, "--checkpoint", ckpt, "--mix-fraction", "0.5", "--out", str(out)], capsys)[0] == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["mix_steps"] == 3 and summary["models"]["checkpoint"]["label"] == "iter_000010 (mix 0.5)"
    want = expected(policies[1], base=policies[0], mix=0.5)
    pure, base = expected(policies[1]), expected(policies[0])
    for name in REWARDS:
        torch.testing.assert_close(column(out, "checkpoint", name), want[name], atol=1e-3, rtol=0)
    assert not torch.allclose(want["quality"], pure["quality"]) and not torch.allclose(want["quality"], base["quality"])
    # a fraction that rounds to no checkpoint step at all samples the base model only
    out0 = tmp_path / "mix0"
    assert run_eval([*FAST, "--checkpoint", ckpt, "--mix-fraction", "0.05", "--out", str(out0)], capsys)[0] == 0
    for name in REWARDS:
        assert torch.equal(column(out0, "checkpoint", name), column(out0, "base", name))


def test_run_directory_supplies_config_checkpoint_and_output_folder(capsys, run_dir):
    # no --config, no --out: the run's config.yaml, its latest checkpoint, RUN/eval/<checkpoint>
    code, _, _ = run_eval(["--checkpoint", str(run_dir)], capsys)
    assert code == 0
    out = run_dir / "eval" / "iter_000010"
    summary = json.loads((out / "results.json").read_text())
    assert summary["sampling"]["num_steps"] == STEPS and summary["prompts"]["count"] == PROMPTS
    assert summary["checkpoint"].endswith("iter_000010/weights.safetensors")
    # a second evaluation replaces the earlier one in place
    assert run_eval(["--checkpoint", str(run_dir), "--seeds", "1"], capsys)[0] == 0
    assert json.loads((out / "results.json").read_text())["seeds"] == [10000]
    assert not [p for p in (run_dir / "eval").iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- errors: exit 2
def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mixgrpo-ray eval: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_missing_checkpoint(tmp_path, capsys):
    out = tmp_path / "eval"
    code, _, err = run_eval([*FAST, "--checkpoint", str(tmp_path / "nope" / "iter_000001"), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "nope", "does not exist")
    assert not out.exists()


def test_unusable_checkpoints(tmp_path, capsys):
    empty = tmp_path / "empty_ckpt"
    empty.mkdir()
    code, _, err = run_eval([*FAST, "--checkpoint", str(empty)], capsys)
    assert_one_line_error(code, err, "no weights.safetensors")

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 16)
    code, _, err = run_eval([*FAST, "--checkpoint", str(corrupt)], capsys)
    assert_one_line_error(code, err, "cannot read weights")

    wrong = tmp_path / "wrong.safetensors"
    save_file({"not.a.tiny.weight": torch.zeros(3)}, str(wrong))
    code, _, err = run_eval([*FAST, "--checkpoint", str(wrong), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "does not fit model.kind=tiny")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--config", "no_such_preset"], "unknown preset"),
        ([*FAST, "sampling.num_stepz=4"], "num_stepz"),
        ([*FAST, "--mix-fraction", "0"], "--mix-fraction"),
        ([*FAST, "--seeds", "0"], "--seeds"),
        ([*FAST, "--prompts", "/nonexistent/prompts.txt"], "prompts.txt"),
        ([*FAST, "rewards.quality.kind=nope"], "rewards.quality.kind"),
    ],
)
def test_bad_config_and_arguments(capsys, args, fragment):
    code, _, err = run_eval(args, capsys)
    assert_one_line_error(code, err, fragment)


def test_out_folder_that_is_not_an_evaluation_is_left_alone(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = run_eval([*FAST, "--out", str(out)], capsys)
    assert_one_line_error(code, err, "not an earlier evaluation")
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_nothing_half_written_when_writing_fails(tmp_path, capsys, monkeypatch):
    def broken_grid(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(eval_report, "grid_png", broken_grid)
    out = tmp_path / "eval"
    with pytest.raises(OSError, match="disk full"):
        eval_cli.main([*FAST, "--out", str(out)])
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_grids_shrink_large_images_and_enlarge_small_ones():
    import io

    big = torch.randint(0, 256, (3, 3, 720, 720), dtype=torch.uint8)
    small = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    for images in (big, small):
        with Image.open(io.BytesIO(grid_png(images, ["a", "b", "c"], "t", columns=3))) as grid:
            # three cells of GRID_CELL pixels plus padding, whatever the image size
            assert 3 * GRID_CELL < grid.size[0] < 3 * GRID_CELL + 40
