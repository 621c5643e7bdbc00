"""Memory plan: what each role of a run needs on one GPU, whether it fits, and the smallest
learner count that fits full fine-tuning (``mixgrpo-ray plan``; ``train`` refuses a run whose
learners do not fit when ``learner.gpu_memory_gb`` is set).

Sizes are counted, not guessed: the transformer, text encoders and VAE are instantiated on the
``meta`` device from their configs (a local FluxPipeline folder, else FLUX.1-dev's published
architecture), so P (trainable parameters) and every block's size are exact. GB = 1e9 bytes.

Formulas (per GPU; N learner ranks, b = samples per rank per update = samples_per_update / N,
T = tokens = (H/16)(W/16) + max_sequence_length for FLUX, d = hidden width, L = blocks):

* learner, full fine-tuning — weights 4P, gradients 4P, AdamW 8P bytes (fp32 masters):
  ``replicate`` holds all of it on every rank, ``fsdp`` 1/N of it (``offload_optimizer``: on the
  host, so 0 on the GPU). FSDP also holds the gathered bf16 weights of two blocks (the one computing
  and the one prefetched, 2 x 2 B_max bytes, B_max = the largest block's parameters) and the fp32
  gradient of one block before its reduce-scatter (4 B_max).
  LoRA: the frozen transformer in the compute dtype (2P_all) + 16 P_lora.
* activations per sample, bf16 (Korthikanti et al. 2022, eq. 2 with memory-efficient attention:
  34 T d bytes per block): without gradient checkpointing ``34 T d L``; with it the block inputs
  ``2 T d L`` plus one block recomputed ``34 T d``. Times b.
* text encoders and VAE in the compute dtype: on rollout actors only. A learner holds only what it
  trains and conditions on the prompt embeddings the trajectory carries (b rows of
  max_sequence_length x 4096 T5 states on the GPU per update, ~13 MB for FLUX: left out).
* sync buffers: one bucket (``learner.sync_bucket_mb``) on the device for the collective
  transport; object_store buckets are packed in host memory.
* runtime: 3 GB per GPU process (CUDA context, allocator slack, NCCL buffers); a role fits when
  its total is at most 90% of the GPU.
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
#: FLUX.1-dev's transformer config (diffusers' defaults are that architecture, plus guidance)
FLUX_DEV = {"guidance_embeds": True}
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
        tokens = (tc.resolution // tc.patch) ** 2 + tc.text_tokens
        return _size(tr, tokens, {"text_encoder": _meta_count(enc)})
    from diffusers import FluxTransformer2DModel

    folder = Path(m.path or "") / "transformer" / "config.json"
    config = json.loads(folder.read_text()) if folder.is_file() else FLUX_DEV
    with torch.device("meta"):
        tr = FluxTransformer2DModel.from_config(config)
    tokens = (m.height // 16) * (m.width // 16) + m.max_sequence_length
    return _size(tr, tokens, _frozen(Path(m.path or "")))


def _size(tr: torch.nn.Module, tokens: int, frozen: dict) -> ModelSize:
    blocks = [b for name in ("transformer_blocks", "single_transformer_blocks") for b in getattr(tr, name, [])]
    hidden = int(tr.config.num_attention_heads * tr.config.attention_head_dim)
    return ModelSize(_meta_count(tr), max(_meta_count(b) for b in blocks), len(blocks), hidden, tokens, frozen)


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


def _compute_bytes(cfg: Config) -> int:
    return 4 if cfg.model.dtype == "fp32" else 2


def learner_rows(cfg: Config, size: ModelSize, workers: int, strategy: str) -> list[tuple[str, float]]:
    """``(item, GB)`` of one learner rank with ``workers`` ranks and ``strategy``."""
    c = _compute_bytes(cfg)
    lora = cfg.model.lora_rank > 0
    shard = workers if strategy == "fsdp" else 1
    if lora:  # frozen base in the compute dtype; adapters are a small fraction (counted as 1%)
        rows = [("weights (frozen, compute dtype)", c * size.params), ("LoRA weights+grads+AdamW", 16 * 0.01 * size.params)]
    else:
        on_gpu = 0 if (cfg.learner.offload_optimizer and strategy == "fsdp") else 1
        rows = [("weights fp32" + (" (shard)" if shard > 1 else ""), 4 * size.params / shard * on_gpu),
                ("gradients fp32" + (" (shard)" if shard > 1 else ""), 4 * size.params / shard * on_gpu),
                ("AdamW state fp32" + (" (shard)" if shard > 1 else ""), 8 * size.params / shard * on_gpu)]
        if strategy == "fsdp":
            rows += [("gathered blocks bf16 (2)", 2 * 2 * size.block_max), ("block gradient fp32", 4 * size.block_max)]
    per_rank = max(1, cfg.optim.samples_per_update // workers)
    rows.append((f"activations x{per_rank} sample(s)", per_rank * activation_bytes(cfg, size)))
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
    c = _compute_bytes(cfg)
    return [(f"{name} ({cfg.model.kind})", c * n) for name, n in size.frozen.items()]


def rollout_rows(cfg: Config, size: ModelSize) -> list[tuple[str, float]]:
    c = _compute_bytes(cfg)
    batch = cfg.grpo.group_size * max(1, cfg.rollout.prompts_per_call or cfg.data.prompts_per_iteration)
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


def plan_report(cfg: Config, gpu_gb: float, gpus_per_node: int, nodes: int) -> tuple[str, bool]:
    """The plan as text, and whether every GPU role fits its GPU's memory (the GPU count is
    reported, not judged: Ray places what it can)."""
    size = model_size(cfg)
    lr = cfg.learner
    learner = learner_rows(cfg, size, lr.num_workers, lr.strategy)
    rollout = rollout_rows(cfg, size)
    lines = [f"model {cfg.model.kind}: transformer {size.params / 1e9:.3f} B parameters in {size.blocks} blocks "
             f"(largest {size.block_max / 1e6:.1f} M), {size.tokens} tokens x width {size.hidden} per sample",
             f"cluster: {nodes} node(s) x {gpus_per_node} GPU(s) of {gpu_gb:g} GB (a role fits within {USABLE:.0%})", ""]
    ok = True
    for title, rows, needs_gpu in ((f"learner rank ({lr.strategy}, {lr.num_workers} rank(s))", learner, lr.num_gpus > 0),
                                   ("rollout actor", rollout, cfg.rollout.num_gpus > 0)):
        total = sum(v for _, v in rows)
        fit = fits(rows, gpu_gb)
        ok &= fit or not needs_gpu
        lines.append(f"{title:<42} {'GB':>9}")
        lines += [f"  {k:<40} {v:9.2f}" for k, v in rows if v]
        lines.append(f"  {'total':<40} {total:9.2f}   {'fits' if fit else 'DOES NOT FIT'}")
        lines.append("")
    for name, r in cfg.rewards.items():
        rows = reward_rows(r)
        if r.num_gpus > 0 and rows is not None:
            lines.append(f"reward {name} ({r.kind}): ~{sum(v for _, v in rows):.1f} GB per replica "
                         f"(fp32 weights + runtime)")
    act_on = activation_bytes(cfg, size, True) / GB
    act_off = activation_bytes(cfg, size, False) / GB
    lines.append(f"activations per sample: {act_on:.2f} GB with gradient checkpointing, {act_off:.2f} GB without")
    n = smallest_learner_count(cfg, size, gpu_gb)
    lines.append(f"full fine-tuning: smallest learner count that fits is {n} (learner.strategy=fsdp)"
                 if n else "full fine-tuning: does not fit on up to 1024 learner GPUs")
    have = gpus_per_node * nodes
    parts = {"learners": lr.num_workers * lr.num_gpus, "rollout": cfg.rollout.num_workers * cfg.rollout.num_gpus,
             "rewards": sum(r.replicas * r.num_gpus for r in cfg.rewards.values())}
    need = sum(parts.values())
    nodes_needed = -(-need // gpus_per_node) if need else 0
    lines.append("GPUs: " + " + ".join(f"{k} {v:g}" for k, v in parts.items()) + f" = {need:g} of {have}"
                 + ("" if need <= have else f": needs {nodes_needed:g} node(s) of {gpus_per_node} (--nodes)"))
    return "\n".join(lines), ok


def check_learner_fits(cfg: Config) -> Optional[str]:
    """One line saying why a learner rank does not fit ``learner.gpu_memory_gb``, or None."""
    gpu_gb = cfg.learner.gpu_memory_gb
    if gpu_gb <= 0 or cfg.learner.num_gpus <= 0:
        return None
    size = model_size(cfg)
    rows = learner_rows(cfg, size, cfg.learner.num_workers, cfg.learner.strategy)
    if fits(rows, gpu_gb):
        return None
    n = smallest_learner_count(cfg, size, gpu_gb)
    hint = f"use learner.strategy=fsdp with learner.num_workers>={n}" if n else "use LoRA (model.lora_rank)"
    return (f"a learner rank needs {sum(v for _, v in rows):.1f} GB ({cfg.learner.strategy}, "
            f"{cfg.learner.num_workers} rank(s)) but learner.gpu_memory_gb={gpu_gb:g} allows {USABLE * gpu_gb:.1f} GB; "
            f"{hint} (see mixgrpo-ray plan)")
