"""A tiny random QwenImagePipeline folder, built offline: a Qwen-Image transformer of width 32
(2 dual-stream blocks, patch 2, 16 packed channels), ``tiny_qwen``'s Qwen2.5-VL text encoder (width
32) and byte-level tokenizer, a 1-downsample Qwen-Image VAE (scale 2, 4 latent channels, its own
latent mean and std) and Qwen-Image's scheduler (flow-matching Euler with the exponential dynamic
shift and shift_terminal 0.02)."""

from __future__ import annotations

from pathlib import Path

import torch

from mixgrpo_ray.models.flux.flux_slice import write_model_index
from tiny_flux import _randomize
from tiny_qwen import tiny_config, tiny_tokenizer

IMAGE_SIZE = 16  # an 8x8x4 latent: 16 packed tokens of 16 channels
#: Qwen/Qwen-Image's scheduler_config.json
QWEN_IMAGE_SCHEDULER = dict(
    base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, num_train_timesteps=1000,
    shift=1.0, shift_terminal=0.02, stochastic_sampling=False, time_shift_type="exponential",
    use_beta_sigmas=False, use_dynamic_shifting=True, use_exponential_sigmas=False, use_karras_sigmas=False,
)


def build_tiny_qwen_image(root: str | Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    root = Path(root)
    gen = torch.Generator().manual_seed(seed)
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = Qwen2_5_VLForConditionalGeneration(tiny_config(tokenizer)).eval()
        _randomize(encoder, gen, 0.2)
        transformer = QwenImageTransformer2DModel(
            patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=32, axes_dims_rope=(8, 4, 4),
        )
        _randomize(transformer, gen, 0.1)
        vae = AutoencoderKLQwenImage(
            base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
            latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0],
        )
    transformer.save_pretrained(str(root / "transformer"))
    vae.save_pretrained(str(root / "vae"))
    encoder.save_pretrained(str(root / "text_encoder"))
    tokenizer.save_pretrained(str(root / "tokenizer"))
    FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER).save_pretrained(str(root / "scheduler"))
    write_model_index(root, "QwenImagePipeline", {
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "QwenImageTransformer2DModel"], "vae": ["diffusers", "AutoencoderKLQwenImage"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"], "tokenizer": ["transformers", "Qwen2Tokenizer"],
    }, optional=())
    return root
