"""HPS v2.1 on transformers: the open_clip -> CLIPModel conversion reproduces open_clip's own
forward pass (restated here independently), the HPS preprocessing matches PIL + zero pad, and
the reward scores are the open_clip cosine, batched or one by one."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mixgrpo_ray.rewards.hps
from mixgrpo_ray.rewards.clip.clip_common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipEmbedder, ImagePreprocess, clean_prompt_open_clip
from mixgrpo_ray.rewards.hps import VIT_H_14_CONFIG, HPSv21Reward
from mixgrpo_ray.rewards.clip.openclip_convert import clip_model_from_open_clip, convert_open_clip_state_dict
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


def hps_reference_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """HPS v2.1's ``preprocess_val`` restated per image: ``ToTensor`` (uint8 / 255), open_clip
    ``ResizeMaxSize`` (scale = size / max(h, w), sides ``round(side * scale)``, torchvision's
    float-tensor bicubic resize with antialias, zero pad ``[w//2, h//2, rest, rest]``), then
    ``Normalize`` with the OpenAI mean/std. No rounding or clamping anywhere."""
    out = []
    for img in images:
        x = img.float().div(255) if img.dtype == torch.uint8 else img.float()
        height, width = x.shape[1:]
        scale = size / float(max(height, width))
        if scale != 1.0:  # as ResizeMaxSize: an image whose longer side is already `size` is left alone
            new_size = tuple(round(dim * scale) for dim in (height, width))
            x = F.interpolate(x[None], size=new_size, mode="bicubic", align_corners=False, antialias=True)[0]
            pad_h, pad_w = size - new_size[0], size - new_size[1]
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], mode="constant", value=0.0)
        mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(OPENAI_CLIP_STD, dtype=x.dtype).view(3, 1, 1)
        out.append((x - mean) / std)
    return torch.stack(out)


def _noise(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """High-contrast uint8 noise: bicubic overshoots [0, 1] on it, 8-bit rounding shows."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=gen, dtype=torch.uint8)


@pytest.mark.parametrize("height,width", [(40, 24), (24, 40), (45, 31), (14, 20), (40, 15), (28, 28), (56, 56)])
def test_hps_preprocessing_is_open_clip_float_resize_and_zero_pad(height, width):
    # downscale portrait/landscape (odd pads), upscale (overshoot past [0, 1] must survive), square
    images = _noise(2, height, width, seed=height * 100 + width)
    ours = ImagePreprocess(size=28, mode="pad", pipeline="tensor")(images)
    ref = hps_reference_pixels(images, 28)
    assert ours.shape == ref.shape == (2, 3, 28, 28)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    # float images are resized as they are (no 8-bit rounding of the input either)
    floats = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        ImagePreprocess(size=28, mode="pad", pipeline="tensor")(floats), hps_reference_pixels(floats, 28),
        atol=1e-6, rtol=0,
    )


def test_hps_reward_uses_the_open_clip_float_preprocessing(hps):
    images = _noise(3, 45, 31, seed=4)
    torch.testing.assert_close(hps.embedder.preprocess(images), hps_reference_pixels(images, 28), atol=1e-6, rtol=0)
    # the 8-bit PIL pipeline differs visibly on the same images (what the float path replaces)
    pil_like = ImagePreprocess(size=28, mode="pad", pipeline="pil")(images)
    assert (pil_like - hps_reference_pixels(images, 28)).abs().max() > 1e-3


def test_pad_geometry_is_centred_black():
    image = _images(1, 40, 24, seed=3)  # portrait: 40 high, 24 wide -> 28 x round(16.8) = 17
    out = ImagePreprocess(size=28, mode="pad", pipeline="tensor")(image)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    # padding is black before normalisation: columns 0-4 left, 22-27 right
    torch.testing.assert_close(out[0, :, :, :5], (-mean / std).expand(3, 28, 5))
    torch.testing.assert_close(out[0, :, :, 22:], (-mean / std).expand(3, 28, 6))
    assert (out[0, :, :, 5:22] - (-mean / std)).abs().amax() > 0.1


def test_pil_pad_pipeline_still_matches_pil():
    image = _images(1, 40, 24, seed=3)
    out = ImagePreprocess(size=28, mode="pad")(image)
    # reference: PIL bicubic to 28 x 17, pasted centred on black
    pil = Image.fromarray(image[0].permute(1, 2, 0).numpy())
    canvas = Image.new("RGB", (28, 28))
    canvas.paste(pil.resize((17, 28), Image.BICUBIC), ((28 - 17) // 2, 0))
    ref = torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float() / 255.0
    ref = (ref - torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    torch.testing.assert_close(out[0], ref, atol=1e-6, rtol=0)  # PIL's resample, bit for bit


def test_hps_score_is_open_clip_cosine_and_batch_equals_single(hps, hps_files):
    _, config, sd, tokenizer = hps_files
    images = _images(5, 40, 24, seed=5)
    long = " ".join(["the red cat", "a dog"] * 30)  # 150 BPE tokens: truncated to 77 with EOT last
    prompts = ["the red  cat", "a dog &amp; the cat", long, "red", "the red  cat"]
    scores = hps(images, prompts)
    # reference: our preprocessing, open_clip-cleaned prompts, open_clip forward and pooling
    cleaned = ["the red cat", "a dog & the cat", long, "red", "the red cat"]
    with torch.no_grad():
        img = open_clip_image_features(sd, hps_reference_pixels(images, 28), HEADS, 2)
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


# ---- prompt cleaning (open_clip basic_clean + whitespace_clean, ftfy always) -----------------

#: raw prompt -> what open_clip's cleaning makes of it (written out here, not computed)
FTFY_CASES = [
    ("the \u201cred\u201d cat", 'the "red" cat'),  # curly quotes straightened by ftfy
    ("a sch\u00c3\u00b6n dog", "a sch\u00f6n dog"),  # UTF-8 mojibake read as Latin-1, repaired
    ("a dog &amp;amp; the cat", "a dog & the cat"),  # doubly escaped HTML entity
    ("  the cat&#39;s \n\t red dog ", "the cat's red dog"),  # numeric entity, whitespace runs
]


def test_ftfy_is_a_required_dependency():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from repo_paths import ROOT

    pyproject = ROOT / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    assert any(re.match(r"ftfy\b", d) for d in deps)


def test_prompt_cleaning_always_applies_ftfy(monkeypatch):
    # cleaning must not depend on ftfy being importable at call time (it was optional before)
    monkeypatch.setitem(sys.modules, "ftfy", None)
    for raw, cleaned in FTFY_CASES:
        assert clean_prompt_open_clip(raw) == cleaned


def test_hps_tokenises_like_open_clip_after_cleaning(hps, hps_files):
    _, _, sd, tokenizer = hps_files
    raws = [raw for raw, _ in FTFY_CASES]
    cleaned = [c for _, c in FTFY_CASES]
    # the curly-quote prompt is tokenised as its straight-quote form
    assert hps.embedder.tokenize(raws[:1])["input_ids"].tolist() == tokenizer([cleaned[0]])["input_ids"]
    assert tokenizer([raws[0]])["input_ids"] != tokenizer([cleaned[0]])["input_ids"]
    images = _images(len(raws), 40, 24, seed=11)
    scores = hps(images, raws)
    with torch.no_grad():
        img = open_clip_image_features(sd, hps_reference_pixels(images, 28), HEADS, 2)
        txt = open_clip_text_features(sd, open_clip_tokens(tokenizer, cleaned), HEADS, 2)
    torch.testing.assert_close(scores, F.cosine_similarity(img, txt, dim=-1), atol=1e-5, rtol=1e-5)


# ---- precision: fp32 weights, fp16 autocast on CUDA (the reference's precision="amp") ------------

def _resolved_settings(monkeypatch, hps_files, cuda: bool, **options) -> dict:
    """What HPSv21Reward hands its embedder (device, weight dtype, autocast) with CUDA reported
    available or not; the embedder itself is built on CPU so nothing moves to a GPU."""
    root, _, _, _ = hps_files
    seen: dict = {}

    class Recorder(ClipEmbedder):
        def __init__(self, model, tokenizer, preprocess, device, dtype, **kw):
            seen.update(device=device, dtype=dtype, autocast=kw.get("autocast"),
                        weights=next(model.parameters()).dtype)
            super().__init__(model, tokenizer, preprocess, torch.device("cpu"), dtype, **{**kw, "autocast": None})

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(mixgrpo_ray.rewards.hps, "ClipEmbedder", Recorder)
    HPSv21Reward(checkpoint=root / "HPS_v2.1_compressed.pt", tokenizer=root / "tokenizer",
                 config=root / "tiny_config.json", **options)
    return seen


def test_hps_default_precision_is_fp32_weights_under_fp16_autocast_on_cuda(monkeypatch, hps_files):
    seen = _resolved_settings(monkeypatch, hps_files, cuda=True)
    assert seen["device"].type == "cuda"
    assert seen["dtype"] == seen["weights"] == torch.float32
    assert seen["autocast"] == torch.float16
    seen = _resolved_settings(monkeypatch, hps_files, cuda=False)
    assert (seen["device"].type, seen["dtype"], seen["autocast"]) == ("cpu", torch.float32, None)


def test_hps_precision_overrides(monkeypatch, hps_files):
    seen = _resolved_settings(monkeypatch, hps_files, cuda=True, dtype="fp16")
    assert (seen["dtype"], seen["autocast"]) == (torch.float16, None)
    seen = _resolved_settings(monkeypatch, hps_files, cuda=True, autocast="off")
    assert (seen["dtype"], seen["autocast"]) == (torch.float32, None)
    seen = _resolved_settings(monkeypatch, hps_files, cuda=True, autocast="bf16")
    assert (seen["dtype"], seen["autocast"]) == (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="autocast"):
        _resolved_settings(monkeypatch, hps_files, cuda=True, autocast="int8")


def test_hps_autocast_runs_the_forward_in_lower_precision(hps, hps_files):
    root, _, _, _ = hps_files
    amp = HPSv21Reward(checkpoint=root / "HPS_v2.1_compressed.pt", tokenizer=root / "tokenizer",
                       config=root / "tiny_config.json", device="cpu", autocast="bf16")
    assert amp.embedder.autocast == torch.bfloat16
    assert next(amp.embedder.model.parameters()).dtype == torch.float32
    images = _images(3, 40, 24, seed=13)
    prompts = ["the red cat", "a dog", "red"]
    full, low = hps(images, prompts), amp(images, prompts)
    assert low.dtype == torch.float32
    assert 0 < (full - low).abs().max() < 0.05


# ---- reward traffic: images resized ahead by the rollout actor ---------------------------------

@pytest.mark.parametrize("height,width", [(96, 96), (90, 61), (61, 90)])
def test_hps_scores_images_resized_ahead_as_full_resolution(hps, height, width):
    """The declared input (open_clip's float longest-edge resize) done ahead, as a rollout actor
    does, gives the score of the model's own preprocessing on the full image: exactly on CPU
    (tolerance 1e-6 for float noise), bicubic overshoot outside [0, 1] included."""
    from mixgrpo_ray.models.reward_input import RewardInput

    spec = hps.input()
    assert spec == RewardInput(28, "longest_edge_float")
    blocks = _noise(3, height // 6, width // 6, seed=11) // 128 * 255  # hard black/white edges
    images = F.interpolate(blocks.float(), size=(height, width), mode="nearest").to(torch.uint8)
    prompts = ["the red cat", "a dog", "red"]
    ahead = spec.apply(images)
    assert ahead.dtype == torch.float32 and max(ahead.shape[-2:]) == 28
    assert ahead.min() < 0 or ahead.max() > 1  # overshoot travels as floats
    full = hps.score(images, prompts)  # the model's own preprocessing, full resolution
    torch.testing.assert_close(hps(ahead, prompts), full, atol=1e-6, rtol=0)
    torch.testing.assert_close(hps(images, prompts), full, atol=1e-6, rtol=0)
    torch.testing.assert_close(spec.apply(ahead), ahead, atol=0, rtol=0)  # twice is once
