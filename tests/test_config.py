"""Config: presets, overrides, validation, and the CLI's exit code 2 before any actor starts."""

import subprocess
import sys

import pytest

from mixgrpo_ray import config as C
from mixgrpo_ray.run.training import main as train_main


def test_default_is_tiny_and_presets_layer():
    cfg = C.resolve()
    assert cfg.model.kind == "tiny" and cfg.data.train == "tiny:train"
    flash = C.resolve(["mixgrpo_flash"])
    assert flash.model.kind == "tiny"  # an algorithm preset alone layers on the default model preset
    assert flash.sampling.tail == "dpm2" and flash.sampling.tail_compression == 0.4 and flash.window.shift_interval == 20
    star = C.resolve(["tiny", "mixgrpo_flash_star"])
    assert star.window.strategy == "frozen" and star.sampling.tail_compression == 0.2
    dance = C.resolve(["dancegrpo"])
    assert dance.grpo.algorithm == "dancegrpo" and dance.sampling.sde_kind == "dance_grpo"
    assert dance.sampling.noise_level == 0.3
    assert set(C.preset_names()) >= {"tiny", "mixgrpo", "mixgrpo_flash", "mixgrpo_flash_star", "dancegrpo"}


def test_overrides_typed():
    cfg = C.resolve(None, ["run.iterations=7", "optim.lr=3e-4", "rewards.quality.replicas=2",
                           "optim.betas=[0.8, 0.9]", "rollout.resources={custom: 1}", "run.progress=false"])
    assert cfg.run.iterations == 7 and cfg.optim.lr == 3e-4 and cfg.rewards["quality"].replicas == 2
    assert cfg.optim.betas == [0.8, 0.9] and cfg.rollout.resources == {"custom": 1} and cfg.run.progress is False
    # a new reward pool by override
    cfg = C.resolve(None, ["rewards.extra.kind=quality", "rewards.extra.weight=0"])
    assert cfg.rewards["extra"].kind == "quality" and cfg.rewards["extra"].replicas == 1


@pytest.mark.parametrize(
    "override,needle",
    [
        ("window.sise=3", "unknown config key 'window.sise' (did you mean 'size'?)"),
        ("windw.size=3", "unknown config key 'windw'"),
        ("run.iterations=ten", "run.iterations must be an integer"),
        ("run.progress=maybe", "run.progress must be true or false"),
        ("window.size=24", "window.size=24 does not fit"),
        ("rewards.quality.replicas=0", "rewards.quality.replicas must be >= 1"),
        ("rollout.num_workers=0", "rollout.num_workers must be >= 1"),
        ("learner.num_workers=3", "divisible by learner.num_workers=3"),
        ("rewards.quality.kind=hpsv9", "rewards.quality.kind must be one of"),
        ("grpo.group_size=1", "grpo.group_size must be >= 2"),
        ("sampling.tail=rk4", "sampling.tail must be one of"),
        ("iterations", "must look like section.key=value"),
    ],
)
def test_validation_errors_are_one_clear_line(override, needle):
    with pytest.raises(C.ConfigError) as err:
        C.resolve(None, [override])
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(C.ConfigError, match="unknown preset 'nope'"):
        C.resolve(["nope"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(C.ConfigError, match="not valid YAML"):
        C.resolve([str(bad)])
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.resolve([str(tmp_path / "missing.yaml")])


def test_cluster_resource_check():
    cfg = C.resolve(None, ["rollout.num_gpus=1", "rollout.num_workers=2", "learner.resources={learner_gpu: 1}"])
    need = C.required_resources(cfg)
    assert need["GPU"] == 2 and need["learner_gpu"] == 1
    with pytest.raises(C.ConfigError, match="asks for 2 GPU in total but the Ray cluster has 0"):
        C.check_cluster_resources(cfg, {"CPU": 8.0})
    C.check_cluster_resources(cfg, {"CPU": 16.0, "GPU": 2.0, "learner_gpu": 1.0})


def test_cli_config_error_exits_2_without_starting_ray(capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init must not be called"))
    assert train_main(["window.size=99"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mixgrpo-ray train: error: window.size=99")


def test_cli_resource_error_exits_2_before_actors(capsys, monkeypatch):
    """A resource the cluster lacks: exit 2 after connecting, before any actor is created."""
    import ray

    import mixgrpo_ray.run.training as T

    monkeypatch.setattr(T, "connect_ray", lambda cfg: ray)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(T, "run", lambda *a, **k: pytest.fail("no run may start"))
    assert train_main(["learner.num_gpus=1"]) == 2
    assert "asks for 1 GPU in total" in capsys.readouterr().err


def test_console_script_exit_code_and_help():
    out = subprocess.run([sys.executable, "-m", "mixgrpo_ray.cli", "train", "run.iterations=-1"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "run.iterations must be >= 0" in out.stderr
    out = subprocess.run([sys.executable, "-m", "mixgrpo_ray.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout
    out = subprocess.run([sys.executable, "-m", "mixgrpo_ray.cli", "trian"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown command 'trian'" in out.stderr


def test_print_config_round_trips(capsys):
    assert train_main(["--print-config", "run.iterations=3"]) == 0
    import yaml

    data = yaml.safe_load(capsys.readouterr().out)
    assert C.from_dict(data).run.iterations == 3


def test_null_override_removes_a_key():
    cfg = C.resolve(None, ["rewards.quality=null"])
    assert list(cfg.rewards) == ["prompt_following"]
    cfg = C.resolve(None, ["model.path=/x", "model.path=null"])
    assert cfg.model.path is None
