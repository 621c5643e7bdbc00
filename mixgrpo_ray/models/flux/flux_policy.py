"""FLUX.1 (diffusers ``FluxPipeline`` components) as an RL policy.

* **Latent.** The sampler's latent is FLUX's *packed* latent: the VAE latent image
  ``(C, H/f, W/f)`` (``f`` the VAE scale factor, 8 for FLUX; ``C = 16``) cut into 2x2 patches, one
  token of ``4C`` channels per patch, so one latent is ``(H/2f * W/2f, 4C)`` float32 —
  ``(2025, 64)`` at 720x720. Packing, image/text position ids and the transformer call follow
  ``FluxPipeline`` (:mod:`mixgrpo_ray.models.flux.common`). :meth:`FluxPolicy.initial_noise` draws
  the unpacked latent and packs it, as ``FluxPipeline.prepare_latents`` does.
* **Velocity.** ``transformer(x, timestep = sigma, guidance = model.guidance, T5 tokens, CLIP
  pooled)``; FLUX predicts the flow velocity directly. ``timestep_decimals`` (default off) floors
  the conditioning sigma to that many decimals, as the MixGRPO reference code feeds FLUX (docs/algorithm.md
eq. (6)); the step math outside always uses the exact sigma. The forward pass runs under autocast in
  the compute dtype (``model.dtype``; ``auto`` = bf16 on CUDA, fp32 on CPU); the result is
  float32.
* **Decode.** Unpack, ``latents / scaling_factor + shift_factor``, VAE decode, ``[-1, 1] -> [0, 1]``.
* **Weights.** Learner (``trainable=True``): full fine-tuning keeps fp32 master weights of the
  transformer and trains all of them; with ``model.lora_rank > 0`` the transformer is frozen (in
  the compute dtype) and only fp32 LoRA adapters train (:mod:`mixgrpo_ray.models.flux.lora`); what is
  published to rollout actors and written to checkpoints is exactly the trainable set. Rollout
  actors (``trainable=False``) hold everything in the compute dtype. Text encoders and VAE are
  always frozen in eval mode; prompt encodings are cached (:mod:`mixgrpo_ray.models.flux.text`).
* **Learners hold only what they train.** A learner's policy (``trainable=True``) loads the
  transformer alone: no T5/CLIP text encoders (about 10 GB for FLUX.1-dev) and no VAE, only their
  configs. It conditions on the prompt embeddings the rollout recorded in the trajectory;
  :meth:`FluxPolicy.encode_prompts` and :meth:`FluxPolicy.decode` raise
  :class:`FrozenPartsNotLoaded` there.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import torch

from mixgrpo_ray.models.flux import flux_folder as flux_loading, lora as flux_lora
from mixgrpo_ray.config import ModelConfig
from mixgrpo_ray.models.flux.text import FluxPromptEncoder
from mixgrpo_ray.models.flux import common as flux_common
from mixgrpo_ray.common.checkpoint import read_weights
from mixgrpo_ray.models.policy import Cond, Policy, check_state_dict

PATCH = 2  # FLUX packs 2x2 latent patches into one token


class FrozenPartsNotLoaded(RuntimeError):
    """A learner-side FLUX policy was asked to encode prompts or decode latents."""


class FluxPolicy(Policy):
    """A FLUX text-to-image model behind the :class:`~mixgrpo_ray.models.policy.Policy` interface (see
    the module docstring). Build it with :meth:`from_model_config`."""

    name = "flux"
    lora_targets = flux_lora.LORA_TARGET_PATTERN  # the modules LoRA adapts (a full-match pattern)

    def __init__(
        self,
        transformer: torch.nn.Module,
        vae: Optional[torch.nn.Module],
        prompts: Optional[FluxPromptEncoder],
        *,
        vae_config=None,
        height: int,
        width: int,
        guidance: float = 3.5,
        compute_dtype: torch.dtype = torch.float32,
        timestep_decimals: Optional[int] = None,
        use_adapters: bool = True,
        decode_batch_size: int = 4,
    ) -> None:
        """Wrap loaded components (all on one device). ``use_adapters=False`` runs the transformer
        with its LoRA adapters switched off (the base model; see :meth:`base_view`). A learner
        passes ``vae=None, prompts=None`` and the VAE's ``vae_config`` (for the latent sizes)."""
        self.transformer = transformer
        self.vae = vae.eval().requires_grad_(False) if vae is not None else None
        self.prompts = prompts
        if vae is not None:
            vae_config = vae.config
        if vae_config is None:
            raise ValueError("FluxPolicy needs the VAE or its config (vae_config)")
        self.vae_config = vae_config
        self.compute_dtype = compute_dtype
        self.guidance = float(guidance)
        self.timestep_decimals = timestep_decimals
        self.use_adapters = use_adapters
        self.decode_batch_size = int(decode_batch_size)
        self.vae_scale_factor, self.latent_channels = self.vae_geometry(vae_config)
        unit = self.vae_scale_factor * PATCH
        if height % unit or width % unit or height < unit or width < unit:
            raise ValueError(
                f"{self.name} image size {height}x{width} must be a positive multiple of {unit} "
                f"(VAE scale {self.vae_scale_factor} x 2x2 packing); e.g. {max(unit, height // unit * unit)}"
            )
        self.height, self.width = int(height), int(width)
        self.latent_height = self.height // self.vae_scale_factor
        self.latent_width = self.width // self.vae_scale_factor
        self._has_guidance = bool(getattr(transformer.config, "guidance_embeds", False))
        self.lora = flux_lora.has_lora(transformer)
        self._device = next(transformer.parameters()).device
        self._img_ids = flux_common.image_ids(self.latent_height // PATCH, self.latent_width // PATCH, self._device)

    @staticmethod
    def vae_geometry(vae_config) -> tuple[int, int]:
        """``(spatial scale factor, latent channels)`` of the VAE ``vae_config`` describes."""
        return 2 ** (len(vae_config.block_out_channels) - 1), int(vae_config.latent_channels)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_model_config(
        cls, model: ModelConfig, device: torch.device | str = "cpu", trainable: bool = True,
        denoiser: Optional[torch.nn.Module] = None,
    ) -> "FluxPolicy":
        """Load the FLUX components ``model.path`` names (a FluxPipeline folder or hub id) onto
        ``device``. ``trainable=True`` (learner): fp32 master weights for what trains (the whole
        transformer, or the LoRA adapters when ``model.lora_rank > 0``) and gradient
        checkpointing when configured, and neither text encoders nor VAE (the learner conditions on
        the embeddings the trajectory carries); ``trainable=False`` (rollout): every component, all
        weights in the compute dtype, nothing requires grad. ``denoiser`` (with ``trainable=False``):
        sample with this transformer (a learner's, adapters and all) instead of loading one."""
        device = torch.device(device)
        dtype = flux_loading.compute_dtype(model.dtype, device)
        path = model.path or flux_loading.DEFAULT_FLUX_MODEL
        lora = model.lora_rank > 0
        master = torch.float32 if trainable and not lora else dtype
        c = flux_loading.load_components(path, transformer_dtype=master, frozen_dtype=dtype, frozen=not trainable,
                                         transformer=denoiser)
        flux_loading.check_compatible(c)
        transformer = cls.prepare_transformer(c.transformer, model, dtype, trainable, shared=denoiser is not None)
        encoder = None if trainable else FluxPromptEncoder(
            c.tokenizer, c.text_encoder, c.tokenizer_2, c.text_encoder_2,
            max_sequence_length=model.max_sequence_length,
            cache_size=int(getattr(model, "prompt_cache_size", 1024)),
        )
        policy = cls(
            transformer, c.vae, encoder, vae_config=c.vae_config,
            height=model.height, width=model.width, guidance=model.guidance, compute_dtype=dtype,
            timestep_decimals=getattr(model, "timestep_decimals", None),
        )
        policy.shared_denoiser = denoiser is not None
        return policy.to(device)

    @classmethod
    def prepare_transformer(cls, transformer: torch.nn.Module, model: ModelConfig, dtype: torch.dtype,
                            trainable: bool, shared: bool = False) -> torch.nn.Module:
        """``transformer`` set up for its role: LoRA adapters on :attr:`lora_targets` (fp32 in a
        learner) with the rest frozen, or every weight trainable / frozen; gradient checkpointing
        when configured; eval mode. A ``shared`` transformer (a learner's, sampled on) is left as
        its learner set it up."""
        if shared:
            pass
        elif model.lora_rank > 0:
            flux_lora.add_lora(transformer, model.lora_rank, model.lora_alpha, targets=cls.lora_targets)
            for _, p in flux_lora.lora_parameters(transformer):
                p.data = p.data.to(torch.float32 if trainable else dtype)
                p.requires_grad_(trainable)
        else:
            transformer.requires_grad_(trainable)
        if trainable and model.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        return transformer.eval()

    @classmethod
    def from_pipeline_folder(cls, model: ModelConfig, folder, make_encoder, device: torch.device | str = "cpu",
                             trainable: bool = True, denoiser: Optional[torch.nn.Module] = None) -> "FluxPolicy":
        """As :meth:`from_model_config`, for a model that samples on its pipeline's own schedule
        (SD3, Qwen-Image): ``folder`` is its loading module (``load_components``,
        ``check_compatible``, ``PIPELINE``, ``DEFAULT_MODEL``) and ``make_encoder(components)`` its
        prompt encoder; the policy keeps the folder's scheduler config."""
        device = torch.device(device)
        dtype = flux_loading.compute_dtype(model.dtype, device)
        if not model.path:
            raise FileNotFoundError(f"model.kind={model.kind} needs model.path: a {folder.PIPELINE} folder such as a "
                                    f"local copy of {folder.DEFAULT_MODEL}")
        master = torch.float32 if trainable and model.lora_rank <= 0 else dtype
        c = folder.load_components(model.path, master, dtype, frozen=not trainable, transformer=denoiser)
        folder.check_compatible(c)
        transformer = cls.prepare_transformer(c.transformer, model, dtype, trainable, shared=denoiser is not None)
        policy = cls(transformer, c.vae, None if trainable else make_encoder(c), vae_config=c.vae_config,
                     height=model.height, width=model.width, compute_dtype=dtype,
                     timestep_decimals=model.timestep_decimals)
        policy.scheduler_config = c.scheduler_config
        policy.shared_denoiser = denoiser is not None
        return policy.to(device)

    def base_view(self) -> "FluxPolicy":
        """The base model of a LoRA policy without a second copy: shares every module (and the
        prompt cache) with this policy, runs with the adapters switched off. Take the view after
        moving the policy: moving either one moves the shared modules."""
        if not self.lora:
            raise ValueError("base_view needs a LoRA policy (model.lora_rank > 0); load a separate base policy instead")
        view = copy.copy(self)
        view.use_adapters = False
        return view

    def model_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The conditioning sigma, float32 on the device, floored to ``timestep_decimals``."""
        timestep = sigma.to(self._device, torch.float32)
        if self.timestep_decimals is not None:
            scale = 10.0 ** self.timestep_decimals
            timestep = torch.floor(timestep * scale) / scale
        return timestep

    # ---------------------------------------------------------------- precision
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._device.type, dtype=self.compute_dtype)

    def _adapters(self) -> contextlib.AbstractContextManager:
        if self.use_adapters:
            return contextlib.nullcontext()
        return flux_lora.adapters_disabled(self.transformer)

    # ---------------------------------------------------------------- Policy interface
    def _frozen_parts(self, what: str, part: object) -> None:
        if part is None:
            raise FrozenPartsNotLoaded(
                f"FLUX policy: {what} on a learner policy (built with trainable=True), which loads neither text "
                "encoders nor VAE; learners condition on the prompt embeddings the trajectory carries "
                "(build with trainable=False to sample, encode or decode)"
            )

    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        self._frozen_parts("encode_prompts called", self.prompts)
        with self.frozen_on_device(self.prompts):
            return self.prompts.encode(prompts, device=self._device)

    def frozen_parts(self) -> list:
        return [p for p in (self.prompts, self.vae) if p is not None]

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.latent_shape():
            raise ValueError(f"FLUX policy: latents must be (batch, {', '.join(map(str, self.latent_shape()))}), got {tuple(x.shape)}")
        x = x.to(self._device, torch.float32)
        hidden = cond["encoder_hidden_states"].to(self._device)
        with self._adapters(), self._autocast():
            out = flux_common.flux_forward(
                self.transformer,
                x,
                sigma.to(self._device, torch.float32),
                hidden,
                cond["pooled_projections"].to(self._device),
                self._img_ids,
                flux_common.text_ids(hidden.shape[1], self._device),
                guidance=self.guidance if self._has_guidance else None,
                timestep_decimals=self.timestep_decimals,
            )
        return out.float()

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """Packed latents ``(B, tokens, 4C)`` -> VAE latents ``(B, C, H/f, W/f)``."""
        return flux_common.unpack_latents(x, self.latent_channels, self.latent_height, self.latent_width, PATCH)

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        self._frozen_parts("decode called", self.vae)
        cfg = self.vae.config
        shift = float(getattr(cfg, "shift_factor", None) or 0.0)
        latents = self.unpack(x.to(self._device, torch.float32)) / float(cfg.scaling_factor) + shift
        images = []
        with self.frozen_on_device(self.vae):
            for i in range(0, latents.shape[0], self.decode_batch_size):
                chunk = latents[i : i + self.decode_batch_size].to(self.vae.dtype)
                out = self.vae.decode(chunk, return_dict=False)[0]
                images.append((out.float() / 2 + 0.5).clamp(0.0, 1.0).cpu())
        return torch.cat(images)

    def latent_shape(self) -> tuple[int, ...]:
        tokens = (self.latent_height // PATCH) * (self.latent_width // PATCH)
        return (tokens, self.latent_channels * PATCH * PATCH)

    def initial_noise(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal VAE-shaped latents ``(batch, C, H/f, W/f)`` packed to ``(batch, tokens,
        4C)`` (float32, CPU), in FluxPipeline's layout."""
        shape = (batch, self.latent_channels, self.latent_height, self.latent_width)
        return flux_common.pack_latents(torch.randn(shape, generator=generator, dtype=torch.float32), PATCH)

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        if self.lora:
            return (p for _, p in flux_lora.lora_parameters(self.transformer))
        return self.transformer.parameters()

    def trainable_module(self) -> Optional[torch.nn.Module]:
        return None if self.lora else self.transformer

    def trainable_tensors(self) -> dict[str, torch.Tensor]:
        if self.lora:
            return flux_lora.lora_tensors(self.transformer)
        return super().trainable_tensors()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Full fine-tuning: the transformer's state dict; LoRA: the adapter weights only."""
        if self.lora:
            return flux_lora.lora_state_dict(self.transformer)
        return {k: v.detach().to("cpu").clone() for k, v in self.transformer.state_dict().items()}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` published (exact keys and shapes; values cast
        to this policy's dtypes)."""
        if self.lora:
            flux_lora.load_lora_state_dict(self.transformer, state)
            return
        if flux_loading.is_lora_state(state):
            raise ValueError("FLUX policy: got LoRA adapter weights but this policy has no adapters; set model.lora_rank")
        check_state_dict(self.transformer.state_dict(), state, "FLUX policy: state dict does not match the transformer")
        self.transformer.load_state_dict(dict(state), strict=True)

    def train(self, mode: bool = True) -> "FluxPolicy":
        self.transformer.train(mode)
        return self

    def to(self, device: torch.device | str) -> "FluxPolicy":
        self._device = torch.device(device)
        if not self.shared_denoiser:  # a learner's module stays where its sharding put it
            self.transformer.to(self._device)
        if self.vae is not None:
            self.vae.to(self._device)
        if self.prompts is not None:
            self.prompts.to(self._device)
        self._img_ids = self._img_ids.to(self._device)
        return self

    @property
    def device(self) -> torch.device:
        return self._device


def load_trained_weights(policy: FluxPolicy, checkpoint: str | Path) -> FluxPolicy:
    """Load a learner checkpoint's trainable weights (``<checkpoint>/weights.safetensors`` or
    the file itself: the full transformer, or LoRA adapters for a ``model.lora_rank > 0``
    policy) into ``policy``; returns it."""
    policy.load_trainable_state_dict(read_weights(checkpoint))
    return policy


def shared_base(trained: FluxPolicy, model: ModelConfig) -> FluxPolicy:
    """The base model beside ``trained`` for test-time mixed-model sampling, sharing everything
    but the trained weights: with LoRA :meth:`FluxPolicy.base_view` (one copy of everything, the
    adapters switched off); with full fine-tuning a second transformer from ``model.path`` that
    shares the text encoders, prompt cache and VAE of ``trained``."""
    if trained.lora:
        return trained.base_view()
    base_transformer = flux_loading.load_transformer(model.path or flux_loading.DEFAULT_FLUX_MODEL, trained.compute_dtype)
    base_transformer.requires_grad_(False).eval().to(trained.device)
    return FluxPolicy(
        base_transformer, trained.vae, trained.prompts, vae_config=trained.vae_config, height=trained.height,
        width=trained.width,
        guidance=trained.guidance, compute_dtype=trained.compute_dtype,
        timestep_decimals=trained.timestep_decimals, decode_batch_size=trained.decode_batch_size,
    )


def load_for_mixed_sampling(
    model: ModelConfig, checkpoint: str | Path, device: torch.device | str = "cpu"
) -> tuple[FluxPolicy, FluxPolicy]:
    """``(trained, base)`` policies for test-time mixed-model sampling (docs/algorithm.md §10, with
    :func:`mixgrpo_ray.algo.rollout.sample_images`); the base is :func:`shared_base`."""
    trained = load_trained_weights(FluxPolicy.from_model_config(model, device=device, trainable=False), checkpoint)
    return trained, shared_base(trained, model)
