"""In-process UnifiedReward judge: a Qwen2.5-VL checkpoint run with transformers, greedy decoding.

Builds what ``Qwen2_5_VLProcessor`` would, without it (``AutoProcessor`` drags in the video
processor, which needs torchvision):

1. prompt text = the checkpoint's chat template applied to one user turn ``[image, question]``
   (the order the HTTP client sends), with the generation prompt; it holds one ``<|image_pad|>``;
2. image -> JPEG at ``jpeg_quality`` (95) and decoded again, so the judge sees what it sees behind
   the HTTP backend and in the reference (which sends a quality-95 JPEG) ->
   ``Qwen2VLImageProcessor`` (PIL backend) -> ``pixel_values`` and ``image_grid_thw``;
3. the ``<|image_pad|>`` id is repeated ``grid_t * grid_h * grid_w // merge_size**2`` times;
4. batches are left-padded; ``mm_token_type_ids`` (1 on image tokens) lets transformers 5 build the
   3-D mRoPE positions;
5. ``generate`` with ``do_sample=False`` and the checkpoint's end-of-turn tokens; the new tokens are
   decoded with special tokens skipped.

Exceptions (out of memory, a broken checkpoint) propagate: they are not per-image judge failures.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Sequence

import torch
from PIL import Image
from transformers import AutoTokenizer, GenerationConfig, Qwen2_5_VLForConditionalGeneration

try:
    from transformers import Qwen2VLImageProcessorPil as _ImageProcessor
except ImportError:  # transformers 4.x: the PIL implementation is the default class
    from transformers import Qwen2VLImageProcessor as _ImageProcessor

from mixgrpo_ray.rewards.unified.unified_http import jpeg_round_trip
from mixgrpo_ray.rewards.unified.unified_prompts import JudgeAnswer

IMAGE_PAD = "<|image_pad|>"
#: used when the checkpoint ships no chat template: the Qwen2-VL chat format
FALLBACK_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def _folder_chat_template(model_path: str) -> str | None:
    """A processor chat template stored beside the weights (``chat_template.json`` / ``.jinja``)."""
    json_path = os.path.join(model_path, "chat_template.json")
    if os.path.isfile(json_path):
        with open(json_path) as f:
            return json.load(f).get("chat_template")
    jinja_path = os.path.join(model_path, "chat_template.jinja")
    if os.path.isfile(jinja_path):
        with open(jinja_path) as f:
            return f.read()
    return None


class QwenVLJudge:
    """Qwen2.5-VL judge in this process.

    Options: ``model_path`` (local folder), ``device``, ``dtype`` (torch dtype name),
    ``max_new_tokens`` (default 4096, as the reference), ``batch_size`` (questions per
    ``generate`` call), ``min_pixels`` / ``max_pixels`` (override the checkpoint's image-resolution
    bounds), ``jpeg_quality`` (default 95; ``None`` feeds the images as given).
    """

    def __init__(
        self,
        model_path: str,
        device: str = "cpu",
        dtype: str = "bfloat16",
        max_new_tokens: int = 4096,
        batch_size: int = 4,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        jpeg_quality: int | None = 95,
    ):
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        self.device = torch.device(device)
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.jpeg_quality = None if jpeg_quality is None else int(jpeg_quality)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        bounds = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        self.image_processor = _ImageProcessor.from_pretrained(model_path, **bounds)
        torch_dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=torch_dtype)
        self.model.to(self.device).eval()
        self.chat_template = self.tokenizer.chat_template or _folder_chat_template(model_path)
        self.image_token_id = int(self.model.config.image_token_id)
        if self.tokenizer.convert_tokens_to_ids(IMAGE_PAD) != self.image_token_id:
            raise ValueError(f"tokenizer's {IMAGE_PAD} id differs from the model's image_token_id")
        self.merge_size = int(self.image_processor.merge_size)
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos)
        self._pass_mm_token_types = "mm_token_type_ids" in inspect.signature(self.model.forward).parameters

    def prompt_text(self, question: str) -> str:
        """The chat-formatted prompt for one image and ``question`` (one ``<|image_pad|>``)."""
        if self.chat_template is None:
            text = FALLBACK_PROMPT.format(question=question)
        else:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            text = self.tokenizer.apply_chat_template(
                messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
            )
        if text.count(IMAGE_PAD) != 1:
            raise ValueError(f"chat prompt holds {text.count(IMAGE_PAD)} {IMAGE_PAD} tokens, expected 1")
        return text

    def as_sent(self, image: Image.Image) -> Image.Image:
        """The RGB image the judge sees: ``image`` round-tripped through JPEG at ``jpeg_quality``."""
        if self.jpeg_quality is None:
            return image.convert("RGB")
        return jpeg_round_trip(image, self.jpeg_quality)

    def encode(self, images: Sequence[Image.Image], questions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Left-padded model inputs for a batch: ``input_ids``, ``attention_mask``,
        ``pixel_values``, ``image_grid_thw`` and (transformers 5) ``mm_token_type_ids``."""
        vision = self.image_processor(images=[self.as_sent(im) for im in images], return_tensors="pt")
        grids = vision["image_grid_thw"]
        rows = []
        for question, grid in zip(questions, grids):
            ids = self.tokenizer(self.prompt_text(question), add_special_tokens=False)["input_ids"]
            n_image = int(grid.prod()) // self.merge_size**2
            at = ids.index(self.image_token_id)
            rows.append(ids[:at] + [self.image_token_id] * n_image + ids[at + 1 :])
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, length - len(row) :] = torch.tensor(row)
            attention_mask[i, length - len(row) :] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": vision["pixel_values"],
            "image_grid_thw": grids,
        }
        if self._pass_mm_token_types:
            batch["mm_token_type_ids"] = (input_ids == self.image_token_id).to(torch.int32)
        return batch

    @torch.no_grad()
    def generate(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[str]:
        """Greedy answers for one batch."""
        batch = self.encode(images, questions)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
        # sampling knobs at their neutral values, so the checkpoint's sampling defaults do not leak in
        config = GenerationConfig(
            do_sample=False,
            temperature=1.0,
            top_p=1.0,
            top_k=50,
            max_new_tokens=self.max_new_tokens,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
        )
        out = self.model.generate(**batch, generation_config=config)
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[JudgeAnswer]:
        """Answers for each ``(image, question)`` pair, in order, ``batch_size`` per ``generate``."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        answers: list[JudgeAnswer] = []
        for start in range(0, len(images), self.batch_size):
            texts = self.generate(images[start : start + self.batch_size], questions[start : start + self.batch_size])
            answers.extend(JudgeAnswer(text=t) for t in texts)
        return answers

    def close(self) -> None:
        """Nothing to release beyond what garbage collection frees."""
