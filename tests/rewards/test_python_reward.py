"""``kind: python``: the user's own reward class or function, named by ``target``, loaded on the
reward replicas of a real short run."""

import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from mixgrpo_ray.config import ConfigError, resolve  # noqa: E402
from mixgrpo_ray.rewards.registry import build_reward  # noqa: E402


def test_function_class_and_reward_model_targets():
    images = torch.rand(3, 3, 8, 8)
    prompts = ["a red circle", "a blue square on white", "x"]
    fn = build_reward("python", target="custom_rewards:words", per_word=0.5)
    assert fn(images, prompts).tolist() == [1.5, 2.5, 0.5] and not fn.can_fail
    cls = build_reward("python", target="custom_rewards:Brightness", scale=2.0)
    torch.testing.assert_close(cls(images, prompts), images.mean(dim=(1, 2, 3)) * 2)
    # uint8 images reach a plain function or class as float32 in [0, 1]
    torch.testing.assert_close(cls((images * 255).round().to(torch.uint8), prompts),
                               ((images * 255).round() / 255).mean(dim=(1, 2, 3)) * 2)
    judge = build_reward("python", target="custom_rewards:Judge", fail_word="square")
    assert judge.can_fail and judge.score_range == (0.0, 1.0)
    out = judge(images, prompts)
    assert out[0] == 0.5 and torch.isnan(out[1])


def test_plugins_may_declare_their_input_and_default_to_full_resolution():
    from mixgrpo_ray.models.reward_input import RewardInput

    images = (torch.rand(2, 3, 32, 48) * 255).round().to(torch.uint8)
    prompts = ["a red circle", "x"]
    # declaring nothing (the API before declarations existed): the images as sampled
    for target in ("custom_rewards:words", "custom_rewards:Brightness", "custom_rewards:Judge"):
        assert build_reward("python", target=target).input() is None
    fn = build_reward("python", target="custom_rewards:side")
    assert fn.input() == RewardInput(16, "shortest_edge")
    assert fn(images, prompts).tolist() == [24.0, 24.0]  # full resolution in: resized before the call
    assert fn(fn.input().apply(images), prompts).tolist() == [24.0, 24.0]  # resized ahead: the same
    small = build_reward("python", target="custom_rewards:SmallBrightness", scale=2.0)
    assert small.input() == RewardInput(8, "shortest_edge_pil")
    torch.testing.assert_close(small(images, prompts), small(small.input().apply(images), prompts), atol=0, rtol=0)
    judge = build_reward("python", target="custom_rewards:FloatJudge")
    assert judge.input() == RewardInput(8, "longest_edge_float") and judge.can_fail


@pytest.mark.parametrize("target,needle", [
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    ("custom_rewards:missing", "has no attribute 'missing'"),
    ("custom_rewards:NOT_CALLABLE", "is not a class or function"),
])
def test_bad_targets_are_one_line_errors(target, needle):
    with pytest.raises(ValueError, match=needle) as info:
        build_reward("python", target=target)
    assert "\n" not in str(info.value)


def test_config_checks_the_target_form_without_importing_it():
    cfg = resolve(None, ["rewards.mine.kind=python", "rewards.mine.target=not_installed.pkg:Reward.Inner",
                         "rewards.mine.options={scale: 2}"])
    assert cfg.rewards["mine"].model_kwargs() == {"scale": 2, "target": "not_installed.pkg:Reward.Inner"}
    for overrides, needle in [
        (["rewards.mine.kind=python"], "rewards.mine.target must be package.module:Name"),
        (["rewards.mine.kind=python", "rewards.mine.target=module.only"], "got 'module.only'"),
        (["rewards.mine.kind=python", "rewards.mine.target=a b:c"], "rewards.mine.target must be"),
        (["rewards.prompt_following.target=m:f"], "rewards.prompt_following.target is only for kind python"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            resolve(None, overrides)


def test_short_run_with_python_rewards(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from mixgrpo_ray.cli.train_cli import main as train_main
    from mixgrpo_ray.train.run_dir import RunDir

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # the user's module is importable on the replicas as an installed package would be
    from repo_paths import HELPERS

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(HELPERS), os.environ.get("PYTHONPATH")) if p))
    args = [
        "data.prompts_per_iteration=2", "grpo.group_size=2", "optim.samples_per_update=2", "data.eval_prompts=2",
        "sampling.num_steps=6", "window.size=2", "window.initial_start=0",
        "rewards.words.kind=python", "rewards.words.target=custom_rewards:words", "rewards.words.weight=0",
        "rewards.words.options={per_word: 0.25}", "rewards.words.num_cpus=0.25",
        "rewards.bright.kind=python", "rewards.bright.target=custom_rewards:Brightness",
        "rewards.bright.options={scale: 3}", "rewards.bright.num_cpus=0.25",
        # declares a 16-pixel input: rollout actors send it resized images, the others full ones
        "rewards.side.kind=python", "rewards.side.target=custom_rewards:side", "rewards.side.weight=0",
        "rewards.side.num_cpus=0.25",
        "rollout.num_cpus=0.5", "learner.num_cpus=0.5", "rewards.prompt_following.num_cpus=0.25",
        "run.iterations=2", "run.checkpoint_every=0", "run.grid_every=0", "run.grid_prompts=0", "run.progress=false",
        f"run.output_dir={tmp_path}", "run.name=py", "ray.num_cpus=4", "ray.dashboard=false",
    ]
    assert train_main(args) == 0
    run = RunDir(tmp_path / "py")
    rows = [r for r in run.read_metrics() if "reward_mean" in r]
    assert [r["iteration"] for r in rows] == [1, 2]
    assert all(0 < r["reward/bright"] <= 3 for r in rows)
    table = pq.read_table(run.path / "rollouts" / "iter_000002.parquet").to_pydict()
    assert table["reward/words"] == [0.25 * len(p.split()) for p in table["prompt"]]
    assert max(table["reward/bright"]) > min(table["reward/bright"])  # per-image values, not a constant
    assert "eval/reward/words" in run.read_metrics()[-1]
    # the tiny model samples 32x32: the declared reward saw 16x16, the others full resolution
    assert set(table["reward/side"]) == {16.0} and "eval/reward/side" in run.read_metrics()[-1]


def test_readme_example_is_a_working_reward(tmp_path, monkeypatch):
    import re
    import shlex

    from repo_paths import ROOT

    readme = (ROOT / "docs" / "models-and-rewards.md").read_text()
    section = readme.split("## Your own reward", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    (tmp_path / "my_rewards.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    command = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1).replace("\\\n", " ")
    cfg = resolve(None, [t for t in shlex.split(command) if t.startswith("rewards.")])
    reward = build_reward(cfg.rewards["sat"].kind, **cfg.rewards["sat"].model_kwargs())
    grey, red = torch.full((1, 3, 4, 4), 0.5), torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    torch.testing.assert_close(reward(torch.cat([grey, red]), ["a", "b"]), torch.tensor([0.0, 2.0]))
