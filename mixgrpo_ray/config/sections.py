"""The sections of a run configuration, one pydantic model each.

Every section forbids unknown keys and re-validates on assignment. Choices are ``Literal``
types (:mod:`mixgrpo_ray.config.values`), ranges are ``Field`` bounds, and a check that spans
two keys of one section is a model validator here; checks across sections live on the root
:class:`~mixgrpo_ray.config.root.Config`.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from typing import Annotated, Any, ClassVar, Optional

from pydantic import (
    BaseModel, ConfigDict, Field, Strict, ValidationError, ValidationInfo, field_validator, model_validator,
)

from mixgrpo_ray.config.errors import config_error, line_error, value_error
from mixgrpo_ray.config.values import (
    AdvantageMode, Algorithm, Amount, AtEnd, Backend, Bool, ColocatedWeights, Float, Int, IntervalSchedule, LearnerStrategy,
    LoggerName, ModelDtype, ModelKind, PYTHON_TARGET_PATTERN, Pipeline, Placement, PublishDtype, RewardKind, SdeKind, Str,
    Strategy, SyncTransport, Tail, WandbMode,
)

# True while a section is being validated: sections nested in it leave their errors to pydantic,
# which gives them their full key path; the outermost one turns the result into a ConfigError.
_validating: ContextVar[bool] = ContextVar("mixgrpo_config_validating", default=False)


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated, and a bad value
    (constructing or assigning) raises :class:`~mixgrpo_ray.config.errors.ConfigError` naming
    ``<section_key>.<field>``. ``model_construct`` builds one without any check (tests)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    section_key: ClassVar[str] = ""

    def __init__(self, **data: Any) -> None:
        if _validating.get():  # a section inside another: pydantic places its errors
            super().__init__(**data)
            return
        token = _validating.set(True)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise config_error(exc, type(self), self.section_key) from None
        finally:
            _validating.reset(token)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
        token = _validating.set(True)
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise config_error(exc, cls, cls.section_key) from None
        finally:
            _validating.reset(token)

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise config_error(exc, type(self), self.section_key) from None


class ModelConfig(Section):
    """Which policy to train. ``kind``: ``tiny`` (embedded), ``flux`` (a diffusers FluxPipeline folder),
    ``sd3`` (a StableDiffusion3Pipeline folder: SD3 / SD3.5) or ``qwen_image`` (a QwenImagePipeline
    folder: Qwen-Image)."""

    section_key: ClassVar[str] = "model"
    kind: ModelKind = "tiny"
    path: Optional[Str] = None  # weights / model folder; None = the shipped tiny model; builtin:tiny_pairs: pairs
    dtype: ModelDtype = "auto"  # forward-pass precision: auto (bf16 on GPU, fp32 on CPU), fp32, bf16
    guidance: Float = 3.5  # FLUX guidance embedding
    height: Int = 512
    width: Int = 512
    lora_rank: Int = 0  # 0 = full fine-tuning; > 0 = LoRA adapters of this rank
    lora_alpha: Float = 0.0  # 0 = same as rank
    gradient_checkpointing: Bool = False
    max_sequence_length: Int = 512
    timestep_decimals: Optional[Int] = None  # floor sigma fed to the model (reference code: 3)
    prompt_cache_size: Int = 1024  # prompts whose text embeddings are kept (FLUX)


class DataConfig(Section):
    """Prompt sources: ``tiny:train`` / ``tiny:eval`` (the tiny model's shapes task),
    ``tiny_pairs:train`` / ``tiny_pairs:eval`` (its pairs task) or a local file."""

    section_key: ClassVar[str] = "data"
    train: Str = "tiny:train"
    eval: Str = "tiny:eval"
    prompts_per_iteration: Int = Field(8, ge=1)
    eval_prompts: Int = Field(0, ge=0)  # 0 = all eval prompts
    eval_seeds: Int = Field(1, ge=1)  # images per eval prompt (fixed noise seeds)
    eval_batch_size: Int = Field(0, ge=0)  # images per evaluation / grid sampling call; 0 = auto (tiny 256, flux 8)
    shuffle: Bool = True


class SamplingConfig(Section):
    """Rollout sampling (docs/algorithm.md §2–§6)."""

    section_key: ClassVar[str] = "sampling"
    num_steps: Int = Field(25, ge=3)
    shift: Float = Field(3.0, gt=0)
    noise_level: Float = Field(0.7, gt=0)  # a for flow_grpo, eta for dance_grpo
    sde_kind: SdeKind = "flow_grpo"
    tail: Tail = "euler"  # euler (MixGRPO) or dpm2 (MixGRPO-Flash)
    tail_compression: Float = Field(0.4, gt=0, le=1)
    share_group_noise: Bool = True  # a group shares one initial noise
    cfg_scale: Float = Field(1.0, gt=0)  # true classifier-free guidance (docs/algorithm.md §1.1); 1 = off
    negative_prompt: Str = ""  # the unconditional prompt of classifier-free guidance


class WindowConfig(Section):
    """Sliding SDE window (docs/algorithm.md §7). ``size`` and ``initial_start`` are checked against
    ``sampling.num_steps`` by the root config (MixGRPO only)."""

    section_key: ClassVar[str] = "window"
    size: Int = 4
    shift_interval: Int = Field(25, ge=1)
    stride: Int = Field(1, ge=1)
    strategy: Strategy = "progressive"
    interval_schedule: IntervalSchedule = "constant"
    at_end: AtEnd = "rollback"
    initial_start: Int = 0
    min_shift_interval: Int = Field(5, ge=1)


class GRPOConfig(Section):
    """The objective (docs/algorithm.md §8–§9). ``algorithm``: ``mixgrpo`` (window) or ``dancegrpo`` (SDE at every
    step, a random ``dance_train_fraction`` of the first T-1 steps trained per sample)."""

    section_key: ClassVar[str] = "grpo"
    algorithm: Algorithm = "mixgrpo"
    group_size: Int = Field(12, ge=2)  # advantages are relative within a group
    clip_range: Float = Field(1e-4, gt=0)
    advantage_mode: AdvantageMode = "advantage_aggr"
    advantage_clip: Float = Field(5.0, gt=0)
    dance_train_fraction: Float = 0.6
    # async pipeline: cap of the proximal/behaviour importance weight (docs/algorithm.md eq. (40))
    max_importance_weight: Float = Field(2.0, ge=1)

    @model_validator(mode="after")
    def _dance_fraction(self) -> "GRPOConfig":
        f = self.dance_train_fraction
        if self.algorithm == "dancegrpo" and not 0 < f <= 1:
            raise line_error(f"grpo.dance_train_fraction must be in (0, 1] with grpo.algorithm=dancegrpo, got {f}")
        return self


class OptimConfig(Section):
    """AdamW and batching (docs/algorithm.md §9). ``samples_per_update`` is global, split across learners."""

    section_key: ClassVar[str] = "optim"
    lr: Float = Field(1e-5, gt=0)
    betas: Annotated[list, Strict()] = Field(default_factory=lambda: [0.9, 0.999])
    eps: Float = Field(1e-8, gt=0)
    weight_decay: Float = Field(1e-4, ge=0)
    max_grad_norm: Float = Field(1.0, gt=0)
    samples_per_update: Int = Field(3, ge=1)

    @field_validator("betas")
    @classmethod
    def _two_betas(cls, betas: list) -> list:
        ok = len(betas) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
        if not ok:
            raise value_error(f"must be two numbers in [0, 1), got {betas}")
        return betas


class ActorResources(Section):
    """What each actor of a role asks Ray for, and its torch thread count."""

    num_cpus: Float = Field(1.0, ge=0)
    num_gpus: Float = Field(0.0, ge=0)
    resources: dict[Str, Amount] = Field(default_factory=dict)  # custom Ray resources, name -> amount
    torch_threads: Int = Field(1, ge=1)


class RolloutConfig(ActorResources):
    """Rollout actors."""

    section_key: ClassVar[str] = "rollout"
    num_workers: Int = Field(1, ge=1)
    prompts_per_call: Int = 0  # 0 = a worker's whole share in one call
    max_restarts: Int = Field(3, ge=0)  # Ray restarts of a dead actor (its call is redone); then others take its share
    # text encoders and VAE wait in host memory and visit the GPU only to encode / decode
    offload_encoders: Bool = False
    # run.placement=colocated: which weights a hybrid worker samples with. module: the training
    # module itself (fsdp: each block gathered per forward); copy: one compute-dtype copy refreshed
    # after every update; auto: the memory plan picks (copy when it fits, else module)
    colocated_weights: ColocatedWeights = "auto"


class RewardConfig(ActorResources):
    """One reward model and its server pool (``rewards.<name>``). A ``weight`` of 0 is scored and
    logged but not trained on. ``kind: python`` scores with the user's own class or function that
    ``target`` names (``package.module:Name``; only its form is checked here, it is imported on
    the reward replicas)."""

    section_key: ClassVar[str] = "rewards.<name>"
    kind: RewardKind = "prompt_following"
    target: Optional[Str] = Field(None, validate_default=True)  # kind python: package.module:Class or :function
    weight: Float = Field(1.0, ge=0)
    replicas: Int = Field(1, ge=1)
    batch_size: Int = Field(64, ge=1)
    options: dict = Field(default_factory=dict)  # keyword arguments of the reward model
    max_restarts: Int = Field(3, ge=0)  # Ray restarts of a dead replica
    timeout_s: Float = Field(0.0, ge=0)  # a scoring request taking longer is retried elsewhere (0 = no limit)
    max_down_s: Float = Field(300.0, gt=0)  # no replica answering for this long stops the run (checkpointed)

    @field_validator("target")
    @classmethod
    def _python_target(cls, target: Optional[str], info: ValidationInfo) -> Optional[str]:
        kind = info.data.get("kind")
        if kind == "python" and not (target and re.fullmatch(PYTHON_TARGET_PATTERN, target)):
            raise value_error(f"must be package.module:Name (a class or function) with kind python, got {target!r}")
        if kind != "python" and target is not None:
            raise value_error(f"is only for kind python (kind is {kind}); remove it or set kind: python")
        return target

    def model_kwargs(self) -> dict:
        """The reward model's constructor arguments: ``options``, plus ``target`` for kind python."""
        return {**self.options, "target": self.target} if self.kind == "python" else dict(self.options)


class LearnerConfig(ActorResources):
    """Learner group."""

    section_key: ClassVar[str] = "learner"
    num_workers: Int = Field(1, ge=1)
    backend: Backend = "auto"  # auto (nccl on GPU, gloo on CPU), gloo, nccl
    max_staleness: Int = 0  # weight versions a rollout may lag behind (0 = strictly on-policy)
    publish_dtype: PublishDtype = "fp32"  # weights sent to rollout actors: fp32, or bf16 (half the traffic)
    # replicate: every rank holds the whole model, gradients all-reduced in buckets of
    # reduce_bucket_mb; fsdp: FSDP2 shards weights, gradients and AdamW state over the ranks
    strategy: LearnerStrategy = "replicate"
    offload_optimizer: Bool = False  # fsdp on GPU: sharded weights/grads/AdamW state live on the host
    reduce_bucket_mb: Float = Field(64.0, gt=0)
    sync_transport: SyncTransport = "object_store"  # or collective (NCCL on GPU, gloo on CPU)
    sync_bucket_mb: Float = Field(256.0, gt=0)  # weight-sync bucket size (in the publish dtype)
    gpu_memory_gb: Float = Field(0.0, ge=0)  # memory of one learner GPU; > 0: train checks the plan fits
    placement_timeout_s: Float = Field(300.0, gt=0)  # how long the learner ranks' placement group may wait
    # how long the ranks may take to form their process group (and the bound on any later collective)
    init_timeout_s: Float = Field(600.0, gt=0)
    # a rank (colocated: a hybrid worker) that dies: the whole group is re-formed in the run, from its
    # last complete checkpoint, and the iterations since are redone; this many times, then the run stops
    max_restarts: Int = Field(3, ge=0)

    @model_validator(mode="after")
    def _nccl_needs_gpus(self) -> "LearnerConfig":
        if self.backend == "nccl" and self.num_gpus <= 0:
            raise line_error("learner.backend=nccl needs learner.num_gpus > 0 (NCCL runs on GPUs only); "
                             "use backend gloo or auto on CPU")
        return self


class RunConfig(Section):
    """The run: length, seeds, outputs."""

    section_key: ClassVar[str] = "run"
    iterations: Int = Field(300, ge=0)
    seed: Int = 0
    output_dir: Str = "runs"
    name: Str = ""
    checkpoint_every: Int = Field(50, ge=0)
    checkpoint_every_s: Float = Field(0.0, ge=0)  # also checkpoint when this many seconds passed (0 = off)
    keep_checkpoints: Int = Field(0, ge=0)  # keep only the newest N complete checkpoints (0 = all)
    grid_every: Int = Field(50, ge=0)
    eval_every: Int = Field(0, ge=0)  # 0 = evaluate only before and after training
    grid_prompts: Int = Field(8, ge=0)
    log_rollouts: Bool = True
    progress: Bool = True
    # metrics, held-out evaluations and grids also go to: tensorboard, wandb, mlflow (jsonl: metrics.jsonl,
    # always written); see mixgrpo_ray/train/loggers.py
    loggers: Annotated[list[LoggerName], Strict()] = Field(default_factory=lambda: ["jsonl"])
    project: Str = "mixgrpo-ray"  # W&B project / MLflow experiment
    wandb_mode: WandbMode = "auto"  # auto: online only when an API key is configured, else offline
    # sync: sample, score, train, broadcast in turn (exactly on-policy); async: rollout actors sample
    # the next iteration with the current weights while the learner trains (lag <= learner.max_staleness)
    pipeline: Pipeline = "sync"
    # disaggregated: rollout actors, learner ranks and reward replicas each on their own resources;
    # colocated: learner.num_workers hybrid workers, each a learner rank and a rollout actor at once
    # (mixgrpo/hybrid/<i>), sampling and training in turn on the same GPUs (docs/scaling.md)
    placement: Placement = "disaggregated"


class RayConfig(Section):
    """How to reach Ray: ``address`` (else ``RAY_ADDRESS``, else a new local instance)."""

    section_key: ClassVar[str] = "ray"
    address: Str = ""
    num_cpus: Int = 0  # for a new local instance; 0 = enough for every actor
    namespace: Str = "mixgrpo"
    dashboard: Bool = True  # start the dashboard with a new local instance
