"""PickScore and CLIP-score rewards on a tiny transformers CLIP saved to disk and loaded through
the real loader: scores equal the model's own forward on the same inputs, normalisations are as
documented, batching changes nothing, preprocessing matches the transformers CLIP image processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPModel
from transformers.models.clip import CLIPImageProcessorPil

import mixgrpo_ray.rewards.clip.clip_common
from mixgrpo_ray.rewards.clip.clip_common import ClipEmbedder, ImagePreprocess, clean_prompt_open_clip, resolve_autocast, resolve_dtype
from mixgrpo_ray.rewards.clip_score import CLIPScoreReward
from mixgrpo_ray.rewards.pickscore import PickScoreReward
from mixgrpo_ray.rewards.registry import build_reward
from tiny_clip import save_tiny_clip

PROMPTS = ["the red cat", "a dog", "the red cat", "red dog on the cat", "cat"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("pickscore") / "model", image_size=28, seed=1)


@pytest.fixture(scope="module")
def pick_raw(clip_folder):
    return PickScoreReward(model=clip_folder, normalize="raw", device="cpu", batch_size=2)


def _images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, max(h // 4, 2), max(w // 4, 2), generator=gen)
    return (F.interpolate(small, size=(h, w), mode="bilinear") * 255).round().to(torch.uint8)


@pytest.mark.parametrize("height,width", [(40, 61), (40, 62), (62, 40)])
def test_crop_preprocessing_matches_transformers_clip_image_processor(clip_folder, height, width):
    # shorter side 40 -> 28; longer 61 -> int(42.7) = 42 (not rounded), 62 -> 43 (odd crop margin)
    images = _images(2, height, width, seed=2)
    ours = ImagePreprocess.from_processor_dict(
        {"size": {"shortest_edge": 28}, "crop_size": {"height": 28, "width": 28}}, default_size=224
    )(images)
    processor = CLIPImageProcessorPil.from_pretrained(str(clip_folder))
    pils = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    ref = torch.as_tensor(np.asarray(processor(images=pils, return_tensors="np")["pixel_values"]))
    assert ours.shape == ref.shape == (2, 3, 28, 28)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)  # PIL's resample, bit for bit


#: the sizes the CLIP processor's 8-bit resize was seen to differ at (by 1-2 levels), and a few more
REAL_SIZES = [(720, 720), (768, 512), (200, 300), (90, 120), (1024, 1024), (512, 768)]
LAION = {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}}


@pytest.mark.parametrize("height,width", REAL_SIZES)
def test_224_crop_is_the_clip_image_processors_exactly(height, width):
    """At CLIP's real 224 crop, noise images (every resampling error shows) and smooth ones: our
    pixels are CLIPImageProcessor's (PIL backend) to float rounding, the 8-bit resize bit for bit."""
    processor = CLIPImageProcessorPil(**LAION)
    ours_pre = ImagePreprocess.from_processor_dict(LAION, default_size=224)
    gen = torch.Generator().manual_seed(height * 7 + width)
    noise = torch.randint(0, 256, (2, 3, height, width), generator=gen, dtype=torch.uint8)
    for images in (noise, _images(2, height, width, seed=height + width)):
        pils = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
        ref = torch.as_tensor(np.asarray(processor(images=pils, return_tensors="np")["pixel_values"]))
        ours = ours_pre(images)
        assert ours.shape == ref.shape == (2, 3, 224, 224)
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
        # the resize a rollout actor does ahead equals PIL's own resize
        from mixgrpo_ray.models.reward_input import RewardInput, resize_with_pil, shortest_edge_size

        assert torch.equal(RewardInput(224).apply(images), resize_with_pil(images, shortest_edge_size(height, width, 224)))


@pytest.fixture(scope="module")
def clip224(tmp_path_factory):
    """A tiny CLIP that reads 224-pixel images (patch 32), with a 224 shortest-edge processor."""
    return save_tiny_clip(tmp_path_factory.mktemp("pickscore224") / "model", image_size=224, seed=3, patch_size=32)


@pytest.mark.parametrize("kind", ["pickscore", "clip"])
def test_scores_equal_the_original_code_at_real_sizes(clip224, kind):
    """End to end against the reference code (a CLIPProcessor with the PIL image processor, the
    model's forward, ``exp(logit_scale) * cos``): PickScore on MixGRPO's ``(s - 18) / 8`` scale and
    CLIP score (``2.5 * cos``) within 1e-5, on uint8 images of the sizes FLUX-era pipelines make."""
    from transformers import CLIPProcessor, CLIPTokenizer

    options = {"normalize": "mixgrpo"} if kind == "pickscore" else {"scale": 2.5}
    reward = build_reward(kind, model=str(clip224), device="cpu", batch_size=4, **options)
    model = CLIPModel.from_pretrained(str(clip224)).eval()
    processor = CLIPProcessor(image_processor=CLIPImageProcessorPil.from_pretrained(str(clip224)),
                              tokenizer=CLIPTokenizer.from_pretrained(str(clip224)))
    for height, width in REAL_SIZES[:4]:
        gen = torch.Generator().manual_seed(height + 3 * width)
        images = torch.randint(0, 256, (3, 3, height, width), generator=gen, dtype=torch.uint8)
        prompts = PROMPTS[:3]
        pils = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
        inputs = processor(text=prompts, images=pils, padding=True, truncation=True, max_length=77,
                           return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs)
        cos = (out.image_embeds * out.text_embeds).sum(-1)
        want = (model.logit_scale.exp() * cos - 18.0) / 8.0 if kind == "pickscore" else 2.5 * cos
        torch.testing.assert_close(reward(images, prompts), want, atol=1e-5, rtol=0)


def test_pickscore_raw_is_the_models_logits_per_image(pick_raw, clip_folder):
    images = _images(5, 36, 28, seed=3)
    scores = pick_raw(images, PROMPTS)
    model = CLIPModel.from_pretrained(str(clip_folder)).eval()
    enc = pick_raw.embedder.tokenize(PROMPTS)
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    pixel_values=pick_raw.embedder.preprocess(images))
    torch.testing.assert_close(scores, out.logits_per_image.diagonal(), atol=1e-4, rtol=1e-5)
    assert pick_raw.scale == pytest.approx(float(model.logit_scale.detach().exp()))


def test_pickscore_normalisations(clip_folder, pick_raw):
    images = _images(3, 28, 28, seed=4)
    prompts = PROMPTS[:3]
    raw = pick_raw(images, prompts)
    mixgrpo = PickScoreReward(model=clip_folder, normalize="mixgrpo", device="cpu")(images, prompts)
    flowgrpo = PickScoreReward(model=clip_folder, normalize="flowgrpo", device="cpu")(images, prompts)
    torch.testing.assert_close(mixgrpo, (raw - 18.0) / 8.0)
    torch.testing.assert_close(flowgrpo, raw / 26.0)
    with pytest.raises(ValueError, match="normalize"):
        PickScoreReward(model=clip_folder, normalize="zscore", device="cpu")


def test_pickscore_dancegrpo_normalisation_is_the_plain_cosine(clip_folder):
    # DanceGRPO: (text_embs @ image_embs.T) of normalised embeddings, no logit scale
    images = _images(3, 36, 28, seed=8)
    prompts = PROMPTS[:3]
    reward = PickScoreReward(model=clip_folder, normalize="dancegrpo", device="cpu")
    scores = reward(images, prompts)
    model = CLIPModel.from_pretrained(str(clip_folder)).eval()
    enc = reward.embedder.tokenize(prompts)
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    pixel_values=reward.embedder.preprocess(images))
    cos = F.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
    torch.testing.assert_close(scores, cos, atol=1e-5, rtol=1e-5)
    assert reward.score_range == (-1.0, 1.0)


def test_pickscore_logit_scale_is_read_in_fp32_before_the_cast(clip_folder):
    fp32_scale = float(CLIPModel.from_pretrained(str(clip_folder)).logit_scale.detach().float().exp())
    half = PickScoreReward(model=clip_folder, normalize="raw", device="cpu", dtype="fp16")
    assert next(half.embedder.model.parameters()).dtype == torch.float16
    assert half.scale == fp32_scale
    # the fp16-rounded value the cast model holds would be visibly different
    assert float(half.embedder.model.logit_scale.detach().float().exp()) != fp32_scale


def _resolved_clip_settings(monkeypatch, cls, clip_folder, **options) -> dict:
    """Device / weight dtype / autocast a CLIP reward hands its embedder with CUDA reported
    available; the embedder itself is built on CPU so nothing moves to a GPU."""
    seen: dict = {}

    class Recorder(ClipEmbedder):
        def __init__(self, model, tokenizer, preprocess, device, dtype, **kw):
            seen.update(device=device, dtype=dtype, autocast=kw.get("autocast"),
                        loaded=next(model.parameters()).dtype)
            super().__init__(model, tokenizer, preprocess, torch.device("cpu"), dtype, **{**kw, "autocast": None})

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(mixgrpo_ray.rewards.clip.clip_common, "ClipEmbedder", Recorder)
    cls(model=clip_folder, **options)
    return seen


@pytest.mark.parametrize("cls", [PickScoreReward, CLIPScoreReward])
def test_pickscore_and_clip_default_to_fp32_without_autocast_on_cuda(monkeypatch, clip_folder, cls):
    seen = _resolved_clip_settings(monkeypatch, cls, clip_folder)
    assert seen["device"].type == "cuda"
    assert (seen["loaded"], seen["dtype"], seen["autocast"]) == (torch.float32, torch.float32, None)
    seen = _resolved_clip_settings(monkeypatch, cls, clip_folder, dtype="bf16")
    assert (seen["loaded"], seen["dtype"]) == (torch.float32, torch.bfloat16)


def test_pickscore_batch_equals_one_by_one_and_depends_on_prompt(clip_folder, pick_raw):
    images = _images(5, 28, 28, seed=5)
    batched = pick_raw(images, PROMPTS)
    single = PickScoreReward(model=clip_folder, normalize="raw", device="cpu", batch_size=1)
    one_by_one = torch.cat([single(images[i:i + 1], PROMPTS[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-6)
    same_image = images[:1].expand(4, -1, -1, -1)
    assert pick_raw(same_image, ["the red cat", "a dog", "the dog", "red red red"]).std() > 1e-2


def test_clip_score_is_scaled_cosine_of_the_models_embeddings(clip_folder):
    images = _images(5, 28, 40, seed=6)
    reward = build_reward("clip", model=str(clip_folder), scale=2.5, device="cpu", batch_size=3)
    assert isinstance(reward, CLIPScoreReward) and reward.name == "clip"
    scores = reward(images, PROMPTS)
    model = CLIPModel.from_pretrained(str(clip_folder)).eval()
    enc = reward.embedder.tokenize(PROMPTS)
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    pixel_values=reward.embedder.preprocess(images))
    torch.testing.assert_close(scores, 2.5 * (out.image_embeds * out.text_embeds).sum(-1), atol=1e-5, rtol=1e-5)
    one_by_one = torch.cat([reward(images[i:i + 1], PROMPTS[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(scores, one_by_one, atol=1e-6, rtol=1e-6)
    assert reward(images[:1].expand(3, -1, -1, -1), ["the cat", "a red dog", "dog"]).std() > 1e-3


def test_separate_processor_folder_and_default_preprocessing(clip_folder, tmp_path, pick_raw):
    model_only = tmp_path / "model_only"
    CLIPModel.from_pretrained(str(clip_folder)).save_pretrained(str(model_only))
    images = _images(2, 28, 28, seed=7)
    split = PickScoreReward(model=model_only, processor=clip_folder, normalize="raw", device="cpu")
    torch.testing.assert_close(split(images, PROMPTS[:2]), pick_raw(images, PROMPTS[:2]))
    # a tokenizer folder without an image processor config: CLIP defaults at the model's image size
    tokenizer_only = tmp_path / "tokenizer_only"
    tokenizer_only.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        (tokenizer_only / name).write_bytes((clip_folder / name).read_bytes())
    with pytest.warns(UserWarning, match="no image processor config"):
        fallback = CLIPScoreReward(model=model_only, processor=tokenizer_only, device="cpu")
    assert fallback.embedder.preprocess == ImagePreprocess(size=28, mode="crop")


def test_missing_paths_are_one_line_errors_naming_the_option(tmp_path, clip_folder):
    with pytest.raises(ValueError, match="model="):
        PickScoreReward(device="cpu")
    with pytest.raises(FileNotFoundError, match="missing_model.*model="):
        PickScoreReward(model=tmp_path / "missing_model", device="cpu")
    with pytest.raises(FileNotFoundError, match="missing_proc.*processor="):
        CLIPScoreReward(model=clip_folder, processor=tmp_path / "missing_proc", device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="cannot load model .*empty"):
        CLIPScoreReward(model=empty, device="cpu")


def test_helpers_dtype_and_prompt_cleaning():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # weights default to fp32 everywhere (the reference codes keep fp32 weights); a reward may ask otherwise
    assert resolve_dtype(None, cpu) == torch.float32 and resolve_dtype("auto", cuda) == torch.float32
    assert resolve_dtype("auto", cuda, cuda_default=torch.float16) == torch.float16
    assert resolve_dtype("auto", cpu, cuda_default=torch.float16) == torch.float32
    assert resolve_autocast("auto", cuda, torch.float32) == torch.float16
    assert resolve_autocast("auto", cuda, torch.float16) is None and resolve_autocast("auto", cpu, torch.float32) is None
    assert resolve_autocast(None, cuda, torch.float32) is None and resolve_autocast("bf16", cpu, torch.float32) == torch.bfloat16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16 and resolve_dtype("float16", cpu) == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", cpu)
    assert clean_prompt_open_clip("  a &amp;amp; b \n\t c  ") == "a & b c"


# ---- reward traffic: images resized ahead by the rollout actor ---------------------------------

@pytest.mark.parametrize("height,width", [(112, 112), (40, 61), (62, 40)])
@pytest.mark.parametrize("kind", ["pickscore", "clip"])
def test_clip_family_scores_images_resized_ahead_as_full_resolution(clip_folder, kind, height, width):
    """The declared input (the CLIP processor's 8-bit shortest-edge resize) done ahead, as a
    rollout actor does, gives the score of the model's own preprocessing on the full image:
    exactly on CPU (tolerance 1e-6 for float noise); uint8 and float images alike."""
    from mixgrpo_ray.models.reward_input import RewardInput

    reward = build_reward(kind, model=str(clip_folder), device="cpu", batch_size=2)
    spec = reward.input()
    assert spec == RewardInput(28, "shortest_edge")
    for images in (_images(5, height, width, seed=5), _images(5, height, width, seed=6).float() / 255.0):
        ahead = spec.apply(images)
        assert ahead.dtype == torch.uint8 and min(ahead.shape[-2:]) == 28
        full = reward.score(images, PROMPTS)  # the model's own preprocessing, full resolution
        torch.testing.assert_close(reward(ahead, PROMPTS), full, atol=1e-6, rtol=0)
        torch.testing.assert_close(spec.apply(ahead), ahead, atol=0, rtol=0)  # twice is once


def test_unquantised_or_padded_pil_preprocessing_declares_nothing():
    # no exact counterpart a rollout actor could compute: such a model gets full resolution
    assert ImagePreprocess(size=28, mode="pad").input() is None
    assert ImagePreprocess(size=28, mode="crop", quantize=False).input() is None
    assert ImagePreprocess(size=28, mode="crop", resize_to=32).input().size == 32  # the resize, not the crop
