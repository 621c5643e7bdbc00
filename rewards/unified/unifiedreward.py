"""UnifiedReward: a Qwen2.5-VL judge asked to rate each image against its prompt.

The score is the number the judge writes after ``Alignment Score (1-5):`` (template
``"semantic"``) or ``Final Score:`` (template ``"score"``), parsed exactly as the MixGRPO reference
parses it (one digit 0-5 plus optional decimals, see :mod:`mixgrpo_ray.rewards.unified.unified_prompts`). As in the
reference, each image is sent to the judge as a JPEG at quality 95 (the local backend encodes and
decodes it the same way), decoding is greedy (``temperature=0``) and up to 4096 new tokens are
allowed. Two backends give the judge's answers:

- ``backend="http"``: an OpenAI-compatible server (vLLM serving ``CodeGoat24/UnifiedReward-*`` as
  model ``UnifiedReward``), see :mod:`mixgrpo_ray.rewards.unified.unified_http`;
- ``backend="local"``: the checkpoint in this process with transformers, see
  :mod:`mixgrpo_ray.rewards.unified.unified_local`.

An image whose request failed (after retries) or whose answer holds no parsable score gets
``NaN``, never a stand-in value; :attr:`UnifiedRewardReward.counters` counts them
(``request_failures``, ``parse_failures``) and :attr:`last_failures` lists ``(index, reason)``
for the latest batch. This deliberately differs from the reference, whose ``compute_reward``
turns a failed judgement into a reward of 0.0 (``float(reward) if success else 0.0``): here it
stays NaN and is excluded from that reward's statistics instead of counting as a worst score.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Sequence

import torch
from PIL import Image

from mixgrpo_ray.config.root import REDACTED
from mixgrpo_ray.models.reward import RewardModel, as_uint8
from mixgrpo_ray.rewards.unified.unified_prompts import SCORE_MAX, SCORE_MIN, build_question, check_template, parse_score

logger = logging.getLogger(__name__)

BACKENDS = ("http", "local")
API_KEY_ENV = "UNIFIEDREWARD_API_KEY"  # the judge's API key, when not in the config
BASE_URL_ENV = "UNIFIEDREWARD_BASE_URL"  # the judge's endpoint, when not in the config


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """RGB PIL images from a ``(B, 3, H, W)`` uint8 or ``[0, 1]`` float batch."""
    return [Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()) for img in as_uint8(images).cpu()]


class UnifiedRewardReward(RewardModel):
    """UnifiedReward judge score, ``NaN`` where the judge failed.

    Options:
      backend: ``"http"`` or ``"local"``.
      template: ``"semantic"`` (alignment score) or ``"score"`` (final score).
      HTTP: base_url (e.g. ``http://judge-host:8000/v1``; required), model (served model name),
        timeout_s (per request), max_retries, backoff_s, max_workers (requests in flight),
        api_key, max_new_tokens (sent as ``max_tokens``; default 4096 as the reference).
      local: model_path (checkpoint folder; required), device, dtype, max_new_tokens (default
        4096), batch_size (questions per ``generate``), min_pixels / max_pixels (image resolution
        bounds).
      both: jpeg_quality (default 95, as the reference): the JPEG quality the image is sent at
        (HTTP) or round-tripped through before the judge sees it (local).
    """

    name = "unifiedreward"
    score_range = (SCORE_MIN, SCORE_MAX)
    can_fail = True

    def __init__(
        self,
        backend: str = "http",
        template: str = "semantic",
        base_url: str | None = None,
        model: str = "UnifiedReward",
        timeout_s: float = 60.0,
        max_retries: int = 2,
        backoff_s: float = 1.0,
        max_workers: int = 8,
        api_key: str | None = None,
        model_path: str | None = None,
        device: str = "cpu",
        dtype: str = "bfloat16",
        max_new_tokens: int = 4096,
        batch_size: int = 4,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        jpeg_quality: int = 95,
    ):
        self.template = check_template(template)
        self.backend = backend
        # the endpoint and key may come from the environment instead of the config; a key is
        # never written to config.yaml (REDACTED there), logs, metrics or error messages
        base_url = base_url or os.environ.get(BASE_URL_ENV)
        if api_key in (None, "", REDACTED):
            api_key = os.environ.get(API_KEY_ENV) or None
        if backend == "http":
            if not base_url:
                raise ValueError(f"unifiedreward backend 'http' needs base_url (e.g. http://judge-host:8000/v1) "
                                 f"in rewards.<name>.options or the {BASE_URL_ENV} environment variable")
            from mixgrpo_ray.rewards.unified.unified_http import OpenAIChatJudge

            self.judge = OpenAIChatJudge(
                base_url,
                model=model,
                timeout_s=timeout_s,
                max_retries=max_retries,
                backoff_s=backoff_s,
                max_workers=max_workers,
                max_tokens=max_new_tokens,
                api_key=api_key,
                jpeg_quality=jpeg_quality,
            )
        elif backend == "local":
            if not model_path:
                raise ValueError("unifiedreward backend 'local' needs model_path (a Qwen2.5-VL checkpoint folder)")
            from mixgrpo_ray.rewards.unified.unified_local import QwenVLJudge

            self.judge = QwenVLJudge(
                model_path,
                device=device,
                dtype=dtype,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                min_pixels=min_pixels,
                max_pixels=max_pixels,
                jpeg_quality=jpeg_quality,
            )
        else:
            raise ValueError(f"unknown unifiedreward backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
        self.counters = {"images": 0, "scored": 0, "request_failures": 0, "parse_failures": 0}
        self.last_failures: list[tuple[int, str]] = []

    @property
    def failures(self) -> int:
        """Images that got ``NaN`` since construction."""
        return self.counters["request_failures"] + self.counters["parse_failures"]

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        questions = [build_question(self.template, p) for p in prompts]
        answers = self.judge.answer(to_pil(images), questions)
        scores = torch.full((len(answers),), math.nan, dtype=torch.float32)
        failures: list[tuple[int, str]] = []
        for i, answer in enumerate(answers):
            if not answer.ok:
                self.counters["request_failures"] += 1
                failures.append((i, f"request failed after {answer.attempts} attempt(s): {answer.error}"))
                continue
            value = parse_score(self.template, answer.text)
            if value is None:
                self.counters["parse_failures"] += 1
                failures.append((i, f"no {self.template!r} score in answer: {answer.text[:120]!r}"))
                continue
            scores[i] = value
        self.counters["images"] += len(answers)
        self.counters["scored"] += len(answers) - len(failures)
        self.last_failures = failures
        if failures:
            logger.warning(
                "unifiedreward: %d of %d images failed (first: image %d, %s)",
                len(failures), len(answers), failures[0][0], failures[0][1],
            )
        return scores

    def close(self) -> None:
        """Release the backend's connections."""
        self.judge.close()
