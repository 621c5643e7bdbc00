"""UnifiedReward: answer parsing, the HTTP judge client against a local stub server, and the
in-process Qwen2.5-VL judge on tiny checkpoints built here (random, and a scripted bigram model
whose greedy answer is known by construction)."""

from __future__ import annotations

import base64
import inspect
import io
import math
import re
import time

import numpy as np
import pytest
import torch
from PIL import Image

from mixgrpo_ray.rewards.registry import build_reward
from mixgrpo_ray.rewards.unified.unified_local import FALLBACK_PROMPT, QwenVLJudge
from mixgrpo_ray.rewards.unified.unified_prompts import build_question, parse_score
from mixgrpo_ray.rewards.unified.unifiedreward import UnifiedRewardReward, to_pil
from stub_chat_server import StubChatServer
from tiny_qwen import write_tiny_qwen

PROMPTS = ["a red cat", "two dogs on a beach", "a castle at night", "a bowl of fruit", "a green car", "the sea"]
SEMANTIC_ANSWERS = {
    p: f'Word-wise Scores: [["{p.split()[-1]}", 0.1]]\n\nAlignment Score (1-5): {1 + 0.5 * i}\n'
    f"Coherence Score (1-5): 4\nStyle Score (1-5): 3"
    for i, p in enumerate(PROMPTS)
}
SCORE_ANSWERS = {p: f"{p} (object): 1\nFinal Score: {2 + 0.25 * i}" for i, p in enumerate(PROMPTS)}


def _images(n: int, seed: int = 0, h: int = 64, w: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def _http_reward(stub: StubChatServer, **options) -> UnifiedRewardReward:
    opts = dict(backend="http", base_url=stub.base_url, timeout_s=5.0, max_retries=2, backoff_s=0.01, max_workers=4)
    opts.update(options)
    return UnifiedRewardReward(**opts)


# ---------------------------------------------------------------- parsing


def test_parse_score_on_given_answers():
    assert parse_score("semantic", SEMANTIC_ANSWERS[PROMPTS[3]]) == 2.5
    assert parse_score("semantic", "Alignment Score (1-5): 4") == 4.0
    assert parse_score("score", "ocean (location): 0\nclouds (object): 1\nFinal Score: 2.33") == 2.33
    assert parse_score("score", "Final Score: 4\nFinal Score: 1") == 4.0  # first occurrence
    assert parse_score("score", "Final Score:\n 3.25") == 3.25  # any whitespace after the colon
    # the reference reads one digit 0-5 and optional decimals, whatever follows
    assert parse_score("score", "Final Score: 10") == 1.0
    assert parse_score("score", "Final Score: 45") == 4.0
    assert parse_score("score", "Final Score: 5.9") == 5.9
    assert parse_score("score", "Final Score: 3.") == 3.0
    assert parse_score("score", "Final Score: 4/5") == 4.0
    assert parse_score("score", "Final Score: 7\nFinal Score: 2") == 2.0  # a later well-formed line counts
    # no digit 0-5 right after the label (markdown bold included), absent, wrong template, empty: None
    assert parse_score("semantic", "**Alignment Score (1-5):** 3.75") is None
    assert parse_score("score", "Final Score: **4**") is None
    assert parse_score("score", "Final Score: 7") is None
    assert parse_score("score", "Final Score: -1") is None
    assert parse_score("score", "final score: 3") is None
    assert parse_score("semantic", "Final Score: 4") is None
    assert parse_score("score", "Alignment Score (1-5): 4") is None
    assert parse_score("score", "Final Score: none") is None
    assert parse_score("score", "") is None and parse_score("score", None) is None
    with pytest.raises(ValueError, match="template"):
        parse_score("pairwise", "Final Score: 3")


#: MixGRPO's UnifiedRewardModel.extract_alignment_score / extract_final_score, restated
REFERENCE_PATTERNS = {
    "semantic": r"Alignment Score \(1-5\):\s*([0-5](?:\.\d+)?)",
    "score": r"Final Score:\s*([0-5](?:\.\d+)?)",
}


def _reference_parse(template: str, text: str) -> float | None:
    match = re.search(REFERENCE_PATTERNS[template], text)
    return float(match.group(1)) if match else None


def test_parse_score_accepts_and_rejects_as_the_reference():
    values = ["0", "1", "3.5", "5", "5.0", "5.75", "6", "7.5", "9", "10", "12.5", "-2", "+3", "0.", ".5", "2,5",
              "**4**", "4**", " 4", "\n\t2", "x", "", "3 / 5", "2.333333", "4.", "five"]
    labels = {"semantic": ["Alignment Score (1-5):", "**Alignment Score (1-5):**", "Alignment Score:",
                           "alignment score (1-5):", "Alignment Score (1-5) :"],
              "score": ["Final Score:", "**Final Score:**", "Final score:", "Final Score :", "FinalScore:"]}
    checked = 0
    for template, names in labels.items():
        for name in names:
            for value in values:
                for text in (f"{name}{value}", f"{name} {value}", f"intro\n{name} {value}\nmore", f"{name} {value}\n{name} 2"):
                    assert parse_score(template, text) == _reference_parse(template, text), (template, text)
                    checked += 1
    assert checked > 500


def test_max_new_tokens_default_is_the_references_4096(random_folder):
    reward = UnifiedRewardReward(backend="http", base_url="http://127.0.0.1:1/v1")
    assert reward.judge.max_tokens == 4096
    assert reward.judge.payload(Image.new("RGB", (8, 8)), "q")["max_tokens"] == 4096
    assert inspect.signature(QwenVLJudge).parameters["max_new_tokens"].default == 4096
    local = UnifiedRewardReward(backend="local", model_path=str(random_folder), dtype="float32")
    assert local.judge.max_new_tokens == 4096


def test_questions_carry_the_caption():
    q = build_question("semantic", "a red cat")
    assert q.endswith("Text Caption: [a red cat]") and "Alignment Score (1-5): X" in q
    assert build_question("score", "{weird} caption").endswith("Text Caption: [{weird} caption]")


# ---------------------------------------------------------------- HTTP backend


@pytest.mark.parametrize("template,answers", [("semantic", SEMANTIC_ANSWERS), ("score", SCORE_ANSWERS)])
def test_http_scores_both_templates(template, answers):
    with StubChatServer(answers) as stub:
        reward = _http_reward(stub, template=template)
        scores = reward(_images(len(PROMPTS)), PROMPTS)
    expected = torch.tensor([parse_score(template, answers[p]) for p in PROMPTS])
    torch.testing.assert_close(scores, expected)
    assert reward.counters == {"images": 6, "scored": 6, "request_failures": 0, "parse_failures": 0}
    # the request: OpenAI chat format, image first as a JPEG data URL, then the question
    assert set(stub.paths) == {"/v1/chat/completions"}
    body = next(b for b in stub.requests if b["messages"][0]["content"][1]["text"].endswith(f"[{PROMPTS[0]}]"))
    assert body["model"] == "UnifiedReward" and body["temperature"] == 0
    image_part, text_part = body["messages"][0]["content"]
    assert text_part == {"type": "text", "text": build_question(template, PROMPTS[0])}
    prefix = "data:image/jpeg;base64,"
    assert image_part["type"] == "image_url" and image_part["image_url"]["url"].startswith(prefix)
    decoded = Image.open(io.BytesIO(base64.b64decode(image_part["image_url"]["url"][len(prefix):])))
    assert decoded.format == "JPEG" and decoded.size == (64, 64)
    assert body["max_tokens"] == 4096


def test_http_batch_equals_one_by_one_with_bounded_concurrency():
    images = _images(len(PROMPTS), seed=1)
    with StubChatServer(SEMANTIC_ANSWERS, delay_s=0.05) as stub:
        reward = _http_reward(stub, max_workers=3)
        batched = reward(images, PROMPTS)
        single = torch.cat([reward(images[i : i + 1], PROMPTS[i : i + 1]) for i in range(len(PROMPTS))])
    torch.testing.assert_close(batched, single)
    assert 1 < stub.max_in_flight <= 3


def test_http_retries_a_500_then_succeeds():
    with StubChatServer(SCORE_ANSWERS) as stub:
        stub.then(("status", 500), ("status", 503))
        reward = _http_reward(stub, template="score", max_workers=1)
        answer = reward.judge.ask(to_pil(_images(1))[0], build_question("score", PROMPTS[2]))
        assert answer.ok and answer.attempts == 3
        assert parse_score("score", answer.text) == 2.5
        stub.then(("status", 500))
        assert reward(_images(1), PROMPTS[2:3]).item() == 2.5
        assert len(stub.requests) == 5 and reward.failures == 0


def test_http_gives_up_after_max_retries():
    with StubChatServer(SCORE_ANSWERS) as stub:
        stub.then(("status", 500), ("status", 500), ("status", 500))
        reward = _http_reward(stub, template="score", max_retries=2)
        score = reward(_images(1), PROMPTS[:1])
        assert len(stub.requests) == 3
    assert math.isnan(score.item())
    assert reward.counters["request_failures"] == 1 and reward.failures == 1
    assert "3 attempt(s)" in reward.last_failures[0][1] and "HTTP 500" in reward.last_failures[0][1]


def test_http_client_errors_are_not_retried():
    with StubChatServer(SCORE_ANSWERS) as stub:
        stub.then(("status", 400), ("garbage",))
        reward = _http_reward(stub, template="score", max_workers=1)
        scores = reward(_images(2), PROMPTS[:2])
        assert len(stub.requests) == 2
    assert torch.isnan(scores).all() and reward.counters["request_failures"] == 2
    assert "HTTP 400" in reward.last_failures[0][1] and "malformed" in reward.last_failures[1][1]


def test_http_hung_server_times_out():
    with StubChatServer(SCORE_ANSWERS) as stub:
        stub.then(("hang",), ("hang",))
        reward = _http_reward(stub, template="score", timeout_s=0.3, max_retries=1, max_workers=1)
        start = time.monotonic()
        score = reward(_images(1), PROMPTS[:1])
        elapsed = time.monotonic() - start
    assert math.isnan(score.item()) and reward.counters["request_failures"] == 1
    assert "Timeout" in reward.last_failures[0][1]
    assert 0.6 <= elapsed < 3.0  # two attempts of 0.3 s each, bounded


def test_http_unreachable_server_is_a_failure():
    with StubChatServer() as stub:
        url = stub.base_url
    reward = UnifiedRewardReward(backend="http", base_url=url, timeout_s=1.0, max_retries=1, backoff_s=0.01)
    assert math.isnan(reward(_images(1), PROMPTS[:1]).item())
    assert "ConnectionError" in reward.last_failures[0][1]


def test_http_unparsable_answer_is_nan_not_zero():
    answers = dict(SEMANTIC_ANSWERS)
    answers[PROMPTS[1]] = "The image is nice. Alignment: good."
    with StubChatServer(answers) as stub:
        reward = _http_reward(stub)
        scores = reward(_images(3), PROMPTS[:3])
    assert math.isnan(scores[1].item())
    torch.testing.assert_close(scores[[0, 2]], torch.tensor([1.0, 2.0]))
    assert reward.counters == {"images": 3, "scored": 2, "request_failures": 0, "parse_failures": 1}
    assert reward.last_failures[0][0] == 1 and "Alignment: good" in reward.last_failures[0][1]


def test_options_are_checked_and_registry_builds():
    with pytest.raises(ValueError, match="base_url"):
        UnifiedRewardReward(backend="http")
    with pytest.raises(ValueError, match="model_path"):
        UnifiedRewardReward(backend="local")
    with pytest.raises(ValueError, match="backend"):
        UnifiedRewardReward(backend="grpc", base_url="http://127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="template"):
        UnifiedRewardReward(base_url="http://127.0.0.1:1/v1", template="pairwise")
    reward = build_reward("unifiedreward", base_url="http://127.0.0.1:1/v1", template="score")
    assert isinstance(reward, UnifiedRewardReward) and reward.can_fail and reward.name == "unifiedreward"
    # the judge sees a JPEG of the image as sampled (and Qwen2.5-VL sizes it by pixel count): it
    # declares no input, so it gets full resolution
    assert reward.input() is None


# ---------------------------------------------------------------- local backend


@pytest.fixture(scope="module")
def random_folder(tmp_path_factory):
    return write_tiny_qwen(tmp_path_factory.mktemp("qwen_random"))


@pytest.fixture(scope="module")
def random_judge(random_folder):
    return QwenVLJudge(str(random_folder), dtype="float32", max_new_tokens=6, batch_size=3)


@pytest.fixture(scope="module")
def scripted_folder(tmp_path_factory):
    return write_tiny_qwen(tmp_path_factory.mktemp("qwen_scripted"), scripted_answer="Final Score:3")


def test_local_prompt_expands_image_pad_tokens(random_judge):
    judge = random_judge
    question = build_question("score", "a cat")
    assert judge.prompt_text(question) == FALLBACK_PROMPT.format(question=question)
    # 56x56 -> 4x4 patches -> 4 tokens; 56x112 -> 4x8 -> 8; 112x112 -> 8x8 -> 16
    images = [Image.new("RGB", size, color) for size, color in (((56, 56), "red"), ((112, 56), "blue"), ((112, 112), "white"))]
    batch = judge.encode(images, [question, build_question("semantic", "a dog"), question])
    grids = batch["image_grid_thw"]
    assert grids.tolist() == [[1, 4, 4], [1, 4, 8], [1, 8, 8]]
    n_image = (batch["input_ids"] == judge.image_token_id).sum(1)
    assert n_image.tolist() == (grids.prod(1) // judge.merge_size**2).tolist() == [4, 8, 16]
    assert batch["pixel_values"].shape[0] == int(grids.prod(1).sum())
    assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == judge.image_token_id)
    # left padding: every row ends with the generation prompt, padding only on the left
    mask = batch["attention_mask"]
    assert mask[:, -1].all() and (mask.diff(dim=1) >= 0).all()
    assert mask[1].all() and not mask[0].all()
    # the image tokens sit between vision start and end, as one run
    ids = batch["input_ids"][0][mask[0].bool()].tolist()
    start = judge.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    at = ids.index(start)
    assert ids[at + 1 : at + 5] == [judge.image_token_id] * 4 and ids[at + 5] == judge.tokenizer.convert_tokens_to_ids("<|vision_end|>")


def _jpeg_q95(image: Image.Image) -> Image.Image:
    """What a server decodes from the reference client's ``image.save(buf, "JPEG", quality=95)``."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def test_local_judge_sees_the_jpeg_q95_round_trip(random_judge):
    judge = random_judge
    images = to_pil(_images(2, seed=9, h=56, w=84))
    questions = [build_question("score", p) for p in PROMPTS[:2]]
    sent = judge.encode(images, questions)["pixel_values"]
    via_jpeg = judge.image_processor(images=[_jpeg_q95(im) for im in images], return_tensors="pt")["pixel_values"]
    raw = judge.image_processor(images=images, return_tensors="pt")["pixel_values"]
    assert torch.equal(sent, via_jpeg)
    assert (sent - raw).abs().max() > 1e-3  # JPEG changes noise images visibly


def test_local_and_http_backends_send_the_same_pixels(random_folder):
    images = _images(2, seed=10, h=56, w=56)
    with StubChatServer(SCORE_ANSWERS) as stub:
        _http_reward(stub, template="score")(images, PROMPTS[:2])
        prefix = "data:image/jpeg;base64,"
        urls = {b["messages"][0]["content"][1]["text"]: b["messages"][0]["content"][0]["image_url"]["url"]
                for b in stub.requests}
    judge = UnifiedRewardReward(backend="local", model_path=str(random_folder), dtype="float32").judge
    for image, prompt in zip(to_pil(images), PROMPTS[:2]):
        url = urls[build_question("score", prompt)]
        served = Image.open(io.BytesIO(base64.b64decode(url[len(prefix):]))).convert("RGB")
        pixels = [np.asarray(im) for im in (served, judge.as_sent(image), _jpeg_q95(image))]
        assert np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[1], pixels[2])


def test_local_generation_is_greedy_continuation(random_judge):
    judge = random_judge
    images = to_pil(_images(2, seed=3, h=56, w=84))
    questions = [build_question("score", p) for p in PROMPTS[:2]]
    texts = judge.generate(images, questions)
    # reference: greedy loop over full forwards (no cache) on the same encoded inputs
    batch = judge.encode(images[:1], questions[:1])
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"]
    new = []
    with torch.no_grad():
        for _ in range(judge.max_new_tokens):
            logits = judge.model(
                input_ids=ids, attention_mask=mask, pixel_values=batch["pixel_values"],
                image_grid_thw=batch["image_grid_thw"], mm_token_type_ids=types,
            ).logits[:, -1]
            token = logits.argmax(-1, keepdim=True)
            new.append(token.item())
            if token.item() in judge.eos_token_ids:
                break
            ids = torch.cat([ids, token], 1)
            mask = torch.cat([mask, torch.ones_like(token)], 1)
            types = torch.cat([types, torch.zeros_like(token, dtype=types.dtype)], 1)
    assert texts[0] == judge.tokenizer.decode(new, skip_special_tokens=True)
    # batched equals one by one
    assert texts == [judge.generate([im], [q])[0] for im, q in zip(images, questions)]


def test_local_random_model_answers_are_failures(random_folder):
    reward = UnifiedRewardReward(
        backend="local", template="score", model_path=str(random_folder), dtype="float32", max_new_tokens=6
    )
    images = _images(3, h=56, w=56)
    answers = reward.judge.answer(to_pil(images), [build_question("score", p) for p in PROMPTS[:3]])
    assert all(a.ok and parse_score("score", a.text) is None for a in answers)
    scores = reward(images, PROMPTS[:3])
    assert torch.isnan(scores).all()
    assert reward.counters["parse_failures"] == 3 and reward.counters["scored"] == 0


def test_local_scripted_model_end_to_end(scripted_folder):
    reward = build_reward(
        "unifiedreward", backend="local", template="score", model_path=str(scripted_folder),
        dtype="float32", max_new_tokens=32, batch_size=2,
    )
    images = _images(3, seed=5, h=56, w=70)
    scores = reward(images, PROMPTS[:3])
    torch.testing.assert_close(scores, torch.full((3,), 3.0))
    assert reward.counters == {"images": 3, "scored": 3, "request_failures": 0, "parse_failures": 0}
    # same answer text, asked for the semantic template: no alignment line -> NaN and a parse failure
    reward.template = "semantic"
    assert torch.isnan(reward(images[:1], PROMPTS[:1])).all() and reward.counters["parse_failures"] == 1
