"""A tiny Qwen2.5-VL checkpoint folder, built offline, for tests of the in-process UnifiedReward
judge.

The folder has what a real ``Qwen2.5-VL`` / ``UnifiedReward-qwen`` folder has - ``config.json`` +
safetensors weights, ``generation_config.json``, a byte-level BPE tokenizer with the Qwen special
tokens and a chat template, ``preprocessor_config.json`` for ``Qwen2VLImageProcessor`` - at tiny
sizes: text hidden 32, 2 layers, 2 heads (head dim 16, mRoPE sections [2, 3, 3]); vision depth 2,
width 32, patch 14, spatial merge 2. The vocabulary is the 256 byte-level symbols followed by the
special tokens, with no merges.

``scripted_answer`` turns the random model into a deterministic bigram machine: attention and MLP
outputs are zeroed (the residual stream at a position is that token's embedding), the tokens of
``"\\n" + answer`` get orthogonal embeddings and the LM head maps each to the next one, the last
to ``<|im_end|>``. Greedy decoding after the chat template's trailing ``"assistant\\n"`` then emits
exactly ``answer`` and stops.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

try:
    from transformers import Qwen2VLImageProcessorPil as ImageProcessor
except ImportError:  # transformers 4.x: the PIL implementation is the default class
    from transformers import Qwen2VLImageProcessor as ImageProcessor

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

#: Qwen2-VL style chat template: default system turn, image parts as vision-start/pad/end
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: image processor bounds: a 56 x 56 image is a 4 x 4 patch grid, 4 merged image tokens
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112


def byte_level_symbols() -> list[str]:
    """The 256 printable characters byte-level BPE uses for bytes 0..255, in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    codes, extra = {}, 0
    for b in range(256):
        if b in printable:
            codes[b] = b
        else:
            codes[b] = 256 + extra
            extra += 1
    return [chr(codes[b]) for b in range(256)]


def tiny_tokenizer() -> Qwen2Tokenizer:
    """Byte-level Qwen2 tokenizer: ids 0..255 the bytes, then the special tokens."""
    vocab = {s: i for i, s in enumerate(byte_level_symbols())}
    for tok in SPECIALS:
        vocab[tok] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_config(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLConfig:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    text = dict(
        vocab_size=len(tokenizer) + 4,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        rope_theta=10000.0,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=32,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1],
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def _script(model: Qwen2_5_VLForConditionalGeneration, tokenizer: Qwen2Tokenizer, answer: str) -> None:
    chain = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("\n" + answer))
    if len(set(chain)) != len(chain) or len(chain) > model.config.text_config.hidden_size:
        raise ValueError(f"scripted answer {answer!r} needs distinct tokens, at most hidden_size of them")
    text_model = model.model.language_model
    hidden = model.config.text_config.hidden_size
    with torch.no_grad():
        for layer in text_model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        for k, (tok, nxt) in enumerate(zip(chain, chain[1:] + [eos])):
            basis = torch.zeros(hidden)
            basis[k] = 1.0
            text_model.embed_tokens.weight[tok] = basis
            model.lm_head.weight[nxt] = 20.0 * basis


def write_tiny_qwen(folder: Path, scripted_answer: str | None = None, seed: int = 0) -> Path:
    """Save a tiny Qwen2.5-VL judge folder (see module docstring) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(tokenizer)).eval()
    if scripted_answer is not None:
        _script(model, tokenizer, scripted_answer)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config = GenerationConfig(
        eos_token_id=[eos, tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,  # as shipped by Qwen; the judge must force greedy decoding itself
        temperature=0.7,
        top_p=0.8,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14, merge_size=2, temporal_patch_size=2).save_pretrained(folder)
    return folder
