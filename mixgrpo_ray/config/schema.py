"""Typed run configuration: dataclasses, YAML presets, ``key.sub=value`` overrides, validation.

A configuration is built from one or more presets (shipped YAML files in
``mixgrpo_ray/config/presets/`` named by stem, or paths) merged in order, then command-line overrides
``section.key=value`` (values parsed as YAML: ``3``, ``1e-4``, ``true``, ``[0.9, 0.999]``).
Everything is validated before any actor starts; a problem raises :class:`ConfigError` whose
message is one line saying what is wrong and how to fix it.

Rewards are a mapping ``name -> RewardConfig`` so each pool is addressed by name:
``rewards.hps.replicas=4``. A reward whose ``weight`` is 0 is scored and logged but not trained on.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

PRESET_PACKAGE = "mixgrpo_ray.config.presets"
DEFAULT_PRESET = "tiny"


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line (exit code 2)."""


@dataclass
class ModelConfig:
    """Which policy to train. ``kind``: ``tiny`` (embedded) or ``flux`` (diffusers FLUX)."""

    kind: str = "tiny"
    path: Optional[str] = None  # weights / model folder; None = the shipped tiny model
    dtype: str = "auto"  # forward-pass precision: auto (bf16 on GPU, fp32 on CPU), fp32, bf16
    guidance: float = 3.5  # FLUX guidance embedding
    height: int = 512
    width: int = 512
    lora_rank: int = 0  # 0 = full fine-tuning; > 0 = LoRA adapters of this rank
    lora_alpha: float = 0.0  # 0 = same as rank
    gradient_checkpointing: bool = False
    max_sequence_length: int = 512
    timestep_decimals: Optional[int] = None  # floor sigma fed to the model (reference code: 3)
    prompt_cache_size: int = 1024  # prompts whose text embeddings are kept (FLUX)


@dataclass
class DataConfig:
    """Prompt sources: ``tiny:train`` / ``tiny:eval`` (built-in task) or a local file."""

    train: str = "tiny:train"
    eval: str = "tiny:eval"
    prompts_per_iteration: int = 8
    eval_prompts: int = 0  # 0 = all eval prompts
    eval_seeds: int = 1  # images per eval prompt (fixed noise seeds)
    shuffle: bool = True


@dataclass
class SamplingConfig:
    """Rollout sampling (SPEC §2–§4)."""

    num_steps: int = 25
    shift: float = 3.0
    noise_level: float = 0.7  # a for flow_grpo, eta for dance_grpo
    sde_kind: str = "flow_grpo"
    tail: str = "euler"  # euler (MixGRPO) or dpm2 (MixGRPO-Flash)
    tail_compression: float = 0.4
    share_group_noise: bool = True  # a group shares one initial noise


@dataclass
class WindowConfig:
    """Sliding SDE window (SPEC §5)."""

    size: int = 4
    shift_interval: int = 25
    stride: int = 1
    strategy: str = "progressive"
    interval_schedule: str = "constant"
    at_end: str = "rollback"
    initial_start: int = 0
    min_shift_interval: int = 5


@dataclass
class GRPOConfig:
    """The objective (SPEC §6). ``algorithm``: ``mixgrpo`` (window) or ``dancegrpo`` (SDE at every
    step, a random ``dance_train_fraction`` of the first T-1 steps trained per sample)."""

    algorithm: str = "mixgrpo"
    group_size: int = 12
    clip_range: float = 1e-4
    advantage_mode: str = "advantage_aggr"
    advantage_clip: float = 5.0
    dance_train_fraction: float = 0.6


@dataclass
class OptimConfig:
    """AdamW and batching (SPEC §6). ``samples_per_update`` is global, split across learners."""

    lr: float = 1e-5
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    samples_per_update: int = 3


@dataclass
class ActorResources:
    """What each actor of a role asks Ray for, and its torch thread count."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict = field(default_factory=dict)
    torch_threads: int = 1


@dataclass
class RolloutConfig(ActorResources):
    """Rollout actors."""

    num_workers: int = 1
    prompts_per_call: int = 0  # 0 = a worker's whole share in one call


@dataclass
class RewardConfig(ActorResources):
    """One reward model and its server pool."""

    kind: str = "prompt_following"
    weight: float = 1.0
    replicas: int = 1
    batch_size: int = 64
    options: dict = field(default_factory=dict)


@dataclass
class LearnerConfig(ActorResources):
    """Learner group."""

    num_workers: int = 1
    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU), gloo, nccl
    max_staleness: int = 0  # weight versions a rollout may lag behind (0 = strictly on-policy)
    publish_dtype: str = "fp32"  # weights sent to rollout actors: fp32, or bf16 (half the traffic)


@dataclass
class RunConfig:
    """The run: length, seeds, outputs."""

    iterations: int = 300
    seed: int = 0
    output_dir: str = "runs"
    name: str = ""
    checkpoint_every: int = 50
    grid_every: int = 50
    eval_every: int = 0  # 0 = evaluate only before and after training
    grid_prompts: int = 8
    log_rollouts: bool = True
    progress: bool = True


@dataclass
class RayConfig:
    """How to reach Ray: ``address`` (else ``RAY_ADDRESS``, else a new local instance)."""

    address: str = ""
    num_cpus: int = 0  # for a new local instance; 0 = enough for every actor
    namespace: str = "mixgrpo"
    dashboard: bool = True  # start the dashboard with a new local instance


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: dict = field(default_factory=lambda: {"prompt_following": RewardConfig()})
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# Building from dicts with type checks
# ---------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if tp in (list, dict):
        if not isinstance(value, tp):
            raise ConfigError(f"{where} must be a {tp.__name__}, got {value!r}")
        return value
    return value


def _suggest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(choices)}"


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}{_suggest(str(key), names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, path)
        elif key == "rewards" and cls is Config:
            kwargs[key] = _build_rewards(value, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


def _build_rewards(data: Any, where: str) -> dict:
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where} must map at least one reward name to its settings")
    out = {}
    for name, spec in data.items():
        spec = {} if spec is None else spec
        out[str(name)] = _build(RewardConfig, spec, f"{where}.{name}")
    return out


def from_dict(data: dict) -> Config:
    """A :class:`Config` from a nested dict (unknown keys and wrong types raise ConfigError)."""
    return _build(Config, data, "")


# ---------------------------------------------------------------------------------------------
# Presets, merging and overrides
# ---------------------------------------------------------------------------------------------
def preset_names() -> list[str]:
    files = resources.files(PRESET_PACKAGE).iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml"))


def load_preset(name_or_path: str) -> dict:
    """The dict of a shipped preset (by stem, e.g. ``tiny``) or of a YAML file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; pass a preset name ({', '.join(preset_names())}) or a YAML path")
        text = path.read_text()
    else:
        res = resources.files(PRESET_PACKAGE) / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown preset {name_or_path!r}; choose one of: {', '.join(preset_names())} or pass a YAML path")
        text = res.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {name_or_path!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {name_or_path!r} must be a YAML mapping at the top level")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base`` (nested dicts merged, everything else replaced)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. run.iterations=10)")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_override(data: dict, parts: list[str], value: Any) -> dict:
    """Set ``a.b.c`` to ``value``; ``null`` removes the key (e.g. ``rewards.hps=null`` drops a
    reward pool, ``model.path=null`` goes back to the default)."""
    if value is None:
        out = deep_merge(data, {})
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                return out
            node[part] = dict(node[part])
            node = node[part]
        node.pop(parts[-1], None)
        return out
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return deep_merge(data, nested)


def resolve(presets: list[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Presets merged in order, then overrides, built and validated.

    A model preset (one with a ``model`` section, e.g. ``tiny``) comes first; algorithm presets
    (``mixgrpo``, ``mixgrpo_flash``, ``mixgrpo_flash_star``, ``dancegrpo``) layer on top of it.
    When the first preset names no model, the default ``tiny`` preset goes under it.
    """
    loaded = [load_preset(name) for name in (presets or [DEFAULT_PRESET])]
    if "model" not in loaded[0]:
        loaded.insert(0, load_preset(DEFAULT_PRESET))
    data: dict = {}
    for preset in loaded:
        data = deep_merge(data, preset)
    for text in overrides or []:
        parts, value = parse_override(text)
        data = apply_override(data, parts, value)
    cfg = from_dict(data)
    validate(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------
# Validation of combinations
# ---------------------------------------------------------------------------------------------
def _choice(value: str, choices: tuple, where: str) -> None:
    if value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(choices)}; got {value!r}")


def validate(cfg: Config) -> None:
    """Check ranges and combinations that cannot work (before any actor starts)."""
    from mixgrpo_ray.core.window import AT_END, INTERVAL_SCHEDULES, STRATEGIES
    from mixgrpo_ray.rewards.registry import REWARD_KINDS

    s, w, g, o = cfg.sampling, cfg.window, cfg.grpo, cfg.optim
    _choice(cfg.model.kind, ("tiny", "flux"), "model.kind")
    _choice(cfg.model.dtype, ("auto", "fp32", "bf16", "fp16"), "model.dtype")
    _choice(s.sde_kind, ("flow_grpo", "dance_grpo"), "sampling.sde_kind")
    _choice(s.tail, ("euler", "dpm2"), "sampling.tail")
    _choice(w.strategy, STRATEGIES, "window.strategy")
    _choice(w.interval_schedule, INTERVAL_SCHEDULES, "window.interval_schedule")
    _choice(w.at_end, AT_END, "window.at_end")
    _choice(g.algorithm, ("mixgrpo", "dancegrpo"), "grpo.algorithm")
    _choice(g.advantage_mode, ("advantage_aggr", "reward_aggr"), "grpo.advantage_mode")
    _choice(cfg.learner.backend, ("auto", "gloo", "nccl"), "learner.backend")
    _choice(cfg.learner.publish_dtype, ("fp32", "bf16"), "learner.publish_dtype")

    if s.num_steps < 3:
        raise ConfigError(f"sampling.num_steps must be >= 3, got {s.num_steps}")
    if s.shift <= 0 or s.noise_level <= 0:
        raise ConfigError("sampling.shift and sampling.noise_level must be > 0")
    if not 0 < s.tail_compression <= 1:
        raise ConfigError(f"sampling.tail_compression must be in (0, 1], got {s.tail_compression}")
    trainable = s.num_steps - 2
    if g.algorithm == "mixgrpo":
        if w.size < 1 or w.size > trainable:
            raise ConfigError(
                f"window.size={w.size} does not fit the {trainable} trainable steps of "
                f"sampling.num_steps={s.num_steps} (the last two are never trained); use 1..{trainable}"
            )
        if not 0 <= w.initial_start <= trainable - w.size:
            raise ConfigError(f"window.initial_start must be in [0, {trainable - w.size}], got {w.initial_start}")
    else:
        if not 0 < g.dance_train_fraction <= 1:
            raise ConfigError(f"grpo.dance_train_fraction must be in (0, 1], got {g.dance_train_fraction}")
    for name in ("shift_interval", "stride", "min_shift_interval"):
        if getattr(w, name) < 1:
            raise ConfigError(f"window.{name} must be >= 1, got {getattr(w, name)}")
    if g.group_size < 2:
        raise ConfigError(f"grpo.group_size must be >= 2 (advantages are relative within a group), got {g.group_size}")
    if g.clip_range <= 0 or g.advantage_clip <= 0:
        raise ConfigError("grpo.clip_range and grpo.advantage_clip must be > 0")
    if o.lr <= 0 or o.max_grad_norm <= 0 or o.eps <= 0 or o.weight_decay < 0:
        raise ConfigError("optim.lr, optim.eps and optim.max_grad_norm must be > 0 and optim.weight_decay >= 0")
    if len(o.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in o.betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
    if o.samples_per_update < 1:
        raise ConfigError(f"optim.samples_per_update must be >= 1, got {o.samples_per_update}")
    if o.samples_per_update % cfg.learner.num_workers:
        raise ConfigError(
            f"optim.samples_per_update={o.samples_per_update} must be divisible by "
            f"learner.num_workers={cfg.learner.num_workers} (each learner takes an equal share)"
        )
    if cfg.data.prompts_per_iteration < 1:
        raise ConfigError(f"data.prompts_per_iteration must be >= 1, got {cfg.data.prompts_per_iteration}")
    if (cfg.data.prompts_per_iteration * g.group_size) % o.samples_per_update:
        raise ConfigError(
            f"data.prompts_per_iteration * grpo.group_size = {cfg.data.prompts_per_iteration * g.group_size} "
            f"samples must be divisible by optim.samples_per_update={o.samples_per_update}"
        )
    if cfg.data.eval_seeds < 1 or cfg.data.eval_prompts < 0:
        raise ConfigError("data.eval_seeds must be >= 1 and data.eval_prompts >= 0")
    for role in ("rollout", "learner"):
        rc = getattr(cfg, role)
        if rc.num_workers < 1:
            raise ConfigError(f"{role}.num_workers must be >= 1, got {rc.num_workers}")
        _check_resources(rc, role)
    if not cfg.rewards:
        raise ConfigError("rewards must configure at least one reward model")
    if all(r.weight == 0 for r in cfg.rewards.values()):
        raise ConfigError("at least one reward needs a weight > 0 (rewards.<name>.weight)")
    for name, rc in cfg.rewards.items():
        where = f"rewards.{name}"
        if rc.kind not in REWARD_KINDS:
            raise ConfigError(f"{where}.kind must be one of {', '.join(sorted(REWARD_KINDS))}; got {rc.kind!r}")
        if rc.replicas < 1:
            raise ConfigError(f"{where}.replicas must be >= 1, got {rc.replicas}")
        if rc.batch_size < 1:
            raise ConfigError(f"{where}.batch_size must be >= 1, got {rc.batch_size}")
        if rc.weight < 0:
            raise ConfigError(f"{where}.weight must be >= 0, got {rc.weight}")
        _check_resources(rc, where)
    r = cfg.run
    if r.iterations < 0:
        raise ConfigError(f"run.iterations must be >= 0, got {r.iterations}")
    for name in ("checkpoint_every", "grid_every", "eval_every", "grid_prompts"):
        if getattr(r, name) < 0:
            raise ConfigError(f"run.{name} must be >= 0, got {getattr(r, name)}")


def _check_resources(rc: Any, where: str) -> None:
    if rc.num_cpus < 0 or rc.num_gpus < 0:
        raise ConfigError(f"{where}.num_cpus and {where}.num_gpus must be >= 0")
    if rc.torch_threads < 1:
        raise ConfigError(f"{where}.torch_threads must be >= 1, got {rc.torch_threads}")
    for key, val in rc.resources.items():
        if not isinstance(val, (int, float)) or val < 0:
            raise ConfigError(f"{where}.resources.{key} must be a number >= 0, got {val!r}")


def required_resources(cfg: Config) -> dict[str, float]:
    """Total Ray resources every actor of the run asks for together."""
    total: dict[str, float] = {"CPU": 0.0, "GPU": 0.0}

    def add(rc: Any, count: int) -> None:
        total["CPU"] += rc.num_cpus * count
        total["GPU"] += rc.num_gpus * count
        for key, val in rc.resources.items():
            total[key] = total.get(key, 0.0) + float(val) * count

    add(cfg.rollout, cfg.rollout.num_workers)
    add(cfg.learner, cfg.learner.num_workers)
    for rc in cfg.rewards.values():
        add(rc, rc.replicas)
    return total


def check_cluster_resources(cfg: Config, available: dict[str, float]) -> None:
    """Raise ConfigError when the cluster lacks a resource the actors ask for in total."""
    for key, need in required_resources(cfg).items():
        have = float(available.get(key, 0.0))
        if need > have + 1e-9:
            raise ConfigError(
                f"the run asks for {need:g} {key} in total but the Ray cluster has {have:g}; "
                f"lower the replicas / workers or their {key} settings, or add nodes"
            )
