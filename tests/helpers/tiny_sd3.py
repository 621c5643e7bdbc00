"""A tiny random StableDiffusion3Pipeline folder, built offline: an SD3 transformer of width 16
(2 joint blocks, patch 2), two 1-layer CLIP text models with projections (widths 8 and 12,
projections 8 and 8: a 16-wide pooled vector) sharing ``tiny_clip``'s tokenizer, a 1-layer T5 of
width 24 with ``tiny_flux``'s tokenizer, a 2-level VAE (scale 2, 4 latent channels), and
SD3.5's scheduler (flow-matching Euler, shift 3)."""

from __future__ import annotations

from pathlib import Path

import torch

from tiny_clip import EOT, SOT, tiny_vocab, write_tiny_tokenizer
from mixgrpo_ray.models.flux.flux_slice import write_model_index
from tiny_flux import T5_PIECES, _randomize, write_t5_tokenizer

IMAGE_SIZE = 16  # an 8x8x4 latent: 16 patches of 2x2
T5_WIDTH = 24


def build_tiny_sd3(root: str | Path, seed: int = 0, shift: float = 3.0) -> Path:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    root = Path(root)
    gen = torch.Generator().manual_seed(seed)
    vocab = tiny_vocab()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=IMAGE_SIZE // 2, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=T5_WIDTH, caption_projection_dim=16, pooled_projection_dim=16,
            out_channels=4, pos_embed_max_size=16,
        )
        _randomize(transformer, gen, 0.1)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
            scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
        )
        clips = []
        for width in (8, 12):
            clip = CLIPTextModelWithProjection(CLIPTextConfig(
                vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=8,
                bos_token_id=vocab[SOT], eos_token_id=vocab[EOT], pad_token_id=vocab[EOT],
            ))
            _randomize(clip, gen, 0.2)
            clips.append(clip)
        t5 = T5EncoderModel(T5Config(
            vocab_size=3 + len(T5_PIECES), d_model=T5_WIDTH, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", decoder_start_token_id=0,
        ))
    transformer.save_pretrained(str(root / "transformer"))
    vae.save_pretrained(str(root / "vae"))
    clips[0].save_pretrained(str(root / "text_encoder"))
    clips[1].save_pretrained(str(root / "text_encoder_2"))
    t5.save_pretrained(str(root / "text_encoder_3"))
    for sub in ("tokenizer", "tokenizer_2"):
        tok = write_tiny_tokenizer(root / sub)
        tok.model_max_length = 77
        tok.save_pretrained(str(root / sub))
    write_t5_tokenizer(root / "tokenizer_3")
    FlowMatchEulerDiscreteScheduler(shift=shift).save_pretrained(str(root / "scheduler"))
    write_model_index(root, "StableDiffusion3Pipeline", {
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "transformer": ["diffusers", "SD3Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "text_encoder_3": ["transformers", "T5EncoderModel"], "tokenizer_3": ["transformers", "T5TokenizerFast"],
    })
    return root
