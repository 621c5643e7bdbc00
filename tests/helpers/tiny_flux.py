"""Tiny random FLUX components in the FluxPipeline folder layout, built offline, for policy tests.

Sizes: a 2-level VAE (scale factor 2) with 4 latent channels, so a 16x16 image has an 8x8x4 latent
packed into 16 tokens of 16 channels; a FLUX transformer of width 32 (one double-stream and one
single-stream block, guidance embedding on); a 1-layer CLIP text model of width 24 with the tiny
CLIP BPE tokenizer of ``tiny_clip``; a 1-layer T5 encoder of width 16 with a word-level Unigram
tokenizer written as ``tokenizer.json`` (no sentencepiece model needed).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiny_clip import EOT, SOT, tiny_vocab, write_tiny_tokenizer

#: the Unigram vocabulary of the tiny T5 tokenizer (after <pad>, </s>, <unk>)
T5_PIECES = ["▁", "▁a", "▁red", "▁blue", "▁cat", "▁dog", "▁on", "▁the", "▁mat", "▁photo", "▁of",
             "a", "b", "c", "d", "e", "o", "t", "r", "s"]
IMAGE_SIZE = 16
LATENT_CHANNELS = 4
T5_WIDTH = 16
CLIP_WIDTH = 24


def _randomize(module: torch.nn.Module, gen: torch.Generator, std: float) -> None:
    """Gaussian weights (``1 + noise`` for 1-D ``weight`` params) so outputs depend on inputs."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * std
            if p.ndim == 1 and name.endswith("weight"):
                noise += 1.0
            p.copy_(noise)


def write_t5_tokenizer(folder: Path) -> None:
    """The product's offline T5 fast tokenizer (``flux_slice.write_t5_tokenizer``) over ``T5_PIECES``."""
    from mixgrpo_ray.models.flux.flux_slice import write_t5_tokenizer as write

    write(folder, T5_PIECES)


def build_tiny_flux(root: str | Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """Write ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``text_encoder_2/``,
    ``tokenizer_2/`` under ``root`` (random weights from ``seed``); returns ``root``."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    root = Path(root)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_WIDTH,
            pooled_projection_dim=CLIP_WIDTH, guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
        )
        _randomize(transformer, gen, 0.1)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
            scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
        )
        vocab = tiny_vocab()
        clip = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=CLIP_WIDTH, intermediate_size=48, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=vocab[SOT], eos_token_id=vocab[EOT], pad_token_id=vocab[EOT],
        ))
        _randomize(clip, gen, 0.2)
        t5 = T5EncoderModel(T5Config(
            vocab_size=3 + len(T5_PIECES), d_model=T5_WIDTH, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", decoder_start_token_id=0,
        ))
    transformer.save_pretrained(str(root / "transformer"))
    vae.save_pretrained(str(root / "vae"))
    clip.save_pretrained(str(root / "text_encoder"))
    t5.save_pretrained(str(root / "text_encoder_2"))
    tok = write_tiny_tokenizer(root / "tokenizer")
    tok.model_max_length = 77
    tok.save_pretrained(str(root / "tokenizer"))
    write_t5_tokenizer(root / "tokenizer_2")
    return root


def write_pipeline_index(root: str | Path, shift: float = 3.0) -> Path:
    """Complete the folder ``build_tiny_flux`` wrote into one ``FluxPipeline.from_pretrained``
    loads: ``scheduler/`` (flow-matching Euler with a fixed ``shift``, the schedule the policy
    samples with) and ``model_index.json``; returns ``root``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from mixgrpo_ray.models.flux.flux_slice import write_model_index

    root = Path(root)
    FlowMatchEulerDiscreteScheduler(shift=shift).save_pretrained(str(root / "scheduler"))
    write_model_index(root)
    return root
