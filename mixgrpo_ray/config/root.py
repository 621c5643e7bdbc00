"""The root :class:`Config` (every section, plus the checks across sections), built from a
nested dict by :func:`from_dict` and re-checked by :func:`validate`.

Rewards are a mapping ``name -> RewardConfig`` so each pool is addressed by name
(``rewards.hps.replicas=4``); a reward given as ``null`` takes the defaults.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import Field, field_validator, model_validator

from mixgrpo_ray.config.errors import ConfigError, line_error
from mixgrpo_ray.config.sections import (
    DataConfig, GRPOConfig, LearnerConfig, ModelConfig, OptimConfig, RayConfig, RewardConfig,
    RolloutConfig, RunConfig, SamplingConfig, Section, WindowConfig,
)


#: reward options that are secrets: shown as REDACTED in config.yaml and --print-config
SECRET_OPTIONS = ("api_key",)
REDACTED = "<redacted>"


class Config(Section):
    """A whole run configuration (what ``--print-config`` prints and ``RUN/config.yaml`` holds)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    window: WindowConfig = Field(default_factory=WindowConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    rewards: dict[str, RewardConfig] = Field(default_factory=lambda: {"prompt_following": RewardConfig()})
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    def to_dict(self) -> dict:
        """A plain nested dict (sections and rewards as dicts, lists as lists)."""
        return self.model_dump()

    def to_yaml(self) -> str:
        """The config as YAML, with secret reward options (API keys) replaced by REDACTED."""
        data = self.to_dict()
        for spec in data["rewards"].values():
            for key in SECRET_OPTIONS:
                if spec["options"].get(key):
                    spec["options"][key] = REDACTED
        return yaml.safe_dump(data, sort_keys=False)

    @field_validator("rewards", mode="before")
    @classmethod
    def _reward_pools(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not value:
            raise line_error(f"rewards must map at least one reward name to its settings, got {value!r}")
        return {str(name): ({} if spec is None else spec) for name, spec in value.items()}

    @model_validator(mode="after")
    def _across_sections(self) -> "Config":
        s, w, g, o, d = self.sampling, self.window, self.grpo, self.optim, self.data
        trainable = s.num_steps - 2  # the last two steps are never trained
        if g.algorithm == "mixgrpo":
            if not 1 <= w.size <= trainable:
                raise line_error(
                    f"window.size={w.size} does not fit the {trainable} trainable steps of "
                    f"sampling.num_steps={s.num_steps} (the last two are never trained); use 1..{trainable}"
                )
            if not 0 <= w.initial_start <= trainable - w.size:
                raise line_error(
                    f"window.initial_start must be in [0, {trainable - w.size}] for window.size={w.size} "
                    f"and sampling.num_steps={s.num_steps}, got {w.initial_start}"
                )
        if self.model.kind in ("sd3", "qwen_image") and s.tail != "euler":
            raise line_error(
                f"sampling.tail={s.tail} (MixGRPO-Flash) is defined on MixGRPO's sigma grid, but model.kind={self.model.kind} samples "
                "on its pipeline's (docs/algorithm.md §2.1); use sampling.tail=euler"
            )
        if self.model.kind == "qwen_image" and not 1 <= self.model.max_sequence_length <= 1024:
            raise line_error(
                f"model.max_sequence_length={self.model.max_sequence_length}: QwenImagePipeline encodes at most 1024 "
                "prompt tokens; use 1..1024 (the qwen_image preset's is 256)"
            )
        if self.model.kind in ("flux", "sd3", "qwen_image") and self.model.dtype == "fp16":
            raise line_error(
                f"model.dtype=fp16 is not supported for {self.model.kind.upper()}: its text encoder, the transformer and its VAE overflow in "
                "fp16 and the learner has no gradient scaler; use model.dtype=bf16 (or auto: bf16 on GPU)"
            )
        for name, rc in self.rewards.items():
            # the reward server sets the model's device from num_gpus; a device option saying otherwise is a mistake
            device = str(rc.options.get("device") or "auto")
            if device.startswith("cuda") and rc.num_gpus <= 0:
                raise line_error(f"rewards.{name}.options.device={device} needs rewards.{name}.num_gpus > 0 (a replica "
                                 "computes on the GPU Ray assigns it); set num_gpus or drop the device option")
            if device == "cpu" and rc.num_gpus > 0:
                raise line_error(f"rewards.{name}.options.device=cpu but rewards.{name}.num_gpus={rc.num_gpus:g} "
                                 "reserves GPUs it would not use; set num_gpus: 0 or drop the device option")
        workers = self.learner.num_workers
        if o.samples_per_update % workers:
            raise line_error(
                f"optim.samples_per_update={o.samples_per_update} must be divisible by "
                f"learner.num_workers={workers} (each learner takes an equal share)"
            )
        samples = d.prompts_per_iteration * g.group_size
        if samples % o.samples_per_update:
            raise line_error(
                f"data.prompts_per_iteration * grpo.group_size = {samples} samples must be divisible "
                f"by optim.samples_per_update={o.samples_per_update}"
            )
        if self.learner.strategy == "fsdp" and self.model.lora_rank > 0:
            raise line_error(
                f"learner.strategy=fsdp shards full fine-tuning; LoRA (model.lora_rank={self.model.lora_rank}) "
                "trains replicated adapters: use learner.strategy=replicate"
            )
        _check_placement(self)
        if all(r.weight == 0 for r in self.rewards.values()):
            raise line_error("at least one reward needs a weight > 0 (rewards.<name>.weight)")
        return self


def sampling_calls(cfg: Config) -> int:
    """How many sampling calls an iteration's prompts are cut into (``rollout.prompts_per_call``,
    else one per rollout worker that gets a prompt)."""
    prompts, per_call = cfg.data.prompts_per_iteration, cfg.rollout.prompts_per_call
    return -(-prompts // per_call) if per_call else min(prompts, cfg.rollout.num_workers)


def _check_placement(cfg: Config) -> None:
    """``run.placement=colocated``: what the hybrid workers cannot honour, one line each."""
    if cfg.run.placement != "colocated":
        if cfg.rollout.colocated_weights != "auto":
            raise line_error(f"rollout.colocated_weights={cfg.rollout.colocated_weights} applies to "
                             "run.placement=colocated only; set run.placement=colocated or drop it")
        return
    n, r = cfg.learner.num_workers, cfg.rollout
    if cfg.run.pipeline == "async":
        raise line_error("run.placement=colocated samples and trains on the same workers in turn, so "
                         "run.pipeline=async has nothing to overlap; use run.pipeline=sync, or "
                         "run.placement=disaggregated for the asynchronous pipeline")
    if r.num_workers != n:
        raise line_error(f"run.placement=colocated samples on the learner.num_workers={n} hybrid workers, but "
                         f"rollout.num_workers={r.num_workers}; set rollout.num_workers={n} (or learner.num_workers to the rollout "
                         "count as well)")
    calls = sampling_calls(cfg)
    if calls % n:
        raise line_error(
            f"run.placement=colocated gives each of the {n} hybrid workers the same number of sampling calls, but "
            f"data.prompts_per_iteration={cfg.data.prompts_per_iteration} with rollout.prompts_per_call="
            f"{r.prompts_per_call} makes {calls}; use a multiple of {n} prompts (or calls)")


def from_dict(data: Any) -> Config:
    """A validated :class:`Config` from a nested dict (unknown keys, wrong types, out-of-range
    values and impossible combinations raise :class:`ConfigError`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping, got {data!r}")
    return Config.model_validate(data)


def validate(cfg: Config) -> None:
    """Check ``cfg`` again as a whole (assignments to a section are checked one key at a time,
    which misses combinations across sections)."""
    from_dict(cfg.to_dict())
