"""ImageReward on transformers BLIP: converter, loader, forward and preprocessing.

The reference below re-implements the original modules (BLIP's vit.py VisionTransformer and
med.py BertModel in ``mode="multimodal"``, ImageReward's MLP and normalisation) directly on the
original-layout state dict with plain torch ops, independently of transformers and of the
converter. Agreement shows that the converter and the transformers modules compute what the
original code computes, on a tiny model. What it cannot show: agreement with the real
``ImageReward.pt`` (numerics at full size, tokenizer files) - that needs one run with the real
weights (open item).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mixgrpo_ray.rewards.imagereward import (
    CLIP_MEAN,
    CLIP_STD,
    MAX_TEXT_LENGTH,
    REWARD_MEAN,
    REWARD_STD,
    ImageRewardReward,
    imagereward_pixels,
)
from mixgrpo_ray.rewards.imagereward_convert import convert_head, split_original_state_dict
from mixgrpo_ray.rewards.registry import build_reward
from tiny_imagereward import HEAD_INDICES, TEXT, VISION, VOCAB, original_state_dict, write_checkpoint

PROMPTS = [
    "a red cat sitting on the sea",
    "a photo of two small dogs",
    # longer than 35 tokens: truncated
    " ".join(["a big green tree under the blue sky"] * 6),
]


# ---------------------------------------------------------------- independent reference


def _ln(x, sd, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps)


def _lin(x, sd, prefix):
    return F.linear(x, sd[prefix + ".weight"], sd[prefix + ".bias"])


def _heads(x, n):
    b, t, d = x.shape
    return x.view(b, t, n, d // n).transpose(1, 2)


def reference_vit(sd, pixels):
    """BLIP vit.py VisionTransformer.forward (pre-norm blocks, eps 1e-6, final norm)."""
    v = "blip.visual_encoder."
    x = F.conv2d(pixels, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=VISION["patch"])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[v + "cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd[v + "pos_embed"]
    b, n, d = x.shape
    nh = VISION["heads"]
    for i in range(VISION["depth"]):
        p = f"{v}blocks.{i}."
        h = _ln(x, sd, p + "norm1", 1e-6)
        q, k, val = _lin(h, sd, p + "attn.qkv").reshape(b, n, 3, nh, d // nh).permute(2, 0, 3, 1, 4)
        att = ((q @ k.transpose(-2, -1)) * (d // nh) ** -0.5).softmax(-1)
        x = x + _lin((att @ val).transpose(1, 2).reshape(b, n, d), sd, p + "attn.proj")
        h = _ln(x, sd, p + "norm2", 1e-6)
        x = x + _lin(F.gelu(_lin(h, sd, p + "mlp.fc1")), sd, p + "mlp.fc2")
    return _ln(x, sd, v + "norm", 1e-6)


def reference_bert(sd, ids, mask, image_embeds):
    """med.py BertModel.forward(mode="multimodal"): bidirectional self-attention with the
    (1 - mask) * -10000 extended mask, cross-attention to every image token, post-norm."""
    t = "blip.text_encoder."
    eps, nh = 1e-12, TEXT["heads"]
    x = sd[t + "embeddings.word_embeddings.weight"][ids] + sd[t + "embeddings.position_embeddings.weight"][: ids.shape[1]]
    x = _ln(x, sd, t + "embeddings.LayerNorm", eps)
    ext = (1.0 - mask[:, None, None, :].float()) * -10000.0

    def attention(prefix, hidden, context, add_mask):
        q = _heads(_lin(hidden, sd, prefix + ".self.query"), nh)
        k = _heads(_lin(context, sd, prefix + ".self.key"), nh)
        val = _heads(_lin(context, sd, prefix + ".self.value"), nh)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if add_mask is not None:
            scores = scores + add_mask
        ctx = (scores.softmax(-1) @ val).transpose(1, 2).reshape(hidden.shape)
        return _ln(_lin(ctx, sd, prefix + ".output.dense") + hidden, sd, prefix + ".output.LayerNorm", eps)

    for i in range(TEXT["layers"]):
        p = f"{t}encoder.layer.{i}."
        x = attention(p + "attention", x, x, ext)
        x = attention(p + "crossattention", x, image_embeds, None)
        inter = F.gelu(_lin(x, sd, p + "intermediate.dense"))
        x = _ln(_lin(inter, sd, p + "output.dense") + x, sd, p + "output.LayerNorm", eps)
    return x


def reference_reward(sd, pixels, ids, mask):
    """ImageReward.score: head(text_encoder(...)[:, 0]) then (r - mean) / std."""
    feats = reference_bert(sd, ids, mask, reference_vit(sd, pixels))[:, 0]
    for index in HEAD_INDICES:
        feats = _lin(feats, sd, f"mlp.layers.{index}")
    return (feats.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("imagereward"))


@pytest.fixture(scope="module")
def reward(checkpoint):
    folder, vocab, _ = checkpoint
    return ImageRewardReward(checkpoint=str(folder), tokenizer=str(vocab), vision_num_heads=VISION["heads"], batch_size=2)


def _images(n=3, size=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size + 16), generator=g, dtype=torch.uint8)


# ---------------------------------------------------------------- converter


def test_converter_places_original_tensors(reward, checkpoint):
    _, _, sd = checkpoint
    m = reward.model
    pairs = {
        "blip.visual_encoder.cls_token": m.vision.embeddings.class_embedding,
        "blip.visual_encoder.pos_embed": m.vision.embeddings.position_embedding,
        "blip.visual_encoder.patch_embed.proj.weight": m.vision.embeddings.patch_embedding.weight,
        "blip.visual_encoder.blocks.1.norm1.bias": m.vision.encoder.layers[1].layer_norm1.bias,
        "blip.visual_encoder.blocks.1.norm2.weight": m.vision.encoder.layers[1].layer_norm2.weight,
        "blip.visual_encoder.blocks.0.attn.qkv.weight": m.vision.encoder.layers[0].self_attn.qkv.weight,
        "blip.visual_encoder.blocks.0.attn.proj.bias": m.vision.encoder.layers[0].self_attn.projection.bias,
        "blip.visual_encoder.blocks.1.mlp.fc2.weight": m.vision.encoder.layers[1].mlp.fc2.weight,
        "blip.visual_encoder.norm.weight": m.vision.post_layernorm.weight,
        "blip.text_encoder.encoder.layer.1.crossattention.self.key.weight": m.text.encoder.layer[1].crossattention.self.key.weight,
        "mlp.layers.6.weight": m.head.linears[3].weight,
        "mlp.layers.7.bias": m.head.linears[4].bias,
    }
    for key, param in pairs.items():
        assert torch.equal(sd[key], param.detach()), key
    assert m.vision.config.layer_norm_eps == 1e-6
    assert m.vision.config.image_size == VISION["image"] and m.vision.config.patch_size == VISION["patch"]
    assert m.text.config.encoder_hidden_size == VISION["width"]
    n_params = sum(p.numel() for p in m.parameters())
    unused = sum(v.numel() for k, v in sd.items() if k.startswith(("blip.vision_proj", "blip.text_proj")) or k.endswith("position_ids"))
    assert n_params == sum(v.numel() for v in sd.values()) - unused


def test_converter_rejects_unknown_layouts():
    sd = original_state_dict()
    with pytest.raises(KeyError, match="unexpected key"):
        split_original_state_dict(sd | {"blip.itm_head.weight": torch.zeros(2, 2)})
    _, _, head, _ = split_original_state_dict(sd)
    head["layers.8.weight"] = head.pop("layers.7.weight")
    with pytest.raises(KeyError, match="layers"):
        convert_head(head)
    no_text = {k: v for k, v in sd.items() if "text_encoder" not in k}
    with pytest.raises(KeyError, match="text_encoder"):
        split_original_state_dict(no_text)


# ---------------------------------------------------------------- forward


def test_scores_match_independent_reference(reward, checkpoint):
    _, _, sd = checkpoint
    images = _images()
    pixels = imagereward_pixels(images, VISION["image"])
    tokens = reward.tokenize(PROMPTS)
    # the three prompts have different lengths, so padding is exercised; the last is truncated
    assert tokens["attention_mask"].sum(1).tolist()[2] == MAX_TEXT_LENGTH
    assert tokens["attention_mask"][0].sum() < MAX_TEXT_LENGTH
    expected = reference_reward(sd, pixels, tokens["input_ids"], tokens["attention_mask"])
    got = reward(images, PROMPTS)
    assert got.dtype == torch.float32 and got.shape == (3,)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    # not a degenerate agreement: the scores differ across images
    assert got.std() > 1e-3


def test_batch_equals_one_by_one(reward):
    images = _images(seed=2)
    batched = reward(images, PROMPTS)
    single = torch.cat([reward(images[i : i + 1], PROMPTS[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_prompt_changes_score(reward):
    image = _images(n=1, seed=3).expand(2, -1, -1, -1)
    scores = reward(image, ["a red cat", "two white birds over the sea"])
    assert abs(scores[0] - scores[1]) > 1e-4


def test_float_and_uint8_images_agree(reward):
    images = _images(n=2, seed=4)
    torch.testing.assert_close(reward(images, PROMPTS[:2]), reward(images.float() / 255.0, PROMPTS[:2]))


def test_default_placement_is_fp32_on_cuda_like_the_original(checkpoint, monkeypatch):
    # ImageReward.load(name, device="cuda") keeps the fp32 weights and moves them to the device
    folder, vocab, _ = checkpoint
    moves = []

    def record_to(module, *args, **kwargs):
        moves.append((type(module).__name__, args, kwargs))
        return module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", record_to)
    r = ImageRewardReward(checkpoint=str(folder), tokenizer=str(vocab), vision_num_heads=VISION["heads"])
    assert r.device == torch.device("cuda") and r.dtype == torch.float32
    assert moves and all(args == (torch.device("cuda"), torch.float32) for _, args, _ in moves)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = ImageRewardReward(checkpoint=str(folder), tokenizer=str(vocab), vision_num_heads=VISION["heads"], dtype="bf16")
    assert r.device == torch.device("cpu") and r.dtype == torch.bfloat16


def test_normalisation_constants(checkpoint):
    folder, vocab, _ = checkpoint
    r = ImageRewardReward(checkpoint=str(folder / "ImageReward.pt"), tokenizer=str(vocab), vision_num_heads=VISION["heads"])
    with torch.no_grad():
        for linear in r.model.head.linears:
            linear.weight.zero_()
            linear.bias.zero_()
        r.model.head.linears[-1].bias.fill_(1.0)
    scores = r(_images(n=2), PROMPTS[:2])
    expected = (1.0 - REWARD_MEAN) / REWARD_STD
    assert REWARD_MEAN == 0.16717362830052426 and REWARD_STD == 1.0333394966054072
    torch.testing.assert_close(scores, torch.full((2,), expected))


# ---------------------------------------------------------------- tokenizer and preprocessing


def test_tokenizer_pads_to_35_and_adds_blip_tokens(reward):
    tokens = reward.tokenize(["a cat", "a dog"])
    assert tokens["input_ids"].shape == (2, MAX_TEXT_LENGTH)
    assert tokens["input_ids"][0, 0].item() == VOCAB.index("[CLS]")
    assert reward.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(VOCAB), len(VOCAB) + 1]


def test_preprocess_constant_image_is_normalised_clip_values():
    image = torch.full((1, 3, 40, 70), 128, dtype=torch.uint8)
    pixels = imagereward_pixels(image, 32)
    assert pixels.shape == (1, 3, 32, 32)
    expected = (128 / 255.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(pixels[0].mean(dim=(1, 2)), expected)
    torch.testing.assert_close(pixels[0].amax(dim=(1, 2)), pixels[0].amin(dim=(1, 2)))


def test_preprocess_keeps_aspect_and_centre_crops():
    # 32 x 96: shorter side already 32, so only the centre third (green) survives the crop
    image = torch.zeros(1, 3, 32, 96, dtype=torch.uint8)
    image[0, 0, :, :32] = 255
    image[0, 1, :, 32:64] = 255
    image[0, 2, :, 64:] = 255
    pixels = imagereward_pixels(image, 32)
    expected = (torch.tensor([0.0, 1.0, 0.0]) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(pixels[0], expected.view(3, 1, 1).expand(3, 32, 32))
    # a tall image downscaled: top and bottom bands are cropped away
    tall = torch.zeros(1, 3, 192, 64, dtype=torch.uint8)
    tall[0, :, 48:144] = 255
    assert torch.all(imagereward_pixels(tall, 32)[0] > 1.0)


# ---------------------------------------------------------------- loading


def test_registry_and_checkpoint_paths(checkpoint, tmp_path):
    folder, vocab, _ = checkpoint
    r = build_reward("imagereward", checkpoint=str(folder), tokenizer=str(vocab), vision_num_heads=VISION["heads"])
    assert isinstance(r, ImageRewardReward) and r.name == "imagereward"
    lone = tmp_path / "weights.pt"
    lone.write_bytes((folder / "ImageReward.pt").read_bytes())
    with pytest.raises(FileNotFoundError, match="med_config"):
        ImageRewardReward(checkpoint=str(lone), tokenizer=str(vocab))
    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": original_state_dict()}, nested)
    r2 = ImageRewardReward(
        checkpoint=str(nested), med_config=str(folder / "med_config.json"), tokenizer=str(vocab),
        vision_num_heads=VISION["heads"],
    )
    images = _images(n=1)
    torch.testing.assert_close(r2(images, PROMPTS[:1]), r(images, PROMPTS[:1]))


# ---------------------------------------------------------------- reward traffic


@pytest.mark.parametrize("height,width", [(96, 96), (48, 64), (70, 40)])
def test_imagereward_scores_images_resized_ahead_as_full_resolution(reward, height, width):
    """The declared input (the original's PIL bicubic shortest-edge resize) done ahead, as a
    rollout actor does, gives the score of the model's own preprocessing on the full image:
    exactly on CPU (tolerance 1e-6 for float noise)."""
    from mixgrpo_ray.models.reward_input import RewardInput

    spec = reward.input()
    assert spec == RewardInput(VISION["image"], "shortest_edge_pil")
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (3, 3, height, width), generator=g, dtype=torch.uint8)
    ahead = spec.apply(images)
    assert ahead.dtype == torch.uint8 and min(ahead.shape[-2:]) == VISION["image"]
    full = reward.score(images, PROMPTS[:3])  # the model's own preprocessing, full resolution
    torch.testing.assert_close(reward(ahead, PROMPTS[:3]), full, atol=1e-6, rtol=0)
    assert torch.equal(spec.apply(ahead), ahead)  # twice is once
