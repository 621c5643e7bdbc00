"""Shared machinery of the CLIP-family rewards (HPS v2.1, PickScore, CLIP score).

* :class:`~mixgrpo_ray.rewards.clip.clip_preprocess.ImagePreprocess` (in ``clip_preprocess``) turns ``(B, 3, H, W)`` images into normalised CLIP pixel tensors with
  torch alone (no torchvision, no PIL round trip): CLIP's shortest-edge resize + centre crop, or
  open_clip's longest-edge resize + zero pad (HPS). Two resampling pipelines:
  ``"pil"`` reproduces PIL on 8-bit images (what transformers' CLIP image processor does): two
  separable antialiased bicubic passes, width first, in PIL's fixed point, each rounded to 8-bit
  levels (PIL's pixels exactly);
  ``"tensor"`` reproduces torchvision on a float tensor (open_clip's ``ToTensor`` then
  ``ResizeMaxSize``, used by HPS): one antialiased bicubic pass on ``[0, 1]`` floats, no rounding,
  no clamping.
* :class:`ClipEmbedder` holds a transformers ``CLIPModel`` with its tokenizer and preprocessing,
  and computes L2-normalised image and text embeddings in batches on a chosen device and dtype
  (optionally under autocast, as HPS's reference runs fp32 weights under CUDA autocast); rewards
  turn the per-pair cosine into their score.
* Small helpers: device/dtype/autocast resolution, open_clip's prompt cleaning (always with
  ``ftfy``, a required dependency), and loading a local folder or hub id with a one-line error
  naming the option to fix.
"""

from __future__ import annotations

import contextlib
import html
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import ftfy
import torch
import torch.nn.functional as F

from mixgrpo_ray.common.dtypes import parse_dtype
from mixgrpo_ray.rewards.clip.clip_preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImagePreprocess  # noqa: F401


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(
    dtype: str | torch.dtype | None, device: torch.device, cuda_default: torch.dtype = torch.float32
) -> torch.dtype:
    """The weights' dtype. ``None``/``"auto"``: ``cuda_default`` on CUDA (float32 unless a reward
    says otherwise: the reference reward codes keep fp32 weights), float32 elsewhere; else one of
    fp32/fp16/bf16 (any spelling)."""
    return parse_dtype(dtype, auto=cuda_default if device.type == "cuda" else torch.float32)


_OFF = ("none", "off", "false", "no", "")


def resolve_autocast(
    autocast: str | torch.dtype | bool | None, device: torch.device, weights: torch.dtype,
    cuda_default: torch.dtype | None = torch.float16,
) -> torch.dtype | None:
    """The autocast dtype to run the model under, or ``None`` for no autocast.

    ``"auto"``: ``cuda_default`` on CUDA when the weights are float32 (what
    ``torch.cuda.amp.autocast()`` does around fp32 weights), else none; ``None``/``False``/
    ``"off"``: none; ``True``: float16; else one of fp16/bf16/fp32 (any spelling) on any device.
    """
    if isinstance(autocast, torch.dtype):
        return autocast
    if autocast is None or autocast is False or str(autocast).lower() in _OFF:
        return None
    if autocast is True:
        return torch.float16
    if autocast == "auto":
        return cuda_default if device.type == "cuda" and weights == torch.float32 else None
    try:
        return parse_dtype(autocast)
    except ValueError:
        raise ValueError(f"unknown autocast {autocast!r}; use auto, off, fp16 or bf16") from None


def clean_prompt_open_clip(text: str) -> str:
    """open_clip's prompt cleaning before BPE (``basic_clean`` then ``whitespace_clean``):
    ``ftfy.fix_text`` (curly quotes become straight, mojibake is repaired), HTML unescaping twice,
    stripped, whitespace runs collapsed to one space, stripped. (Lower-casing is done by the CLIP
    tokenizer's normaliser, as by open_clip's tokenizer.)"""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def pooled_embedding(output: Any) -> torch.Tensor:
    """The projected embedding from ``CLIPModel.get_image_features``/``get_text_features``:
    a tensor on transformers 4.x, an output object with ``.pooler_output`` on 5.x."""
    if isinstance(output, torch.Tensor):
        return output
    for attr in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(output, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find an embedding in {type(output).__name__}")


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a filesystem path rather than a hub id ``owner/name``."""
    return (
        name.startswith(("/", ".", "~"))
        or "\\" in name
        or name.count("/") != 1
    )


def _local_or_id(name: str | Path) -> str:
    """``name`` with ``~`` expanded when it exists locally, else unchanged (a hub id)."""
    local = Path(str(name)).expanduser()
    return str(local) if local.exists() else str(name)


def load_local_or_hub(loader: Callable[[str], Any], name: str | Path | None, reward: str, option: str, what: str) -> Any:
    """``loader(name)`` for a local folder or a hub id; a missing local path or a failed load is
    one line naming the reward, the value and the option to pass (``what`` describes it)."""
    if name is None or str(name) == "":
        raise ValueError(f"reward {reward!r}: no {option} given; pass {option}=<{what}>")
    name = str(name)
    if not Path(name).expanduser().exists() and looks_like_path(name):
        raise FileNotFoundError(f"reward {reward!r}: {option} {name!r} does not exist; pass {option}=<{what}>")
    try:
        return loader(_local_or_id(name))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"reward {reward!r}: cannot load {option} {name!r} ({first}); pass {option}=<{what}>"
        ) from exc


class ClipEmbedder:
    """A ``CLIPModel`` + tokenizer + image preprocessing; batched, normalised embeddings.

    ``clean_prompts`` applies :func:`clean_prompt_open_clip` before tokenising (HPS does, as
    open_clip does). Prompts are truncated to ``context_length`` tokens (start and end tokens
    kept) and padded to the longest in the batch; CLIP's causal text encoder pools at the first
    end token, so padding does not change an embedding. Identical prompts in a batch are encoded
    once. Everything runs under ``torch.inference_mode``; results are float32.

    ``dtype`` is the dtype the weights are cast to; ``autocast`` (a dtype or ``None``) runs the
    forward passes under ``torch.autocast`` of that dtype (HPS's reference: fp32 weights under
    CUDA fp16 autocast). ``exp(logit_scale)`` is read in float32 before any cast.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        preprocess: ImagePreprocess,
        device: torch.device,
        dtype: torch.dtype,
        batch_size: int = 16,
        context_length: int = 77,
        clean_prompts: bool = False,
        autocast: torch.dtype | None = None,
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        scale = getattr(model, "logit_scale", None)
        # read before the cast: an fp16 logit_scale is off by up to ~0.1% after exp (x100 in PickScore)
        self._logit_scale = float(scale.detach().float().exp()) if isinstance(scale, torch.Tensor) else None
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.device = device
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.context_length = min(int(context_length), int(model.config.text_config.max_position_embeddings))
        self.clean_prompts = clean_prompts
        self.autocast = autocast

    def input_declaration(self) -> tuple[int | None, str]:
        """``(input_size, input_resize)`` for the reward using this embedder: the first resize of
        its preprocessing (:meth:`ImagePreprocess.input`), ``(None, ...)`` where there is none
        a rollout actor can do exactly."""
        spec = self.preprocess.input()
        return (None, "shortest_edge") if spec is None else (spec.size, spec.resize)

    def _autocast(self) -> Any:
        """``torch.autocast`` of ``self.autocast`` on the model's device type, or a no-op context."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` (CPU) for ``prompts``."""
        texts = [clean_prompt_open_clip(p) if self.clean_prompts else p for p in prompts]
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.inference_mode()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 image embeddings ``(B, D)``, in chunks of ``batch_size``."""
        out = []
        for start in range(0, images.shape[0], self.batch_size):
            chunk = images[start:start + self.batch_size].to(self.device)
            pixels = self.preprocess(chunk).to(self.dtype)
            with self._autocast():
                emb = pooled_embedding(self.model.get_image_features(pixel_values=pixels))
            out.append(F.normalize(emb.float(), dim=-1))
        return torch.cat(out)

    @torch.inference_mode()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised float32 text embeddings ``(B, D)``; each distinct prompt encoded once."""
        unique = list(dict.fromkeys(prompts))
        out = []
        for start in range(0, len(unique), self.batch_size):
            enc = self.tokenize(unique[start:start + self.batch_size])
            with self._autocast():
                emb = pooled_embedding(self.model.get_text_features(
                    input_ids=enc["input_ids"].to(self.device),
                    attention_mask=enc["attention_mask"].to(self.device),
                ))
            out.append(F.normalize(emb.float(), dim=-1))
        table = torch.cat(out)
        index = {p: i for i, p in enumerate(unique)}
        return table[torch.tensor([index[p] for p in prompts], device=table.device)]

    def cosine(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each image with its own prompt, float32 ``(B,)`` on the model device."""
        return (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(-1)

    def logit_scale(self) -> float:
        """``exp(logit_scale)`` of the model (CLIP's learned temperature), from the float32 value
        the model had before it was cast to ``dtype``."""
        if self._logit_scale is None:
            raise AttributeError("model has no logit_scale")
        return self._logit_scale


def embedder_from_pretrained(
    reward: str,
    model: str | Path | None,
    processor: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    batch_size: int = 16,
    autocast: str | torch.dtype | bool | None = None,
) -> ClipEmbedder:
    """A :class:`ClipEmbedder` for a transformers CLIP checkpoint (local folder or hub id).

    ``processor`` (default: ``model``) supplies the tokenizer and the image processor config;
    when it has no image processor config, CLIP's defaults at the model's image size are used
    (with a warning). The checkpoint is loaded in float32 (as ``AutoModel.from_pretrained``
    does in the reference codes), then cast to ``dtype`` (default float32 everywhere);
    ``autocast`` (default none) as for :func:`resolve_autocast`.
    """
    from transformers import CLIPModel, CLIPTokenizer
    from transformers.image_processing_base import ImageProcessingMixin

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    amp = resolve_autocast(autocast, dev, dt, cuda_default=None)

    def load_fp32(name: str) -> Any:
        return CLIPModel.from_pretrained(name, dtype=torch.float32)

    clip = load_local_or_hub(load_fp32, model, reward, "model",
                             "CLIP model folder with config.json and weights, or hub id")
    processor_name = processor if processor not in (None, "") else model
    option = "processor" if processor not in (None, "") else "model"
    tokenizer = load_local_or_hub(CLIPTokenizer.from_pretrained, processor_name, reward, option,
                                  "folder or hub id with the CLIP tokenizer and preprocessor_config.json")
    try:
        proc_cfg, _ = ImageProcessingMixin.get_image_processor_dict(_local_or_id(processor_name))
    except OSError:
        proc_cfg = None
        warnings.warn(f"reward {reward!r}: no image processor config in {str(processor_name)!r}; "
                      "using CLIP defaults (shortest-edge resize, centre crop, OpenAI mean/std)", stacklevel=2)
    preprocess = ImagePreprocess.from_processor_dict(proc_cfg, clip.config.vision_config.image_size)
    return ClipEmbedder(clip, tokenizer, preprocess, dev, dt, batch_size=batch_size,
                        context_length=clip.config.text_config.max_position_embeddings, autocast=amp)
