"""Memory plan: what each role of a run needs on one GPU, whether it fits, and the smallest
learner count that fits full fine-tuning (``mixgrpo-ray plan``; ``train`` refuses a run whose
learners do not fit when ``learner.gpu_memory_gb`` is set).

Sizes are counted, not guessed: the transformer, text encoders and VAE are instantiated on the
``meta`` device from their configs (a local FluxPipeline folder, else FLUX.1-dev's published
architecture), so P (trainable parameters) and every block's size are exact. GB = 1e9 bytes.

Formulas (per GPU; N learner ranks, b = samples per rank per update = samples_per_update / N,
T = tokens = (H/16)(W/16) + max_sequence_length for FLUX and Qwen-Image (+ 77 CLIP tokens for SD3),
d = hidden width, L = blocks; SD3's and Qwen-Image's blocks are their joint / dual-stream blocks):

* learner, full fine-tuning — weights 4P, gradients 4P, AdamW 8P bytes (fp32 masters):
  ``replicate`` holds all of it on every rank, ``fsdp`` 1/N of it (``offload_optimizer``: on the
  host, so 0 on the GPU). FSDP also holds the gathered weights of two blocks (the one computing
  and the one prefetched: the two largest blocks, g (B_max + B_next) bytes, g = 2 for bf16 on a GPU,
  4 on a CPU, where FSDP gathers fp32), the fp32 gradient of one block before its reduce-scatter
  (4 B_max), and the root module's own parameters (embedders, final norm and projection, R = P
  minus the blocks' parameters), gathered for the whole forward and backward with their gradient:
  (g + 4) R.
  LoRA: the frozen transformer in the compute dtype (2P_all) + 16 P_lora.
* activations per sample, bf16 (Korthikanti et al. 2022, eq. 2 with memory-efficient attention:
  34 T d bytes per block): without gradient checkpointing ``34 T d L``; with it the block inputs
  ``2 T d L`` plus one block recomputed ``34 T d``. Times b, and times c / 2 for the compute dtype;
  with classifier-free guidance (``sampling.cfg_scale`` != 1) times 2: the doubled batch.
* text encoders and VAE in the compute dtype: on rollout actors only. A learner holds only what it
  trains and conditions on the prompt embeddings the trajectory carries (b rows of
  max_sequence_length x 4096 T5 states on the GPU per update, ~13 MB for FLUX: left out).
* sync buffers: one bucket (``learner.sync_bucket_mb``) on the device for the collective
  transport; object_store buckets are packed in host memory.
* runtime: 3 GB per GPU process (CUDA context, allocator slack, NCCL buffers); a role fits when
  its total is at most 90% of the GPU. This is the plan's only GPU-only row: a CPU measurement of a
  role (``mixgrpo-ray bench slice``, :mod:`mixgrpo_ray.common.process_memory`) leaves it out.
* the compute dtype ``model.dtype: auto`` is bf16 (c = 2 bytes) for a role on a GPU and fp32 (4)
  for a role on the CPU (``num_gpus: 0``), as the actors resolve it.
* rollout actor: the transformer in the compute dtype, encoders, VAE, one sync bucket and the
  no-grad activations of one batch of images (4 T d bytes per block in flight, times the batch).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import torch

from mixgrpo_ray.config import Config

GB = 1e9
RUNTIME_GB = 3.0
USABLE = 0.9
#: FLUX.1-dev's frozen parts: parameters of T5-XXL's encoder, CLIP-L's text model, the VAE
FLUX_DEV_FROZEN = {"text_encoder_2": 4.762e9, "text_encoder": 123.06e6, "vae": 83.82e6}
#: reward models' parameters (fp32 on their GPU); UnifiedReward is an external server
REWARD_PARAMS = {"hps": 986e6, "pickscore": 986e6, "clip": 428e6, "imagereward": 478e6}


@dataclasses.dataclass
class ModelSize:
    params: int  # the transformer
    block_max: int  # its largest block
    blocks: int
    hidden: int
    tokens: int
    frozen: dict  # text encoders and VAE: name -> parameters
    #: FLOPs of one transformer forward for one image (matmuls and attention), counted by torch's
    #: FLOP counter on the meta device; 0 when not counted
    forward_flops: float = 0.0
    block_next: int = 0  # its second-largest block (0: one block)
    root: int = 0  # its parameters outside the blocks (embedders, final norm and projection)


def _meta_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_size(cfg: Config) -> ModelSize:
    m = cfg.model
    if m.kind == "tiny":
        from mixgrpo_ray.models.tiny.model import TinyConfig, TinyTextEncoder, build_transformer

        try:  # the configured model's own architecture (its vocabulary), else the default one
            tc = TinyConfig() if m.path == "random" else TinyConfig.from_folder(m.path)
        except (OSError, ValueError):
            tc = TinyConfig()
        with torch.device("meta"):
            tr, enc = build_transformer(tc), TinyTextEncoder(tc)
        image_tokens = (tc.resolution // tc.patch) ** 2
        size = _size(tr, image_tokens + tc.text_tokens, {"text_encoder": _meta_count(enc)})
        size.forward_flops = forward_flops(tr, image_tokens, tc.text_tokens)
        return size
    if m.kind == "sd3":
        return _sd3_size(cfg)
    if m.kind == "qwen_image":
        return _qwen_image_size(cfg)
    from diffusers import FluxTransformer2DModel

    from mixgrpo_ray.models.flux.flux_slice import FLUX_DEV_TRANSFORMER  # FLUX.1-dev's own config

    folder = Path(m.path or "") / "transformer" / "config.json"
    config = json.loads(folder.read_text()) if folder.is_file() else FLUX_DEV_TRANSFORMER
    with torch.device("meta"):
        tr = FluxTransformer2DModel.from_config(config)
    image_tokens = (m.height // 16) * (m.width // 16)
    size = _size(tr, image_tokens + m.max_sequence_length, _frozen(Path(m.path or "")))
    size.forward_flops = forward_flops(tr, image_tokens, m.max_sequence_length)
    return size


#: StableDiffusion3Pipeline's components when model.path is no local folder: SD3.5 Medium's
#: transformer config (diffusers' stabilityai/stable-diffusion-3.5-medium, 2.243 B counted on the
#: meta device) and its frozen parts' parameters (CLIP-L and CLIP-G with projections, T5-XXL's
#: encoder, the 16-channel VAE; counted from their configs on the meta device)
SD35_MEDIUM_TRANSFORMER = dict(
    attention_head_dim=64, caption_projection_dim=1536, dual_attention_layers=tuple(range(13)), in_channels=16,
    joint_attention_dim=4096, num_attention_heads=24, num_layers=24, out_channels=16, patch_size=2,
    pooled_projection_dim=2048, pos_embed_max_size=384, qk_norm="rms_norm", sample_size=128)
SD35_FROZEN = {"text_encoder": 123.65e6, "text_encoder_2": 694.66e6, "text_encoder_3": 4.762e9, "vae": 83.82e6}
SD3_CLIP_TOKENS = 77  # the two CLIPs' context, ahead of T5's max_sequence_length tokens


def _sd3_size(cfg: Config) -> ModelSize:
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import AutoConfig, CLIPTextModelWithProjection, T5EncoderModel

    m = cfg.model
    root = Path(m.path or "")
    folder = root / "transformer" / "config.json"
    config = json.loads(folder.read_text()) if folder.is_file() else SD35_MEDIUM_TRANSFORMER
    with torch.device("meta"):
        tr = SD3Transformer2DModel.from_config(config)
        if (root / "text_encoder_3" / "config.json").is_file():
            frozen = {sub: _meta_count(CLIPTextModelWithProjection(AutoConfig.from_pretrained(str(root / sub))))
                      for sub in ("text_encoder", "text_encoder_2")}
            frozen["text_encoder_3"] = _meta_count(T5EncoderModel(AutoConfig.from_pretrained(str(root / "text_encoder_3"))))
            frozen["vae"] = _meta_count(AutoencoderKL.from_config(AutoencoderKL.load_config(str(root / "vae"))))
        else:
            frozen = dict(SD35_FROZEN)
    image_tokens = (m.height // 16) * (m.width // 16)  # 8x VAE, 2x2 patches
    text_tokens = SD3_CLIP_TOKENS + m.max_sequence_length
    size = _size(tr, image_tokens + text_tokens, frozen)
    c = tr.config
    with torch.device("meta"):
        inputs = dict(hidden_states=torch.zeros(1, c.in_channels, m.height // 8, m.width // 8),
                      encoder_hidden_states=torch.zeros(1, text_tokens, c.joint_attention_dim),
                      pooled_projections=torch.zeros(1, c.pooled_projection_dim), timestep=torch.full((1,), 500.0),
                      return_dict=False)
    size.forward_flops = _count_flops(tr, inputs)
    return size


#: QwenImagePipeline's components when model.path is no local folder: Qwen/Qwen-Image's transformer
#: (diffusers' QwenImageTransformer2DModel defaults, 20.430 B counted on the meta device), its
#: Qwen2.5-VL-7B-Instruct text encoder (vision tower included, as the pipeline loads it) and its VAE,
#: counted from their configs on the meta device
QWEN_IMAGE_TRANSFORMER = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                              num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                              axes_dims_rope=(16, 56, 56))
QWEN_IMAGE_FROZEN = {"text_encoder": 8.292e9, "vae": 126.89e6}


def _qwen_image_size(cfg: Config) -> ModelSize:
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    m = cfg.model
    root = Path(m.path or "")
    folder = root / "transformer" / "config.json"
    config = json.loads(folder.read_text()) if folder.is_file() else QWEN_IMAGE_TRANSFORMER
    with torch.device("meta"):
        tr = QwenImageTransformer2DModel.from_config(config)
        if (root / "text_encoder" / "config.json").is_file():
            frozen = {"text_encoder": _meta_count(Qwen2_5_VLForConditionalGeneration(
                          AutoConfig.from_pretrained(str(root / "text_encoder")))),
                      "vae": _meta_count(AutoencoderKLQwenImage.from_config(
                          AutoencoderKLQwenImage.load_config(str(root / "vae"))))}
        else:
            frozen = dict(QWEN_IMAGE_FROZEN)
    vae = root / "vae" / "config.json"
    scale = 2 ** len(json.loads(vae.read_text())["temperal_downsample"]) if vae.is_file() else 8
    grid = (m.height // (2 * scale), m.width // (2 * scale))  # scale x VAE, 2x2 patches
    size = _size(tr, grid[0] * grid[1] + m.max_sequence_length, frozen)
    c = tr.config
    with torch.device("meta"):
        inputs = dict(hidden_states=torch.zeros(1, grid[0] * grid[1], c.in_channels),
                      encoder_hidden_states=torch.zeros(1, m.max_sequence_length, c.joint_attention_dim),
                      encoder_hidden_states_mask=torch.ones(1, m.max_sequence_length), timestep=torch.full((1,), 0.5),
                      img_shapes=[[(1, *grid)]], return_dict=False)
    size.forward_flops = _count_flops(tr, inputs)
    return size


def _count_flops(tr: torch.nn.Module, inputs: dict) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tr(**inputs)
    return float(counter.get_total_flops())


def forward_flops(tr: torch.nn.Module, image_tokens: int, text_tokens: int) -> float:
    """FLOPs of one forward of the FLUX-style transformer ``tr`` for one image of ``image_tokens``
    latent tokens and ``text_tokens`` prompt tokens, as torch's FLOP counter counts them (every
    matmul and attention product); ``tr`` and its inputs live on the device of ``tr`` (the meta
    device for a plan: nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    c = tr.config
    device = next(tr.parameters()).device
    with torch.device(device):
        inputs = dict(
            hidden_states=torch.zeros(1, image_tokens, c.in_channels),
            encoder_hidden_states=torch.zeros(1, text_tokens, c.joint_attention_dim),
            pooled_projections=torch.zeros(1, c.pooled_projection_dim), timestep=torch.full((1,), 0.5),
            img_ids=torch.zeros(image_tokens, 3), txt_ids=torch.zeros(text_tokens, 3), return_dict=False,
        )
        if getattr(c, "guidance_embeds", False):
            inputs["guidance"] = torch.full((1,), 3.5)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tr(**inputs)
    return float(counter.get_total_flops())


def _size(tr: torch.nn.Module, tokens: int, frozen: dict) -> ModelSize:
    blocks = [b for name in ("transformer_blocks", "single_transformer_blocks") for b in getattr(tr, name, [])]
    hidden = int(tr.config.num_attention_heads * tr.config.attention_head_dim)
    counts = sorted((_meta_count(b) for b in blocks), reverse=True)
    total = _meta_count(tr)
    return ModelSize(total, counts[0], len(blocks), hidden, tokens, frozen,
                     block_next=counts[1] if len(counts) > 1 else 0, root=total - sum(counts))


def _frozen(path: Path) -> dict:
    """Parameters of the text encoders and VAE of a local FluxPipeline folder (else FLUX.1-dev's)."""
    if not (path / "text_encoder_2" / "config.json").is_file():
        return dict(FLUX_DEV_FROZEN)
    from diffusers import AutoencoderKL
    from transformers import AutoConfig, CLIPTextModel, T5EncoderModel

    with torch.device("meta"):
        return {
            "text_encoder_2": _meta_count(T5EncoderModel(AutoConfig.from_pretrained(str(path / "text_encoder_2")))),
            "text_encoder": _meta_count(CLIPTextModel(AutoConfig.from_pretrained(str(path / "text_encoder")))),
            "vae": _meta_count(AutoencoderKL.from_config(AutoencoderKL.load_config(str(path / "vae")))),
        }


def guidance_passes(cfg: Config) -> int:
    """Model passes per velocity: 2 with classifier-free guidance (``sampling.cfg_scale`` != 1,
    one doubled batch), else 1."""
    return 2 if cfg.sampling.cfg_scale != 1.0 else 1


def _compute_bytes(cfg: Config, on_gpu: bool = True) -> int:
    """Bytes per value of the compute dtype of a role on a GPU (``on_gpu``) or on the CPU."""
    if cfg.model.dtype == "auto":
        return 2 if on_gpu else 4
    return 4 if cfg.model.dtype == "fp32" else 2


def learner_rows(cfg: Config, size: ModelSize, workers: int, strategy: str) -> list[tuple[str, float]]:
    """``(item, GB)`` of one learner rank with ``workers`` ranks and ``strategy``."""
    gpu = cfg.learner.num_gpus > 0
    c = _compute_bytes(cfg, gpu)
    lora = cfg.model.lora_rank > 0
    shard = workers if strategy == "fsdp" else 1
    if lora:  # frozen base in the compute dtype; adapters are a small fraction (counted as 1%)
        rows = [("weights (frozen, compute dtype)", c * size.params), ("LoRA weights+grads+AdamW", 16 * 0.01 * size.params)]
    else:
        on_gpu = 0 if (cfg.learner.offload_optimizer and strategy == "fsdp") else 1
        rows = [("weights fp32" + (" (shard)" if shard > 1 else ""), 4 * size.params / shard * on_gpu),
                ("gradients fp32" + (" (shard)" if shard > 1 else ""), 4 * size.params / shard * on_gpu),
                ("AdamW state fp32" + (" (shard)" if shard > 1 else ""), 8 * size.params / shard * on_gpu)]
        if strategy == "fsdp":  # FSDP gathers bf16 on a GPU (MixedPrecisionPolicy), fp32 on the CPU
            g, name = (2, "bf16") if gpu else (4, "fp32")
            rows += [(f"gathered blocks {name} (2)", g * (size.block_max + size.block_next)),
                     ("block gradient fp32", 4 * size.block_max),
                     (f"gathered root module {name} + its gradient", (g + 4) * size.root)]
    per_rank = max(1, cfg.optim.samples_per_update // workers)
    cfg_passes = guidance_passes(cfg)
    rows.append((f"activations x{per_rank * cfg_passes} sample(s)" + (" (guided: doubled)" if cfg_passes > 1 else ""),
                 per_rank * cfg_passes * activation_bytes(cfg, size) * c / 2))
    rows.append(("sync bucket", cfg.learner.sync_bucket_mb * 2**20 if cfg.learner.sync_transport == "collective" else 0))
    rows.append(("runtime", RUNTIME_GB * GB))
    return [(k, v / GB) for k, v in rows]


def activation_bytes(cfg: Config, size: ModelSize, checkpointing: Optional[bool] = None) -> float:
    """Training activations of one sample (see the module docstring)."""
    ckpt = cfg.model.gradient_checkpointing if checkpointing is None else checkpointing
    per_block = 34 * size.tokens * size.hidden
    if ckpt:
        return 2 * size.tokens * size.hidden * size.blocks + per_block
    return per_block * size.blocks


def _frozen_rows(cfg: Config, size: ModelSize) -> list[tuple[str, float]]:
    c = _compute_bytes(cfg, cfg.rollout.num_gpus > 0)
    return [(f"{name} ({cfg.model.kind})", c * n) for name, n in size.frozen.items()]


def rollout_rows(cfg: Config, size: ModelSize) -> list[tuple[str, float]]:
    c = _compute_bytes(cfg, cfg.rollout.num_gpus > 0)
    batch = cfg.grpo.group_size * max(1, cfg.rollout.prompts_per_call or cfg.data.prompts_per_iteration)
    batch *= guidance_passes(cfg)
    rows = [("weights (compute dtype)", c * size.params), *_frozen_rows(cfg, size),
            (f"activations (no grad) x{batch}", 4 * size.tokens * size.hidden * batch),
            ("sync bucket", cfg.learner.sync_bucket_mb * 2**20), ("runtime", RUNTIME_GB * GB)]
    return [(k, v / GB) for k, v in rows]


def reward_rows(reward) -> Optional[list[tuple[str, float]]]:
    """``(item, GB)`` of one replica of a reward model (``rewards.<name>``), None when unknown."""
    if reward.kind not in REWARD_PARAMS:
        return None
    return [("weights fp32", 4 * REWARD_PARAMS[reward.kind] / GB), ("runtime", RUNTIME_GB)]


def fits(rows: list[tuple[str, float]], gpu_gb: float) -> bool:
    return sum(v for _, v in rows) <= USABLE * gpu_gb


def smallest_learner_count(cfg: Config, size: ModelSize, gpu_gb: float, limit: int = 1024) -> Optional[int]:
    """The fewest fsdp ranks (powers of two) whose rank fits full fine-tuning on one GPU, each
    rank keeping the configured samples per rank per update; None up to ``limit``."""
    full = cfg.model_copy(deep=True)
    full.model.lora_rank = 0
    per_rank = max(1, cfg.optim.samples_per_update // cfg.learner.num_workers)
    n = 1
    while n <= limit:
        full.optim.samples_per_update = per_rank * n  # each rank keeps its share of an update
        if fits(learner_rows(full, size, n, "fsdp"), gpu_gb):
            return n
        n *= 2
    return None
