"""A FLUX.1-dev slice at the model's real width, written as a diffusers ``FluxPipeline`` folder.

Every component has FLUX.1-dev's published shapes except its depth (random weights, from a seed):

* ``transformer/``: FLUX.1-dev's config (width 3072 = 24 heads x 128, T5 context 4096, pooled CLIP
  768, RoPE axes 16/56/56, 64 packed = 16 latent channels, guidance embedding) with ``num_layers``
  double-stream and ``num_single_layers`` single-stream blocks (19 and 38 in the real model;
  1 + 1 is ~0.5 B parameters);
* ``text_encoder_2/``: a T5-XXL encoder (d_model 4096, 64 heads of 64, gated-GELU FFN 10240) with
  ``t5_layers`` layers (24 in the real model);
* ``text_encoder/``: a CLIP-L text model (hidden 768, 12 heads, MLP 3072, 77 positions) with
  ``clip_layers`` layers (12 in the real model);
* ``vae/``: FLUX.1-dev's VAE config, whole (16 latent channels, scale factor 8, 83.8 M parameters);
* ``tokenizer/``, ``tokenizer_2/``: built offline, character-level (a byte-level CLIP BPE without
  merges, a T5 Unigram over characters), so the text encoders' vocabularies are small (the
  embedding tables are the only shapes that differ from the real model's beside depth);
* ``scheduler/`` and ``model_index.json``: FLUX.1-dev's flow-matching scheduler, so
  ``FluxPipeline.from_pretrained`` loads the folder.

For tests at real width and for checking a cluster (memory, shapes, weight sync) before
downloading 30 GB::

    python -m mixgrpo_ray.models.flux.flux_slice OUT [--double 1] [--single 1] [--t5-layers 1]
        [--clip-layers 1] [--seed 0] [--dtype bf16]
    mixgrpo-ray train --config flux model.path=OUT model.height=64 model.width=64 ...
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Optional

import torch

#: FLUX.1-dev's transformer/config.json (black-forest-labs/FLUX.1-dev), depth aside
FLUX_DEV_TRANSFORMER = dict(patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38,
                            attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                            pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
#: FLUX.1-dev's vae/config.json
FLUX_DEV_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=1024,
                    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
                    force_upcast=True)
#: T5-XXL v1.1 encoder (text_encoder_2/config.json), depth and vocabulary aside
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, relative_attention_num_buckets=32,
              relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
#: CLIP ViT-L/14 text model (text_encoder/config.json), depth and vocabulary aside
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
#: FLUX.1-dev's scheduler/scheduler_config.json
FLUX_DEV_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                          base_image_seq_len=256, max_image_seq_len=4096)
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
#: the characters of the T5 tokenizer (anything else is <unk>)
T5_CHARACTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()/&"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def byte_symbols() -> list[str]:
    """Byte-level BPE's 256 printable stand-ins, in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = [256 + i for i in range(256 - len(printable))]
    missing = [b for b in range(256) if b not in printable]
    return [chr(c) for c in printable] + [chr(c) for c, _ in zip(extra, missing)]


def write_clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer over single bytes (no merges): ids as in CLIP's layout, SOT/EOT last."""
    from transformers import CLIPTokenizer

    symbols = byte_symbols()
    vocab = {t: i for i, t in enumerate(symbols + [s + "</w>" for s in symbols] + [SOT, EOT])}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)
    tok.save_pretrained(str(folder))
    return tok


def write_t5_tokenizer(folder: Path, pieces: list[str]):
    """A T5 fast tokenizer (Unigram over ``pieces``; <pad> 0, </s> 1, <unk> 2; T5's Metaspace
    pre-tokenizer, ``</s>`` appended) built with the ``tokenizers`` library, no sentencepiece file."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(w, -1.0 - 0.1 * i) for i, w in enumerate(pieces)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = T5TokenizerFast(tokenizer_object=tok, extra_ids=0, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(folder))
    return fast


def _save(module: torch.nn.Module, folder: Path, dtype: Optional[torch.dtype]) -> int:
    count = sum(p.numel() for p in module.parameters())
    if dtype is None:  # built on the meta device: its config only
        (module.config.save_pretrained if hasattr(module.config, "save_pretrained") else module.save_config)(str(folder))
    else:
        module.to(dtype).save_pretrained(str(folder))
    return count


def build_flux_slice(root: "str | Path", *, double: int = 1, single: int = 1, t5_layers: int = 1,
                     clip_layers: int = 1, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                     weights: bool = True) -> dict[str, int]:
    """Write the slice's FluxPipeline folder under ``root``; returns each component's parameters.
    ``weights=False``: the components are made on the meta device and only their configs (and
    the tokenizers) are written, what ``mixgrpo-ray plan`` reads to size the slice, in a second."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clip_tok = write_clip_tokenizer(root / "tokenizer")
    t5_pieces = ["▁"] + ["▁" + c for c in T5_CHARACTERS] + list(T5_CHARACTERS)
    write_t5_tokenizer(root / "tokenizer_2", t5_pieces)
    counts = {}
    dtype = dtype if weights else None
    with torch.random.fork_rng(devices=[]), torch.device("cpu" if weights else "meta"):
        torch.manual_seed(seed)
        config = dict(FLUX_DEV_TRANSFORMER, num_layers=double, num_single_layers=single)
        counts["transformer"] = _save(FluxTransformer2DModel(**config), root / "transformer", dtype)
        t5 = T5EncoderModel(T5Config(**dict(T5_XXL, num_layers=t5_layers, vocab_size=3 + len(t5_pieces))))
        counts["text_encoder_2"] = _save(t5, root / "text_encoder_2", dtype)
        del t5
        vocab = clip_tok.get_vocab()
        clip = CLIPTextModel(CLIPTextConfig(**dict(CLIP_L, num_hidden_layers=clip_layers, vocab_size=len(vocab),
                                                   bos_token_id=vocab[SOT], eos_token_id=vocab[EOT],
                                                   pad_token_id=vocab[EOT])))
        counts["text_encoder"] = _save(clip, root / "text_encoder", dtype)
        counts["vae"] = _save(AutoencoderKL(**FLUX_DEV_VAE), root / "vae", dtype)
    FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER).save_pretrained(str(root / "scheduler"))
    write_model_index(root)
    return counts


FLUX_COMPONENTS = {
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "text_encoder_2": ["transformers", "T5EncoderModel"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
}


def write_model_index(root: Path, pipeline: str = "FluxPipeline", components: Optional[dict] = None,
                      optional: tuple = ("image_encoder", "feature_extractor")) -> None:
    """``model_index.json`` of a ``pipeline`` folder (what ``<pipeline>.from_pretrained`` reads):
    ``components`` (default FLUX's) as ``name: [library, class]``, and the pipeline's ``optional``
    components left empty."""
    import diffusers

    index = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__,
             **(FLUX_COMPONENTS if components is None else components), **{name: [None, None] for name in optional}}
    (root / "model_index.json").write_text(json.dumps(index, indent=2))


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mixgrpo_ray.models.flux.flux_slice",
                                 description="Write a FLUX.1-dev slice at the real width (random weights) "
                                             "as a FluxPipeline folder.")
    ap.add_argument("out", help="a new (or empty) folder")
    ap.add_argument("--double", type=int, default=1, help="double-stream blocks (FLUX.1-dev: 19)")
    ap.add_argument("--single", type=int, default=1, help="single-stream blocks (FLUX.1-dev: 38)")
    ap.add_argument("--t5-layers", type=int, default=1, help="T5 encoder layers (T5-XXL: 24)")
    ap.add_argument("--clip-layers", type=int, default=1, help="CLIP text layers (CLIP-L: 12)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype of the written weights")
    args = ap.parse_args(argv)
    out = Path(args.out)
    layers = {"--double": args.double, "--single": args.single, "--t5-layers": args.t5_layers,
              "--clip-layers": args.clip_layers}
    bad = [f"{k} {v}" for k, v in layers.items() if not 0 <= v <= 64] + (
        [] if args.double + args.single >= 1 else ["--double 0 --single 0"])
    if bad:
        print(f"error: {', '.join(bad)}: give 0-64 layers each and at least one transformer block", file=sys.stderr)
        return 2
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"error: {out} exists and is not an empty folder: name a new one", file=sys.stderr)
        return 2
    partial = out.with_name(out.name + ".partial")  # renamed when complete: nothing half-written
    shutil.rmtree(partial, ignore_errors=True)
    counts = build_flux_slice(partial, double=args.double, single=args.single, t5_layers=args.t5_layers,
                              clip_layers=args.clip_layers, seed=args.seed, dtype=DTYPES[args.dtype])
    if out.exists():
        out.rmdir()
    partial.rename(out)
    for name, n in counts.items():
        print(f"{name:16s} {n / 1e6:10.1f} M parameters")
    print(f"wrote {out} (FluxPipeline folder, {args.dtype}): use it as model.path with --config flux")
    return 0


if __name__ == "__main__":
    sys.exit(main())
