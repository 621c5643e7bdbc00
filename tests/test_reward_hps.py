"""HPS v2.1 on transformers: the open_clip -> CLIPModel conversion reproduces open_clip's own
forward pass (restated here independently), the HPS preprocessing matches PIL + zero pad, and
the reward scores are the open_clip cosine, batched or one by one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mixgrpo_ray.rewards.clip_common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImagePreprocess
from mixgrpo_ray.rewards.hps import VIT_H_14_CONFIG, HPSv21Reward
from mixgrpo_ray.rewards.openclip_convert import clip_model_from_open_clip, convert_open_clip_state_dict
from mixgrpo_ray.rewards.registry import build_reward
from tiny_clip import SOT, EOT, tiny_clip_config, tiny_vocab, write_tiny_tokenizer

HEADS = 4  # tiny_clip_config uses 4 heads in both towers


def open_clip_state_dict(
    *, embed: int, v_width: int, v_layers: int, patch: int, image_size: int,
    vocab: int, ctx: int, t_width: int, t_layers: int, device: str = "cpu", seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random tensors under open_clip's CLIP key layout (MLP ratio 4, no biases on conv/projections)."""
    gen = torch.Generator().manual_seed(seed) if device == "cpu" else None

    def rnd(*shape, ln=False):
        if device == "meta":
            return torch.empty(shape, device="meta")
        t = torch.randn(shape, generator=gen) * 0.2
        return t + 1.0 if ln else t

    sd: dict[str, torch.Tensor] = {}

    def tower(prefix: str, width: int, layers: int) -> None:
        for i in range(layers):
            p = f"{prefix}transformer.resblocks.{i}."
            sd[p + "ln_1.weight"], sd[p + "ln_1.bias"] = rnd(width, ln=True), rnd(width)
            sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"] = rnd(3 * width, width), rnd(3 * width)
            sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"] = rnd(width, width), rnd(width)
            sd[p + "ln_2.weight"], sd[p + "ln_2.bias"] = rnd(width, ln=True), rnd(width)
            sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = rnd(4 * width, width), rnd(4 * width)
            sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = rnd(width, 4 * width), rnd(width)

    grid = image_size // patch
    sd["visual.class_embedding"] = rnd(v_width)
    sd["visual.positional_embedding"] = rnd(grid * grid + 1, v_width)
    sd["visual.conv1.weight"] = rnd(v_width, 3, patch, patch)
    sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"] = rnd(v_width, ln=True), rnd(v_width)
    tower("visual.", v_width, v_layers)
    sd["visual.ln_post.weight"], sd["visual.ln_post.bias"] = rnd(v_width, ln=True), rnd(v_width)
    sd["visual.proj"] = rnd(v_width, embed)
    sd["token_embedding.weight"] = rnd(vocab, t_width)
    sd["positional_embedding"] = rnd(ctx, t_width)
    tower("", t_width, t_layers)
    sd["ln_final.weight"], sd["ln_final.bias"] = rnd(t_width, ln=True), rnd(t_width)
    sd["text_projection"] = rnd(t_width, embed)
    sd["logit_scale"] = torch.tensor(4.6052) if device == "cpu" else torch.empty((), device="meta")
    return sd


# ---- open_clip's forward pass, restated directly on the state dict --------------------------

def _block(x: torch.Tensor, sd: dict, p: str, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    width = x.shape[-1]
    h = F.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], eps=1e-5).transpose(0, 1)
    attn, _ = F.multi_head_attention_forward(
        h, h, h, width, heads, sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"], None, None, False,
        0.0, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"], training=False, need_weights=False,
        attn_mask=mask,
    )
    x = x + attn.transpose(0, 1)
    h = F.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], eps=1e-5)
    h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])),
                 sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    return x + h


def open_clip_image_features(sd: dict, pixels: torch.Tensor, heads: int, layers: int) -> torch.Tensor:
    w = sd["visual.conv1.weight"]
    x = F.conv2d(pixels, w, stride=w.shape[-1]).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    width = x.shape[-1]
    x = F.layer_norm(x, (width,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"], eps=1e-5)
    for i in range(layers):
        x = _block(x, sd, f"visual.transformer.resblocks.{i}.", heads, None)
    x = F.layer_norm(x[:, 0], (width,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"], eps=1e-5)
    return x @ sd["visual.proj"]


def open_clip_text_features(sd: dict, ids: torch.Tensor, heads: int, layers: int) -> torch.Tensor:
    ctx = ids.shape[1]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:ctx]
    mask = torch.full((ctx, ctx), float("-inf")).triu_(1)
    for i in range(layers):
        x = _block(x, sd, f"transformer.resblocks.{i}.", heads, mask)
    x = F.layer_norm(x, (x.shape[-1],), sd["ln_final.weight"], sd["ln_final.bias"], eps=1e-5)
    return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ sd["text_projection"]


def open_clip_tokens(tokenizer, texts: list[str], ctx: int = 77) -> torch.Tensor:
    """open_clip's token layout: [SOT] + BPE + [EOT], cut to ``ctx`` with EOT forced last, zero-padded."""
    vocab = tiny_vocab()
    out = torch.zeros(len(texts), ctx, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [vocab[SOT]] + tokenizer(text, add_special_tokens=False)["input_ids"] + [vocab[EOT]]
        ids = ids[:ctx]
        ids[-1] = vocab[EOT]
        out[row, : len(ids)] = torch.tensor(ids)
    return out


# ---- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hps_files(tmp_path_factory):
    """An fp16 tiny open_clip checkpoint saved as HPS does, a tokenizer folder, the tiny config."""
    root = tmp_path_factory.mktemp("hps")
    config = tiny_clip_config(image_size=28, patch_size=7)
    v, t = config.vision_config, config.text_config
    sd = open_clip_state_dict(
        embed=config.projection_dim, v_width=v.hidden_size, v_layers=v.num_hidden_layers, patch=v.patch_size,
        image_size=v.image_size, vocab=t.vocab_size, ctx=t.max_position_embeddings, t_width=t.hidden_size,
        t_layers=t.num_hidden_layers,
    )
    sd = {k: x.half() for k, x in sd.items()}
    sd["attn_mask"] = torch.full((77, 77), float("-inf")).triu_(1)  # a buffer some open_clip versions saved
    torch.save({"epoch": 1, "state_dict": sd}, root / "HPS_v2.1_compressed.pt")
    (root / "tiny_config.json").write_text(json.dumps(config.to_dict()), encoding="utf-8")
    tokenizer = write_tiny_tokenizer(root / "tokenizer")
    reference = {k: x.float() for k, x in sd.items() if k != "attn_mask"}
    return root, config, reference, tokenizer


@pytest.fixture(scope="module")
def hps(hps_files):
    root, _, _, _ = hps_files
    return HPSv21Reward(checkpoint=root / "HPS_v2.1_compressed.pt", tokenizer=root / "tokenizer",
                        config=root / "tiny_config.json", device="cpu", batch_size=2)


def _images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random uint8 images (noise upsampled), ``(n, 3, h, w)``."""
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, max(h // 4, 2), max(w // 4, 2), generator=gen)
    return (F.interpolate(small, size=(h, w), mode="bilinear") * 255).round().to(torch.uint8)


# ---- tests --------------------------------------------------------------------------------------

def test_converted_model_reproduces_open_clip_features(hps_files):
    _, config, sd, tokenizer = hps_files
    model = clip_model_from_open_clip(sd, config)
    layers_v, layers_t = config.vision_config.num_hidden_layers, config.text_config.num_hidden_layers
    pixels = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    ids = open_clip_tokens(tokenizer, ["the red cat", "a dog", "the the cat on a red dog"])
    with torch.no_grad():
        ref_img = open_clip_image_features(sd, pixels, HEADS, layers_v)
        ref_txt = open_clip_text_features(sd, ids, HEADS, layers_t)
        out = model.get_image_features(pixel_values=pixels)
        img = out if isinstance(out, torch.Tensor) else out.pooler_output
        out = model.get_text_features(input_ids=ids)
        txt = out if isinstance(out, torch.Tensor) else out.pooler_output
    assert ref_img.abs().max() > 0.1 and ref_txt.abs().max() > 0.1
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(txt, ref_txt, atol=1e-5, rtol=1e-5)
    assert float(model.logit_scale.detach()) == pytest.approx(float(sd["logit_scale"]))


def test_hps_preprocessing_is_longest_side_resize_and_centred_zero_pad():
    image = _images(1, 40, 24, seed=3)  # portrait: 40 high, 24 wide
    out = ImagePreprocess(size=28, mode="pad")(image)
    # reference: PIL bicubic to 28 x round(24 * 28 / 40) = 28 x 17, pasted centred on black
    pil = Image.fromarray(image[0].permute(1, 2, 0).numpy())
    resized = pil.resize((17, 28), Image.BICUBIC)
    canvas = Image.new("RGB", (28, 28))
    canvas.paste(resized, ((28 - 17) // 2, 0))
    ref = torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    ref = (ref - mean) / std
    assert out.shape == (1, 3, 28, 28)
    # PIL and torch's antialiased bicubic agree to one 8-bit level
    assert (out[0] - ref).abs().max() <= 1.0 / 255.0 / min(OPENAI_CLIP_STD) + 1e-5
    # padding is black before normalisation: columns 0-4 left, 22-27 right
    black = (-mean / std).expand(3, 28, 5)
    torch.testing.assert_close(out[0, :, :, :5], black)
    torch.testing.assert_close(out[0, :, :, 22:], (-mean / std).expand(3, 28, 6))
    assert (out[0, :, :, 5:22] - (-mean / std)).abs().amax() > 0.1


def test_hps_score_is_open_clip_cosine_and_batch_equals_single(hps, hps_files):
    _, config, sd, tokenizer = hps_files
    images = _images(5, 40, 24, seed=5)
    long = " ".join(["the red cat", "a dog"] * 30)  # 150 BPE tokens: truncated to 77 with EOT last
    prompts = ["the red  cat", "a dog &amp; the cat", long, "red", "the red  cat"]
    scores = hps(images, prompts)
    # reference: our preprocessing, open_clip-cleaned prompts, open_clip forward and pooling
    cleaned = ["the red cat", "a dog & the cat", long, "red", "the red cat"]
    with torch.no_grad():
        img = open_clip_image_features(sd, ImagePreprocess(size=28, mode="pad")(images), HEADS, 2)
        txt = open_clip_text_features(sd, open_clip_tokens(tokenizer, cleaned), HEADS, 2)
    ref = F.cosine_similarity(img, txt, dim=-1)
    torch.testing.assert_close(scores, ref, atol=1e-5, rtol=1e-5)
    one_by_one = torch.cat([hps(images[i:i + 1], prompts[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(scores, one_by_one, atol=1e-6, rtol=1e-6)
    assert scores.dtype == torch.float32 and scores.shape == (5,)


def test_hps_scores_depend_on_the_prompt(hps):
    image = _images(1, 32, 32, seed=7).expand(4, -1, -1, -1)
    scores = hps(image, ["the red cat", "a dog", "the dog", "red red red"])
    assert scores.std() > 1e-3


def test_hps_through_registry_and_float_images(hps_files, hps):
    root, _, _, _ = hps_files
    reward = build_reward("hps", checkpoint=str(root / "HPS_v2.1_compressed.pt"),
                          tokenizer=str(root / "tokenizer"), config=str(root / "tiny_config.json"), device="cpu")
    assert isinstance(reward, HPSv21Reward) and reward.name == "hps"
    images = _images(2, 28, 28, seed=9)
    torch.testing.assert_close(reward(images.float() / 255.0, ["a cat", "a dog"]), hps(images, ["a cat", "a dog"]))


def test_shipped_vit_h_14_config_matches_open_clip_vit_h_14_layout():
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig.from_json_file(str(VIT_H_14_CONFIG))
    v, t = config.vision_config, config.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.patch_size, v.image_size) == (1280, 32, 16, 14, 224)
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.max_position_embeddings, t.vocab_size) == (1024, 24, 16, 77, 49408)
    assert v.hidden_act == t.hidden_act == "gelu" and config.projection_dim == 1024
    # the full-size open_clip key layout converts onto the config's model exactly (shapes checked, on meta)
    sd = open_clip_state_dict(embed=1024, v_width=1280, v_layers=32, patch=14, image_size=224,
                              vocab=49408, ctx=77, t_width=1024, t_layers=24, device="meta")
    converted = convert_open_clip_state_dict(sd)
    with torch.device("meta"):
        model = CLIPModel(config)
    model.load_state_dict(converted, strict=True, assign=True)
    assert sum(p.numel() for p in model.parameters()) == sum(x.numel() for x in sd.values())
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 986.1


def test_converter_rejects_unknown_keys(hps_files):
    _, _, sd, _ = hps_files
    with pytest.raises(ValueError, match="visual.attn_pool"):
        convert_open_clip_state_dict({**sd, "visual.attn_pool.query": torch.zeros(2)})


def test_hps_errors_name_the_path_and_option(tmp_path, hps_files):
    root, _, _, _ = hps_files
    with pytest.raises(ValueError, match="checkpoint="):
        HPSv21Reward(tokenizer=root / "tokenizer")
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt.*checkpoint="):
        HPSv21Reward(checkpoint=missing, tokenizer=root / "tokenizer")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        HPSv21Reward(checkpoint=garbage, tokenizer=root / "tokenizer", config=root / "tiny_config.json")
    with pytest.raises(FileNotFoundError, match="no_tokenizer.*tokenizer="):
        HPSv21Reward(checkpoint=root / "HPS_v2.1_compressed.pt", tokenizer=tmp_path / "no_tokenizer",
                     config=root / "tiny_config.json")
    with pytest.raises(FileNotFoundError, match="config="):
        HPSv21Reward(checkpoint=root / "HPS_v2.1_compressed.pt", tokenizer=root / "tokenizer",
                     config=tmp_path / "missing.json")
