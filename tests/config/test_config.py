"""Config: presets, overrides, validation, and the CLI's exit code 2 before any actor starts."""

import pickle
import subprocess
import sys

import pytest
import yaml

from mixgrpo_ray import config as C

try:  # the train command's home (moving from run/training.py to cli/train.py)
    import mixgrpo_ray.cli.train_cli as T
except ImportError:  # pragma: no cover
    import mixgrpo_ray.train.training_run as T

train_main = T.main


def test_default_is_tiny_and_presets_layer():
    cfg = C.resolve()
    assert cfg.model.kind == "tiny" and cfg.data.train == "tiny:train"
    # the evidence-backed window of the tiny task (docs/studies/tiny.md, "schedule"): frozen at step 16
    assert (cfg.window.strategy, cfg.window.initial_start, cfg.window.size) == ("frozen", 16, 4)
    paper = C.resolve(["tiny", "mixgrpo"])  # the paper's schedule layers over it in full
    assert (paper.window.strategy, paper.window.initial_start, paper.window.at_end) == ("progressive", 0, "rollback")
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
    data = yaml.safe_load(capsys.readouterr().out)
    assert C.from_dict(data).run.iterations == 3
    assert C.from_dict(data) == C.resolve(None, ["run.iterations=3"])


def test_null_override_removes_a_key():
    cfg = C.resolve(None, ["rewards.quality=null"])
    assert list(cfg.rewards) == ["prompt_following"]
    cfg = C.resolve(None, ["model.path=/x", "model.path=null"])
    assert cfg.model.path is None


# ---------------------------------------------------------------------------------------------
# pydantic models: unknown keys, types, choices, ranges, cross-field checks
# ---------------------------------------------------------------------------------------------
SECTIONS = [name for name in C.Config.model_fields if name != "rewards"]


def _error(overrides) -> str:
    with pytest.raises(C.ConfigError) as err:
        C.resolve(None, overrides)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("section", SECTIONS + ["rewards.quality"])
def test_unknown_keys_are_refused_at_every_level(section):
    assert f"unknown config key '{section}.bogus'" in _error([f"{section}.bogus=1"])


def test_unknown_top_level_key_and_direct_construction():
    with pytest.raises(C.ConfigError, match=r"unknown config key 'modle' \(did you mean 'model'\?\)"):
        C.from_dict({"modle": {"kind": "tiny"}})
    with pytest.raises(C.ConfigError, match=r"unknown config key 'run.iteratons' \(did you mean 'iterations'\?\)"):
        C.RunConfig(iteratons=3)
    with pytest.raises(C.ConfigError, match="config must be a mapping"):
        C.from_dict([1, 2])


@pytest.mark.parametrize(
    "override,needle",
    [
        ("run.iterations=true", "run.iterations must be an integer, got True"),
        ("run.seed=abc", "run.seed must be an integer, got 'abc'"),
        ("run.iterations='3'", "run.iterations must be an integer, got '3'"),
        ("run.iterations=3.5", "run.iterations must be an integer, got 3.5"),
        ("model.timestep_decimals=x", "model.timestep_decimals must be an integer, got 'x'"),
        ("optim.lr=true", "optim.lr must be a number, got True"),
        ("optim.lr=abc", "optim.lr must be a number, got 'abc'"),
        ("run.progress=1", "run.progress must be true or false, got 1"),
        ("run.progress=yes please", "run.progress must be true or false, got 'yes please'"),
        ("run.name=true", "run.name must be a string, got True"),
        ("ray.address=[1]", "ray.address must be a string, got [1]"),
        ("window=3", "window must be a mapping, got 3"),
        ("rollout.resources=[1]", "rollout.resources must be a mapping, got [1]"),
        ("rewards.quality.options=3", "rewards.quality.options must be a mapping, got 3"),
        ("rewards.quality=3", "rewards.quality must be a mapping, got 3"),
        ("optim.betas=0.9", "optim.betas must be a list, got 0.9"),
    ],
)
def test_wrong_types(override, needle):
    assert needle in _error([override])


def test_yaml_friendly_coercions():
    cfg = C.resolve(None, ["optim.lr='1e-5'", "run.iterations=3.0", "rollout.num_cpus=2", "run.name=7", "model.path=3"])
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float)
    assert cfg.run.iterations == 3 and type(cfg.run.iterations) is int
    assert cfg.rollout.num_cpus == 2.0 and isinstance(cfg.rollout.num_cpus, float)
    assert cfg.run.name == "7" and cfg.model.path == "3"
    # YAML 1.1 reads 1e-5 (no dot) as a string: accepted for float fields
    assert C.from_dict(yaml.safe_load("optim: {lr: 1e-5, eps: 1e-8}")).optim.eps == 1e-8
    cfg = C.from_dict({"rewards": {"a": None, "b": {"weight": 0}}})  # a null reward takes the defaults
    assert cfg.rewards["a"] == C.RewardConfig() and cfg.rewards["b"].weight == 0


def _literal_fields():
    import typing

    out = []
    for section in SECTIONS:
        model = C.Config.model_fields[section].annotation
        for name, field in model.model_fields.items():
            if typing.get_origin(field.annotation) is typing.Literal:
                out.append((f"{section}.{name}", typing.get_args(field.annotation)))
    out.append(("rewards.quality.kind", C.REWARD_KIND_NAMES))
    return out


LITERALS = _literal_fields()


def test_every_choice_is_listed():
    assert {key for key, _ in LITERALS} == {
        "model.kind", "model.dtype", "sampling.sde_kind", "sampling.tail", "window.strategy",
        "window.interval_schedule", "window.at_end", "grpo.algorithm", "grpo.advantage_mode",
        "learner.backend", "learner.publish_dtype", "learner.strategy", "learner.sync_transport",
        "rewards.quality.kind", "run.wandb_mode", "run.pipeline", "run.placement", "rollout.colocated_weights",
    }


@pytest.mark.parametrize("key,choices", LITERALS, ids=[k for k, _ in LITERALS])
def test_choice_errors_list_the_choices(key, choices):
    assert _error([f"{key}=nope"]) == f"{key} must be one of {', '.join(choices)}; got 'nope'"


def test_choice_values_match_today():
    assert dict(LITERALS)["model.kind"] == ("tiny", "flux", "sd3", "qwen_image")
    assert _error(["model.kind=sd"]) == "model.kind must be one of tiny, flux, sd3, qwen_image; got 'sd'"
    for key, choices in LITERALS:  # every choice is accepted (rewards need their checkpoints only when built)
        for value in choices:
            extra = ["grpo.algorithm=dancegrpo"] if value == "dancegrpo" else []
            extra += ["rewards.quality.target=my_rewards:score"] if value == "python" else []
            extra += ["learner.num_gpus=1"] if (key, value) == ("learner.backend", "nccl") else []  # NCCL needs GPUs
            colocated = value == "colocated" or (key == "rollout.colocated_weights" and value != "auto")
            extra += ["run.placement=colocated", "rollout.num_workers=1"] if colocated else []
            C.resolve(None, [f"{key}={value}"] + extra)


@pytest.mark.parametrize(
    "override,needle",
    [
        ("run.iterations=-1", "run.iterations must be >= 0, got -1"),
        ("run.eval_every=-1", "run.eval_every must be >= 0, got -1"),
        ("sampling.num_steps=2", "sampling.num_steps must be >= 3, got 2"),
        ("sampling.shift=0", "sampling.shift must be > 0, got 0"),
        ("sampling.tail_compression=0", "sampling.tail_compression must be > 0, got 0"),
        ("sampling.tail_compression=1.5", "sampling.tail_compression must be <= 1, got 1.5"),
        ("window.stride=0", "window.stride must be >= 1, got 0"),
        ("optim.lr=0", "optim.lr must be > 0, got 0"),
        ("optim.weight_decay=-1", "optim.weight_decay must be >= 0, got -1"),
        ("optim.samples_per_update=0", "optim.samples_per_update must be >= 1, got 0"),
        ("optim.betas=[0.9]", "optim.betas must be two numbers in [0, 1), got [0.9]"),
        ("optim.betas=[0.9, 1]", "optim.betas must be two numbers in [0, 1)"),
        ("data.eval_seeds=0", "data.eval_seeds must be >= 1, got 0"),
        ("data.prompts_per_iteration=0", "data.prompts_per_iteration must be >= 1, got 0"),
        ("rollout.torch_threads=0", "rollout.torch_threads must be >= 1, got 0"),
        ("learner.num_cpus=-1", "learner.num_cpus must be >= 0, got -1"),
        ("rewards.quality.weight=-1", "rewards.quality.weight must be >= 0, got -1"),
        ("rewards.quality.batch_size=0", "rewards.quality.batch_size must be >= 1, got 0"),
        ("rollout.resources={slot: -1}", "rollout.resources.slot must be a number >= 0, got -1"),
        ("rollout.resources={slot: true}", "rollout.resources.slot must be a number >= 0, got True"),
    ],
)
def test_range_errors(override, needle):
    assert needle in _error([override])


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["window.size=24"], "window.size=24 does not fit the 23 trainable steps of sampling.num_steps=25"),
        (["window.size=0"], "window.size=0 does not fit"),
        (["sampling.num_steps=5"], "window.size=4 does not fit the 3 trainable steps of sampling.num_steps=5"),
        (["window.initial_start=20"], "window.initial_start must be in [0, 19]"),
        (["window.initial_start=-1"], "window.initial_start must be in [0, 19]"),
        (["learner.num_workers=3"], "optim.samples_per_update=64 must be divisible by learner.num_workers=3"),
        (["data.prompts_per_iteration=3"], "data.prompts_per_iteration * grpo.group_size = 24 samples must be divisible by optim.samples_per_update=64"),
        (["rewards.prompt_following.weight=0", "rewards.quality.weight=0"], "at least one reward needs a weight > 0"),
        (["grpo.algorithm=dancegrpo", "grpo.dance_train_fraction=0"], "grpo.dance_train_fraction must be in (0, 1]"),
        (["rewards.quality=null", "rewards.prompt_following=null"], "rewards must map at least one reward name"),
    ],
)
def test_cross_field_errors(overrides, needle):
    assert needle in _error(overrides)


def test_cross_field_checks_apply_only_where_they_matter():
    dance = C.resolve(["dancegrpo"], ["window.size=99", "window.initial_start=-5"])  # no window in DanceGRPO
    assert dance.window.size == 99
    assert C.resolve(None, ["grpo.dance_train_fraction=0"]).grpo.dance_train_fraction == 0  # MixGRPO ignores it
    with pytest.raises(C.ConfigError, match="rewards must map at least one reward name"):
        C.from_dict({"rewards": {}})


def test_assignment_is_validated_and_validate_rechecks_the_whole():
    cfg = C.resolve()
    cfg.run.iterations = 4.0
    assert cfg.run.iterations == 4 and type(cfg.run.iterations) is int
    with pytest.raises(C.ConfigError, match="run.iterations must be >= 0, got -1"):
        cfg.run.iterations = -1
    with pytest.raises(C.ConfigError, match="run.progress must be true or false"):
        cfg.run.progress = 1
    with pytest.raises(C.ConfigError, match="unknown config key 'run.bogus'"):
        cfg.run.bogus = 1
    cfg.learner.num_workers = 3  # fine for the section alone; the combination is checked by validate
    with pytest.raises(C.ConfigError, match="divisible by learner.num_workers=3"):
        C.validate(cfg)


@pytest.mark.parametrize("presets", [None, ["mixgrpo_flash"], ["dancegrpo"], ["flux"], ["flux", "flux_lora", "mixgrpo_flash_star"]])
def test_yaml_round_trip(presets, tmp_path):
    cfg = C.resolve(presets, ["rewards.extra.kind=clip", "rewards.extra.weight=0", "optim.betas=[0.8, 0.9]"])
    text = cfg.to_yaml()
    assert text == yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    assert list(cfg.to_dict()) == list(C.Config.model_fields)
    assert list(cfg.to_dict()["rollout"])[:4] == ["num_cpus", "num_gpus", "resources", "torch_threads"]
    assert isinstance(cfg.to_dict()["optim"]["betas"], list)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert C.from_dict(C.load_preset(str(path))) == cfg
    assert C.resolve([str(path)]) == cfg


def test_sections_pickle():
    cfg = C.resolve(["flux"])
    for section in [cfg.model, cfg.optim, cfg.rollout, cfg.rewards["hps"], cfg.learner, cfg]:
        again = pickle.loads(pickle.dumps(section))
        assert again == section and type(again) is type(section)
    from ray import cloudpickle

    assert cloudpickle.loads(cloudpickle.dumps(cfg.rewards["hps"])) == cfg.rewards["hps"]


def test_reward_kind_names_match_the_registry():
    from mixgrpo_ray.rewards.registry import REWARD_KINDS

    assert set(C.REWARD_KIND_NAMES) == set(REWARD_KINDS)


def test_config_imports_only_lower_layers():
    """The config layer may use mixgrpo_ray.core and mixgrpo_ray.common, nothing above them."""
    import ast
    from pathlib import Path

    for path in Path(C.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("mixgrpo_ray.") and not name.startswith(("mixgrpo_ray.config", "mixgrpo_ray.core", "mixgrpo_ray.common")):
                    pytest.fail(f"{path.name} imports {name}")


def test_fsdp_needs_full_fine_tuning():
    cfg = C.resolve(None, ["learner.strategy=fsdp", "learner.sync_transport=collective", "learner.sync_bucket_mb=8"])
    assert cfg.learner.strategy == "fsdp" and cfg.learner.sync_bucket_mb == 8.0
    with pytest.raises(C.ConfigError, match="learner.strategy=fsdp shards full fine-tuning"):
        C.resolve(None, ["learner.strategy=fsdp", "model.lora_rank=4"])
    with pytest.raises(C.ConfigError, match="learner.sync_bucket_mb"):
        C.resolve(None, ["learner.sync_bucket_mb=0"])
