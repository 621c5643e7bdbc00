"""OpenAI-compatible chat client that asks a served judge (vLLM / SGLang serving UnifiedReward)
about one image at a time, a batch concurrently.

Each question is ``POST {base_url}/chat/completions`` with one user message holding the image as a
base64 JPEG data URL followed by the question text, ``temperature=0``. Per request:

- bounded in time: every socket operation has ``timeout_s`` and the whole exchange (connect,
  send, receive the body) is cut once ``timeout_s`` wall-clock seconds have passed (checked as
  each piece of the body arrives); the body is capped at
  :data:`MAX_RESPONSE_BYTES`;
- retried up to ``max_retries`` times on connection errors (also a body cut short), timeouts,
  HTTP 429 and 5xx, sleeping
  ``min(backoff_s * 2**k, max_backoff_s)`` before retry ``k + 1``; other 4xx and malformed bodies
  are not retried;
- a request that still fails yields a :class:`JudgeAnswer` with ``error`` set - never an exception
  and never a made-up answer.

At most ``max_workers`` requests are in flight at once. Environment proxies are ignored unless
``use_env_proxy`` (the judge normally lives inside the cluster).
"""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import requests
from PIL import Image

from mixgrpo_ray.rewards.unified.unified_prompts import JudgeAnswer

#: largest response body accepted (a judge answer is a few KB)
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


class _Retryable(Exception):
    """A failure worth another attempt (server overloaded or erroring, network trouble)."""


class _Fatal(Exception):
    """A failure another attempt will not fix (bad request, malformed body)."""


def jpeg_bytes(image: Image.Image, quality: int = 95) -> bytes:
    """The image as JPEG at ``quality`` (PIL's encoder, as the reference client uses)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def jpeg_round_trip(image: Image.Image, quality: int = 95) -> Image.Image:
    """The RGB image a server decodes from :func:`jpeg_bytes` of ``image``."""
    with Image.open(io.BytesIO(jpeg_bytes(image, quality))) as decoded:
        return decoded.convert("RGB")


def jpeg_data_url(image: Image.Image, quality: int = 95) -> str:
    """``data:image/jpeg;base64,...`` of an RGB image."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(image, quality)).decode("ascii")


class OpenAIChatJudge:
    """Asks an OpenAI-compatible chat endpoint one question per image."""

    def __init__(
        self,
        base_url: str,
        model: str = "UnifiedReward",
        timeout_s: float = 60.0,
        max_retries: int = 2,
        backoff_s: float = 1.0,
        max_backoff_s: float = 10.0,
        max_workers: int = 8,
        max_tokens: int = 4096,
        api_key: str | None = None,
        jpeg_quality: int = 95,
        use_env_proxy: bool = False,
    ):
        if timeout_s <= 0 or max_retries < 0 or max_workers < 1 or max_tokens < 1:
            raise ValueError("need timeout_s > 0, max_retries >= 0, max_workers >= 1, max_tokens >= 1")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.max_workers = int(max_workers)
        self.max_tokens = int(max_tokens)
        self.jpeg_quality = int(jpeg_quality)
        self.session = requests.Session()
        self.session.trust_env = use_env_proxy
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=self.max_workers, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def payload(self, image: Image.Image, question: str) -> dict:
        """The chat-completions request body for one image and question."""
        return {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": jpeg_data_url(image, self.jpeg_quality)}},
                        {"type": "text", "text": question},
                    ],
                }
            ],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }

    def _post_once(self, body: bytes) -> str:
        """One bounded request; the answer text, or ``_Retryable`` / ``_Fatal``."""
        deadline = time.monotonic() + self.timeout_s
        try:
            with self.session.post(
                self.url, data=body, headers=self.headers, timeout=(self.timeout_s, self.timeout_s), stream=True
            ) as resp:
                raw = bytearray()
                for chunk in resp.iter_content(chunk_size=None):
                    raw += chunk
                    if len(raw) > MAX_RESPONSE_BYTES:
                        raise _Fatal(f"response larger than {MAX_RESPONSE_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise _Retryable(f"response not complete within {self.timeout_s:g} s")
                status = resp.status_code
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        except requests.RequestException as exc:
            raise _Fatal(f"{type(exc).__name__}: {exc}") from None
        text = raw.decode("utf-8", errors="replace")
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}: {text[:200]}")
        if status != 200:
            raise _Fatal(f"HTTP {status}: {text[:200]}")
        try:
            content = json.loads(text)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Fatal(f"malformed chat completion: {text[:200]}") from None
        if not isinstance(content, str):
            raise _Fatal(f"chat completion content is {type(content).__name__}, not text")
        return content

    def ask(self, image: Image.Image, question: str) -> JudgeAnswer:
        """The judge's answer to ``question`` about ``image`` (retried; never raises for
        network or server failures)."""
        body = json.dumps(self.payload(image, question)).encode("utf-8")
        error = "no attempt made"
        for attempt in range(1, self.max_retries + 2):
            try:
                return JudgeAnswer(text=self._post_once(body), attempts=attempt)
            except _Fatal as exc:
                return JudgeAnswer(text=None, error=str(exc), attempts=attempt)
            except _Retryable as exc:
                error = str(exc)
            if attempt <= self.max_retries:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))
        return JudgeAnswer(text=None, error=error, attempts=self.max_retries + 1)

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[JudgeAnswer]:
        """Answers for each ``(image, question)`` pair, in order, at most ``max_workers`` in flight."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        if len(images) <= 1:
            return [self.ask(i, q) for i, q in zip(images, questions)]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(images))) as pool:
            return list(pool.map(self.ask, images, questions))

    def close(self) -> None:
        self.session.close()
