"""Stable Diffusion 3 / 3.5 (a ``StableDiffusion3Pipeline`` folder) as an RL policy: ``model.kind: sd3``.

What differs from FLUX (:class:`~mixgrpo_ray.models.flux.flux_policy.FluxPolicy`, whose weights,
LoRA, precision, offloading and prompt cache it shares):

* **Latent.** The VAE latent image ``(C, H/8, W/8)`` itself (the transformer patchifies it), drawn
  as ``StableDiffusion3Pipeline.prepare_latents`` does.
* **Velocity.** ``transformer(x, timestep = 1000 sigma, prompt_embeds, pooled)``: CLIP-L + CLIP-G +
  T5 conditioning (:class:`~mixgrpo_ray.models.sd3.sd3_folder.SD3PromptEncoder`). SD3 has no
  guidance embedding: it samples with true classifier-free guidance (``sampling.cfg_scale``,
  docs/algorithm.md §1.1).
* **Schedule.** The pipeline's own grid from the folder's scheduler config (docs/algorithm.md
  §2.1 eq. (3a)), not MixGRPO's eq. (4): ``sampling.shift`` is not used.
* **LoRA.** Every joint block's attention projections, image and text streams (``to_q``, ``to_k``,
  ``to_v``, ``to_out.0``, ``add_q_proj``, ``add_k_proj``, ``add_v_proj``, ``to_add_out``), the
  targets of Flow-GRPO's SD3.5 runs.
"""

from __future__ import annotations

from typing import Optional

import torch

from mixgrpo_ray.config import ModelConfig
from mixgrpo_ray.core.pipeline_schedules import pipeline_sigmas
from mixgrpo_ray.models.flux.flux_policy import FluxPolicy
from mixgrpo_ray.models.policy import Cond, Policy
from mixgrpo_ray.models.sd3 import sd3_folder

#: full-match pattern of the adapted module names (see the module docstring)
SD3_LORA_TARGETS = r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
PATCH = 2  # SD3's transformer patch size (the sequence length of the dynamic shift)


class SD3Policy(FluxPolicy):
    """An SD3 text-to-image model behind the Policy interface (see the module docstring)."""

    name = "sd3"
    pipeline_schedule = True
    lora_targets = SD3_LORA_TARGETS

    @classmethod
    def from_model_config(cls, model: ModelConfig, device: torch.device | str = "cpu", trainable: bool = True,
                          denoiser: Optional[torch.nn.Module] = None) -> "SD3Policy":
        """As :meth:`FluxPolicy.from_model_config`, for a StableDiffusion3Pipeline folder."""
        def encoder(c: sd3_folder.SD3Components) -> sd3_folder.SD3PromptEncoder:
            return sd3_folder.SD3PromptEncoder(c.tokenizers, c.encoders, max_sequence_length=model.max_sequence_length,
                                               cache_size=int(model.prompt_cache_size))

        return cls.from_pipeline_folder(model, sd3_folder, encoder, device, trainable, denoiser)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.latent_shape():
            raise ValueError(f"SD3 policy: latents must be (batch, {', '.join(map(str, self.latent_shape()))}), "
                             f"got {tuple(x.shape)}")
        timestep = self.model_timestep(sigma)
        with self._adapters(), self._autocast():  # inputs in float32, as FLUX's: autocast runs the compute dtype
            out = self.transformer(
                hidden_states=x.to(self._device, torch.float32), timestep=timestep * 1000.0,
                encoder_hidden_states=cond["encoder_hidden_states"].to(self._device),
                pooled_projections=cond["pooled_projections"].to(self._device), return_dict=False,
            )[0]
        return out.float()

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        return x  # SD3's latent is the VAE's

    def latent_shape(self) -> tuple[int, ...]:
        return (self.latent_channels, self.latent_height, self.latent_width)

    def initial_noise(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return Policy.initial_noise(self, batch, generator)

    def sigmas(self, num_steps: int, shift: float) -> torch.Tensor:
        tokens = (self.latent_height // PATCH) * (self.latent_width // PATCH)
        return pipeline_sigmas("sd3", self.scheduler_config, num_steps, tokens)
