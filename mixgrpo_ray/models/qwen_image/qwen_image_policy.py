"""Qwen-Image (a ``QwenImagePipeline`` folder) as an RL policy: ``model.kind: qwen_image``.

What differs from FLUX (:class:`~mixgrpo_ray.models.flux.flux_policy.FluxPolicy`, whose weights,
LoRA, precision, offloading, prompt cache and packed 2x2 latent it shares):

* **Velocity.** ``transformer(x, timestep = sigma, encoder_hidden_states,
  encoder_hidden_states_mask, img_shapes)``: the Qwen2.5-VL conditioning of
  :class:`~mixgrpo_ray.models.qwen_image.qwen_image_folder.QwenImagePromptEncoder`, no pooled vector
  and no guidance embedding.
* **Guidance.** True classifier-free guidance (``sampling.cfg_scale``, Qwen's ``true_cfg_scale``)
  rescaled per latent token to the conditional velocity's norm, as QwenImagePipeline does
  (docs/algorithm.md §1.1 eq. (1b)).
* **Schedule.** The pipeline's own grid from the folder's scheduler config: the dynamic,
  resolution-dependent shift with ``shift_terminal`` (docs/algorithm.md §2.1 eq. (3b), (3c));
  ``sampling.shift`` is not used.
* **Decode.** Unpack, ``latents * std + mean`` per channel (the VAE config's ``latents_std`` /
  ``latents_mean``), the video VAE decodes it as one frame, ``[-1, 1] -> [0, 1]``.
* **LoRA.** Every dual-stream block's attention projections (image and text streams) and both
  streams' MLPs, the targets of verl's Flow-GRPO Qwen-Image recipe.
"""

from __future__ import annotations

from typing import Optional

import torch

from mixgrpo_ray.config import ModelConfig
from mixgrpo_ray.core.pipeline_schedules import pipeline_sigmas
from mixgrpo_ray.models.flux.flux_policy import PATCH, FluxPolicy
from mixgrpo_ray.models.policy import Cond
from mixgrpo_ray.models.qwen_image import qwen_image_folder

#: full-match pattern of the adapted module names (see the module docstring)
QWEN_IMAGE_LORA_TARGETS = (r"transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj"
                           r"|to_add_out)|img_mlp\.net\.(0\.proj|2)|txt_mlp\.net\.(0\.proj|2))")


class QwenImagePolicy(FluxPolicy):
    """A Qwen-Image text-to-image model behind the Policy interface (see the module docstring)."""

    name = "qwen_image"
    pipeline_schedule = True
    lora_targets = QWEN_IMAGE_LORA_TARGETS

    @staticmethod
    def vae_geometry(vae_config) -> tuple[int, int]:
        return 2 ** len(vae_config.temperal_downsample), int(vae_config.z_dim)

    @classmethod
    def from_model_config(cls, model: ModelConfig, device: torch.device | str = "cpu", trainable: bool = True,
                          denoiser: Optional[torch.nn.Module] = None) -> "QwenImagePolicy":
        """As :meth:`FluxPolicy.from_model_config`, for a QwenImagePipeline folder."""
        def encoder(c: qwen_image_folder.QwenImageComponents) -> qwen_image_folder.QwenImagePromptEncoder:
            return qwen_image_folder.QwenImagePromptEncoder(c.tokenizer, c.text_encoder,
                                                            max_sequence_length=model.max_sequence_length,
                                                            cache_size=int(model.prompt_cache_size))

        return cls.from_pipeline_folder(model, qwen_image_folder, encoder, device, trainable, denoiser)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.latent_shape():
            raise ValueError(f"Qwen-Image policy: latents must be (batch, {', '.join(map(str, self.latent_shape()))}), "
                             f"got {tuple(x.shape)}")
        timestep = self.model_timestep(sigma)
        shapes = [[(1, self.latent_height // PATCH, self.latent_width // PATCH)]] * x.shape[0]
        with self._adapters(), self._autocast():  # inputs in float32, as FLUX's: autocast runs the compute dtype
            out = self.transformer(
                hidden_states=x.to(self._device, torch.float32), timestep=timestep,
                encoder_hidden_states=cond["encoder_hidden_states"].to(self._device),
                encoder_hidden_states_mask=cond["encoder_hidden_states_mask"].to(self._device), img_shapes=shapes,
                return_dict=False,
            )[0]
        return out.float()

    def guide(self, v_c: torch.Tensor, v_u: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """QwenImagePipeline's guidance: ``v_u + s (v_c - v_u)`` rescaled, per latent token, to the
        norm of ``v_c`` (docs/algorithm.md §1.1 eq. (1b))."""
        combined = v_u + scale * (v_c - v_u)
        return combined * (v_c.norm(dim=-1, keepdim=True) / combined.norm(dim=-1, keepdim=True))

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        self._frozen_parts("decode called", self.vae)
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=self._device).view(1, -1, 1, 1)
        std = torch.tensor(cfg.latents_std, dtype=torch.float32, device=self._device).view(1, -1, 1, 1)
        latents = (self.unpack(x.to(self._device, torch.float32)) * std + mean).unsqueeze(2)  # one frame
        images = []
        with self.frozen_on_device(self.vae):
            for i in range(0, latents.shape[0], self.decode_batch_size):
                chunk = latents[i : i + self.decode_batch_size].to(self.vae.dtype)
                out = self.vae.decode(chunk, return_dict=False)[0][:, :, 0]
                images.append((out.float() / 2 + 0.5).clamp(0.0, 1.0).cpu())
        return torch.cat(images)

    def sigmas(self, num_steps: int, shift: float) -> torch.Tensor:
        return pipeline_sigmas("qwen_image", self.scheduler_config, num_steps, self.latent_shape()[0])
