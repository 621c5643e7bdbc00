"""Build the configured policy (``model.kind``): the embedded tiny model, FLUX, SD3 or Qwen-Image."""

from __future__ import annotations

from typing import Optional

import torch

from mixgrpo_ray.config import ModelConfig
from mixgrpo_ray.models.policy import Policy

#: images per evaluation / grid sampling call when ``data.eval_batch_size`` is 0 (auto), by
#: ``model.kind``: a 720x720 FLUX batch of 8 fits beside its text encoders on one 80 GB GPU.
EVAL_BATCH_SIZE = {"tiny": 256, "flux": 8, "sd3": 8, "qwen_image": 4}


class NoCudaError(RuntimeError):
    """An actor was given GPUs but this torch build cannot use them."""


def pick_device(num_gpus: float, index: Optional[int] = None) -> torch.device:
    """CPU for ``num_gpus == 0``; else CUDA device ``index`` (``cuda`` when ``None``).

    Raises :class:`NoCudaError` when GPUs were asked for but torch sees no CUDA device (a CPU
    build of torch, or no driver): silently loading the model on CPU would hold the GPUs Ray
    reserved while running orders of magnitude slower in fp32.
    """
    if num_gpus <= 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + (" (a CPU-only build)" if torch.version.cuda is None else "")
        raise NoCudaError(
            f"this actor was given num_gpus={num_gpus:g} but {build} sees no CUDA device; install a CUDA "
            "build of torch on every GPU node (e.g. pip install torch --index-url "
            "https://download.pytorch.org/whl/cu128, or make setup TORCH=...) or set the role's num_gpus: 0"
        )
    return torch.device("cuda" if index is None else f"cuda:{int(index)}")


def eval_batch_size(model: ModelConfig, configured: int) -> int:
    """Images per evaluation sampling call: ``configured`` (``data.eval_batch_size``), or the
    model's default when that is 0."""
    return int(configured) if configured > 0 else EVAL_BATCH_SIZE.get(model.kind, 8)


def import_model_code(model: ModelConfig) -> None:
    """Import the libraries building ``model`` loads (so that a process's memory baseline,
    :class:`~mixgrpo_ray.common.process_memory.PeakMemory`, holds the code and not the model)."""
    import importlib

    if model.kind not in POLICY_MODULES:
        importlib.import_module("mixgrpo_ray.models.tiny.model")
        return
    importlib.import_module(POLICY_MODULES[model.kind])
    import diffusers
    import transformers

    for name in ("FluxTransformer2DModel", "SD3Transformer2DModel", "QwenImageTransformer2DModel", "AutoencoderKL",
                 "AutoencoderKLQwenImage", "FlowMatchEulerDiscreteScheduler"):
        getattr(diffusers, name)  # diffusers and transformers import a model's code on first use
    for name in ("T5EncoderModel", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer", "T5TokenizerFast",
                 "Qwen2_5_VLForConditionalGeneration", "Qwen2Tokenizer"):
        getattr(transformers, name)
    if model.lora_rank:
        importlib.import_module("peft")


def build_policy(model: ModelConfig, device: torch.device | str = "cpu", *, trainable: bool = True) -> Policy:
    """The policy ``model`` describes, on ``device``.

    ``trainable=True`` (a learner) holds only what it trains: no text encoders and no VAE (the
    learner conditions on the prompt embeddings the trajectory carries; ``encode_prompts`` and, for
    FLUX, ``decode`` raise). ``trainable=False`` (rollout actors, evaluation, sampling) holds every
    component and may skip optimiser-only state such as fp32 master copies."""
    if model.kind == "tiny":
        from mixgrpo_ray.models.tiny.model import TinyPolicy

        # path "random": a seeded random initialisation (tests, ablations); else the shipped weights
        policy = TinyPolicy(seed=0) if model.path == "random" else TinyPolicy.from_pretrained(model.path)
        if trainable:  # its text encoder is frozen: RL trains the transformer only
            policy.without_text_encoder()
        return policy.to(device)
    if model.kind in POLICY_MODULES:
        return policy_class(model).from_model_config(model, device=device, trainable=trainable)
    raise ValueError(f"unknown model.kind {model.kind!r}; choose tiny, flux, sd3 or qwen_image")


#: the module and class of each diffusers model kind's policy
POLICY_MODULES = {"flux": "mixgrpo_ray.models.flux.flux_policy", "sd3": "mixgrpo_ray.models.sd3.sd3_policy",
                  "qwen_image": "mixgrpo_ray.models.qwen_image.qwen_image_policy"}
POLICY_CLASSES = {"flux": "FluxPolicy", "sd3": "SD3Policy", "qwen_image": "QwenImagePolicy"}
#: the diffusers pipeline whose folder each kind loads
PIPELINE_CLASSES = {"flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline", "qwen_image": "QwenImagePipeline"}


def policy_class(model: "ModelConfig | str"):
    """The policy class of a diffusers model kind (a ``ModelConfig`` or its ``kind``)."""
    import importlib

    kind = model if isinstance(model, str) else model.kind
    return getattr(importlib.import_module(POLICY_MODULES[kind]), POLICY_CLASSES[kind])


def build_base_policy(trained: Policy, model: ModelConfig) -> Policy:
    """The base model ``model`` describes, beside ``trained`` (the same model with trained weights
    loaded), for test-time mixed-model sampling: FLUX shares every frozen component (text
    encoders, prompt cache, VAE; with LoRA the transformer too) with ``trained``; the tiny model
    is small enough to load again."""
    if model.kind == "flux":
        from mixgrpo_ray.models.flux.flux_policy import shared_base

        return shared_base(trained, model)
    if model.kind in ("sd3", "qwen_image") and model.lora_rank:
        return trained.base_view()
    return build_policy(model, trained.device, trainable=False)


def build_sampler(model: ModelConfig, device: torch.device | str = "cpu", trained: Optional[Policy] = None) -> Policy:
    """A policy to sample with (``trainable=False``: text encoders and VAE included). With
    ``trained`` (a learner's policy) it denoises with ``trained``'s own transformer, which is
    neither copied nor moved (a colocated worker sampling on its training module; under fsdp each
    block is gathered per forward); else it holds its own transformer in the compute dtype."""
    if trained is None:
        return build_policy(model, device, trainable=False)
    if model.kind == "tiny":
        policy = build_policy(model, "cpu", trainable=False)
        policy.transformer = trained.transformer
        policy.shared_denoiser = True
        return policy.to(device)
    if model.kind in POLICY_MODULES:
        return policy_class(model).from_model_config(model, device=device, trainable=False, denoiser=trained.transformer)
    raise ValueError(f"unknown model.kind {model.kind!r}; choose tiny, flux, sd3 or qwen_image")
