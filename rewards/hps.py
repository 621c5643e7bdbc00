"""HPS v2.1 (Human Preference Score v2.1) as a reward, on transformers' ``CLIPModel``.

HPS v2.1 is open_clip's ViT-H-14 fine-tuned on human preferences; its checkpoint
(``xswu/HPSv2`` file ``HPS_v2.1_compressed.pt``) is an fp16 open_clip state dict under
``"state_dict"``. It is converted on load (:mod:`mixgrpo_ray.rewards.clip.openclip_convert`) into a ``CLIPModel``
built from the shipped ViT-H-14 config (``rewards/configs/open_clip_vit_h_14.json``).

Score = cosine of the L2-normalised image and text embeddings (no logit scale), as HPS's own
``image_features @ text_features.T`` diagonal; typically 0.2-0.37 for real images.
Preprocessing as HPS's ``preprocess_val`` (open_clip ``image_transform(224, is_train=False,
resize_longest_max=True)``): the image as a ``[0, 1]`` float tensor (``ToTensor``), longer side
resized to 224 by torchvision's antialiased bicubic on floats (new side ``round(side * 224 /
max(H, W))``), zero-padded to 224x224 centred, OpenAI CLIP mean/std; no 8-bit rounding or
clamping in between (:class:`~mixgrpo_ray.rewards.clip.clip_common.ImagePreprocess` ``pipeline="tensor"``).
Prompts are cleaned as open_clip does (``ftfy.fix_text``, HTML unescape twice, whitespace) and
tokenised with the CLIP BPE, 77 tokens.

Precision as the reference (``create_model_and_transforms(..., precision="amp")`` and
``torch.amp.autocast("cuda")`` around the forward): float32 weights, run under fp16 autocast on
CUDA; float32 without autocast on CPU. ``dtype`` / ``autocast`` override either. The reference
takes the final ``image @ text`` product under autocast too (an fp16-rounded score); here the
cosine of the float32-converted embeddings is taken in float32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from transformers import CLIPConfig, CLIPTokenizer

from mixgrpo_ray.models.reward import RewardModel
from mixgrpo_ray.rewards.clip.clip_common import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ClipEmbedder,
    ImagePreprocess,
    load_local_or_hub,
    resolve_autocast,
    resolve_device,
    resolve_dtype,
)
from mixgrpo_ray.rewards.clip.openclip_convert import clip_model_from_open_clip, load_open_clip_state_dict

#: the architecture of HPS v2.1 (open_clip ViT-H-14) as a transformers CLIPConfig
VIT_H_14_CONFIG = Path(__file__).with_name("configs") / "open_clip_vit_h_14.json"
#: a hub folder with the same BPE vocabulary as open_clip's ViT-H-14 tokenizer
DEFAULT_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def _load_config(config: str | Path | dict | CLIPConfig | None) -> CLIPConfig:
    """The CLIPConfig for the converted model: the shipped ViT-H-14 one, or an override."""
    if isinstance(config, CLIPConfig):
        return config
    if isinstance(config, dict):
        return CLIPConfig.from_dict(config)
    path = Path(config) if config is not None else VIT_H_14_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"reward 'hps': config {str(path)!r} does not exist; pass config=<CLIPConfig JSON file>")
    return CLIPConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))


class HPSv21Reward(RewardModel):
    """HPS v2.1 score: cosine between the image and prompt embeddings of the HPS ViT-H-14.

    Options:
      checkpoint: path to ``HPS_v2.1_compressed.pt`` (open_clip state dict, fp16).
      tokenizer: CLIP tokenizer folder (``vocab.json`` + ``merges.txt``) or hub id.
      config: override of the model architecture (CLIPConfig JSON path, dict or object);
        default the shipped ViT-H-14 config. Tests pass a tiny one.
      device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``; default CUDA when available.
      dtype: weights ``fp32``/``fp16``/``bf16``; default (``auto``) fp32, as the reference.
      autocast: ``auto`` (default: fp16 autocast on CUDA around fp32 weights, as the reference's
        ``torch.amp.autocast("cuda")``; none on CPU), ``off``, ``fp16`` or ``bf16``.
      batch_size: images (and distinct prompts) per forward pass.
    """

    name = "hps"
    score_range = (-1.0, 1.0)

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        tokenizer: str | Path = DEFAULT_TOKENIZER,
        config: str | Path | dict | CLIPConfig | None = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        autocast: str | torch.dtype | bool | None = "auto",
    ) -> None:
        what = "path to HPS_v2.1_compressed.pt"
        if checkpoint is None or str(checkpoint) == "":
            raise ValueError(f"reward 'hps': no checkpoint given; pass checkpoint=<{what}>")
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"reward 'hps': checkpoint {str(checkpoint)!r} does not exist; pass checkpoint=<{what}>")
        clip_config = _load_config(config)
        tok = load_local_or_hub(CLIPTokenizer.from_pretrained, tokenizer, "hps", "tokenizer",
                                "CLIP tokenizer folder with vocab.json and merges.txt")
        # pool text at the tokenizer's end token, whatever id the config was written with
        clip_config.text_config.eos_token_id = tok.eos_token_id
        try:
            state = load_open_clip_state_dict(path)
        except Exception as exc:  # unreadable / not a torch file / not a state dict
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"reward 'hps': cannot read checkpoint {str(path)!r} ({first}); pass checkpoint=<{what}>") from exc
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev, cuda_default=torch.float32)
        amp = resolve_autocast(autocast, dev, dt, cuda_default=torch.float16)
        # fp32 by default: the fp16 checkpoint upcasts exactly, as load_state_dict into the
        # reference's fp32 model does (HPS's score does not use logit_scale)
        model = clip_model_from_open_clip(state, clip_config, dtype=dt)
        preprocess = ImagePreprocess(
            size=clip_config.vision_config.image_size, mode="pad", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
            pipeline="tensor",
        )
        self.embedder = ClipEmbedder(
            model, tok, preprocess, dev, dt, batch_size=batch_size,
            context_length=77, clean_prompts=True, autocast=amp,
        )
        self.input_size, self.input_resize = self.embedder.input_declaration()

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Cosine of each image's and its prompt's normalised HPS embeddings, ``(B,)``."""
        return self.embedder.cosine(images, prompts)
