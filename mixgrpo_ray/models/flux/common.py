"""Calling a diffusers ``FluxTransformer2DModel`` the way the FLUX pipeline does, for any policy.

FLUX works on *packed* latents: a ``(batch, C, H, W)`` latent image is cut into ``p x p``
patches, each patch becoming one token of ``C * p * p`` channels, in row-major patch order
(``FluxPipeline._pack_latents`` with ``p = 2``). Every image token carries a rotary position
id ``(0, row, col)`` of its patch, every text token the id ``(0, 0, 0)``. The transformer is
conditioned on ``timestep = sigma`` in ``[0, 1]`` (it multiplies by 1000 itself), on pooled text
projections and, for guidance-distilled checkpoints such as FLUX.1-dev, on a guidance scale.

These helpers are shared by the embedded tiny policy (pixels, ``p = 8``) and the real FLUX
policy (VAE latents, ``p = 2``).
"""

from __future__ import annotations

import torch


def pack_latents(latents: torch.Tensor, patch: int) -> torch.Tensor:
    """``(batch, C, H, W)`` -> ``(batch, (H/p)*(W/p), C*p*p)`` tokens, FLUX's patch layout."""
    batch, channels, height, width = latents.shape
    if height % patch or width % patch:
        raise ValueError(f"latent size {height}x{width} is not divisible by the patch size {patch}")
    x = latents.view(batch, channels, height // patch, patch, width // patch, patch)
    x = x.permute(0, 2, 4, 1, 3, 5)
    return x.reshape(batch, (height // patch) * (width // patch), channels * patch * patch)


def unpack_latents(tokens: torch.Tensor, channels: int, height: int, width: int, patch: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: tokens -> ``(batch, channels, height, width)``."""
    batch = tokens.shape[0]
    x = tokens.reshape(batch, height // patch, width // patch, channels, patch, patch)
    x = x.permute(0, 3, 1, 4, 2, 5)
    return x.reshape(batch, channels, height, width)


def image_ids(rows: int, cols: int, device: torch.device | str | None = None, dtype=torch.float32) -> torch.Tensor:
    """Rotary position ids ``(rows*cols, 3)`` of image tokens: ``(0, row, col)`` row-major."""
    ids = torch.zeros(rows, cols, 3, dtype=dtype, device=device)
    ids[..., 1] = torch.arange(rows, dtype=dtype, device=device)[:, None]
    ids[..., 2] = torch.arange(cols, dtype=dtype, device=device)[None, :]
    return ids.reshape(rows * cols, 3)


def text_ids(seq_len: int, device: torch.device | str | None = None, dtype=torch.float32) -> torch.Tensor:
    """Rotary position ids ``(seq_len, 3)`` of text tokens: all zeros, as in FLUX."""
    return torch.zeros(seq_len, 3, dtype=dtype, device=device)


def flux_forward(
    transformer: torch.nn.Module,
    tokens: torch.Tensor,
    sigma: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    pooled_projections: torch.Tensor,
    img_ids: torch.Tensor,
    txt_ids: torch.Tensor,
    guidance: float | torch.Tensor | None = None,
    timestep_decimals: int | None = None,
) -> torch.Tensor:
    """The transformer's output for packed ``tokens`` at noise level ``sigma`` ``(batch,)``.

    ``guidance`` is required exactly when the transformer has guidance embeddings
    (``config.guidance_embeds``); a float is broadcast over the batch. ``timestep_decimals``
    (optional) rounds the conditioning sigma down to that many decimals, as the MixGRPO
    reference code feeds FLUX; the caller's step math keeps the exact sigma. The output has the
    tokens' batch and sequence shape and the transformer's dtype.
    """
    batch = tokens.shape[0]
    if sigma.ndim != 1 or sigma.shape[0] != batch:
        raise ValueError(f"sigma must have shape ({batch},), got {tuple(sigma.shape)}")
    dtype = tokens.dtype
    timestep = sigma.to(device=tokens.device, dtype=torch.float32)
    if timestep_decimals is not None:
        scale = 10.0**timestep_decimals
        timestep = torch.floor(timestep * scale) / scale
    has_guidance = bool(getattr(transformer.config, "guidance_embeds", False))
    guidance_t = None
    if has_guidance:
        if guidance is None:
            raise ValueError("this transformer has guidance embeddings: pass a guidance scale")
        guidance_t = torch.as_tensor(guidance, dtype=torch.float32, device=tokens.device).expand(batch)
        guidance_t = guidance_t.to(dtype)
    elif guidance is not None:
        raise ValueError("this transformer has no guidance embeddings: guidance must be None")
    out = transformer(
        hidden_states=tokens,
        encoder_hidden_states=encoder_hidden_states.to(dtype),
        pooled_projections=pooled_projections.to(dtype),
        timestep=timestep.to(dtype),
        img_ids=img_ids,
        txt_ids=txt_ids,
        guidance=guidance_t,
        return_dict=False,
    )[0]
    return out
