"""The job behind ``mixgrpo-ray export``: a checkpoint's trained weights as a model other tools load
(the command line is :mod:`mixgrpo_ray.cli.export_cli`).

What is written depends on what the run trained (``model.kind``, ``model.lora_rank``):

* **FLUX, full fine-tuning:** a diffusers ``FluxTransformer2DModel`` folder (``config.json`` from
  the base model's ``transformer/`` plus safetensors shards of the trained weights) for
  ``FluxPipeline.from_pretrained(BASE, transformer=FluxTransformer2DModel.from_pretrained(OUT))``.
* **FLUX, LoRA:** ``pytorch_lora_weights.safetensors`` in diffusers' LoRA format (keys
  ``transformer.<module>.lora_A/B.weight``, the adapter's rank and alpha in the metadata) for
  ``FluxPipeline.load_lora_weights(OUT)``.
* **SD3 / SD3.5:** the same with ``SD3Transformer2DModel`` and ``StableDiffusion3Pipeline``.
* **Qwen-Image:** the same with ``QwenImageTransformer2DModel`` and ``QwenImagePipeline``.
* **tiny:** the tiny model's own folder (``config.json`` + ``model.safetensors``) for
  ``TinyPolicy.from_pretrained(OUT)``.

A model card ``README.md`` (base model, algorithm, rewards, held-out results of the run) is added
unless ``model_card=False``. Everything is written into a staging folder that is renamed into
place when complete. Input problems raise :class:`ExportError`, one line each.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from mixgrpo_ray.common.checkpoint import CheckpointError, find_weights, read_weights, run_of
from mixgrpo_ray.config import Config, ConfigError
from mixgrpo_ray.eval.heldout_eval import resolve_eval_config

LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: per diffusers model kind: (pipeline class, transformer class, default base model)
DIFFUSERS = {"flux": ("FluxPipeline", "FluxTransformer2DModel", "black-forest-labs/FLUX.1-dev"),
             "sd3": ("StableDiffusion3Pipeline", "SD3Transformer2DModel", "stabilityai/stable-diffusion-3.5-medium"),
             "qwen_image": ("QwenImagePipeline", "QwenImageTransformer2DModel", "Qwen/Qwen-Image")}


class ExportError(ValueError):
    """A problem with the command's inputs, reported as one line (exit code 2)."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out} already exists and is not an empty folder; choose a new folder")
    if out.parent.exists() and not out.parent.is_dir():
        raise ExportError(f"--out {out}: {out.parent} is not a folder")


# ---------------------------------------------------------------------------------------------
# One writer per kind of trained model
# ---------------------------------------------------------------------------------------------
def write_tiny(cfg: Config, state: Mapping[str, torch.Tensor], out: Path) -> None:
    from mixgrpo_ray.models.build import build_policy

    policy = build_policy(cfg.model, "cpu", trainable=False)
    policy.load_trainable_state_dict(state)
    policy.save_pretrained(out, extra={"exported_by": "mixgrpo-ray export"})


def write_flux_transformer(cfg: Config, state: Mapping[str, torch.Tensor], out: Path, dtype: torch.dtype,
                           max_shard_size: str) -> None:
    """The base transformer's config with the trained weights (no random initialisation: the
    model is built on the meta device and the weights are assigned)."""
    import diffusers
    from accelerate import init_empty_weights

    _, transformer_class, default = DIFFUSERS[cfg.model.kind]
    base = cfg.model.path or default
    cls = getattr(diffusers, transformer_class)
    config = cls.load_config(base, subfolder="transformer")
    with init_empty_weights():
        model = cls.from_config(config)
    expected = set(model.state_dict())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ExportError(f"--checkpoint weights do not match the transformer of {base} "
                          f"(missing {missing[:2]}, unexpected {extra[:2]}); is model.path the run's base model?")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    model.save_pretrained(str(out), safe_serialization=True, max_shard_size=max_shard_size)


def lora_metadata(rank: int, alpha: float, kind: str = "flux") -> dict:
    """The adapter configuration diffusers stores beside LoRA weights (peft's ``LoraConfig``)."""
    from peft import LoraConfig

    from mixgrpo_ray.models.build import policy_class

    targets = policy_class(kind).lora_targets
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha) if alpha > 0 else float(rank), lora_dropout=0.0,
                        target_modules=targets)
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.to_dict().items()}


def write_flux_lora(cfg: Config, state: Mapping[str, torch.Tensor], out: Path, dtype: torch.dtype) -> None:
    """diffusers' LoRA file of the kind's pipeline (``FluxPipeline``, ``StableDiffusion3Pipeline``,
    ``QwenImagePipeline``)."""
    import diffusers

    pipeline = getattr(diffusers, DIFFUSERS[cfg.model.kind][0])
    pipeline.save_lora_weights(
        str(out), transformer_lora_layers={k: v.to(dtype).contiguous() for k, v in state.items()},
        weight_name=LORA_WEIGHTS_FILE,
        transformer_lora_adapter_metadata=lora_metadata(cfg.model.lora_rank, cfg.model.lora_alpha, cfg.model.kind),
    )


# ---------------------------------------------------------------------------------------------
# The model card
# ---------------------------------------------------------------------------------------------
def algorithm_preset(cfg: Config) -> str:
    """The algorithm preset a config matches in kind (``mixgrpo``, ``mixgrpo_flash``,
    ``mixgrpo_flash_star``, ``dancegrpo``); the resolved config does not record preset names."""
    if cfg.grpo.algorithm == "dancegrpo":
        return "dancegrpo"
    if cfg.sampling.tail == "dpm2":
        return "mixgrpo_flash_star" if cfg.window.strategy == "frozen" else "mixgrpo_flash"
    return "mixgrpo"


def model_card(cfg: Config, weights: Path, usage: str, summary: Optional[dict]) -> str:
    m, g, s = cfg.model, cfg.grpo, cfg.sampling
    if m.kind == "tiny":
        base = "the embedded tiny model" + (f" {m.path}" if m.path and m.path.startswith("builtin:") else "")
    else:
        base = m.path or DIFFUSERS[m.kind][2]
    trained = f"LoRA adapters (rank {m.lora_rank})" if m.kind in DIFFUSERS and m.lora_rank else "all transformer weights"
    lines = [
        "---", "library_name: diffusers" if m.kind in DIFFUSERS else "library_name: mixgrpo-ray",
        f"tags: [text-to-image, {'flux' if m.kind == 'tiny' else m.kind}, grpo, mixgrpo]", "---", "",
        f"# {weights.parent.name} of a MixGRPO run", "",
        f"- base model: `{base}` ({m.kind})",
        f"- trained: {trained}",
        f"- algorithm: {algorithm_preset(cfg)} (group size {g.group_size}, {s.num_steps} steps, window size "
        f"{cfg.window.size}, tail {s.tail}, clip range {g.clip_range:g})",
        "- rewards: " + ", ".join(f"{n} ({r.kind}, weight {r.weight:g})" for n, r in cfg.rewards.items()),
        f"- checkpoint: `{weights.parent}`", "",
        "## Use", "", "```python", usage, "```", "",
    ]
    if summary and summary.get("after"):
        lines += ["## Held-out rewards (mean ± standard error)", "", "| reward | before | after |", "|---|---|---|"]
        before, after = summary.get("before", {}), summary["after"]
        for key in sorted(k for k in after if k.startswith("eval/reward/") and not k.endswith("_se")):
            cell = lambda d: f"{d[key]:.4f} ± {d.get(key + '_se', 0.0):.4f}" if key in d else "-"  # noqa: E731
            lines.append(f"| {key.split('/', 2)[2]} | {cell(before)} | {cell(after)} |")
        lines.append("")
    return "\n".join(lines)


def usage_snippet(cfg: Config, out: Path) -> str:
    """How to load the exported model (Python)."""
    if cfg.model.kind == "tiny":
        return f"from mixgrpo_ray.models.tiny.model import TinyPolicy\npolicy = TinyPolicy.from_pretrained({str(out)!r})"
    pipeline, transformer, default = DIFFUSERS[cfg.model.kind]
    base = cfg.model.path or default
    pipe = f"{pipeline}.from_pretrained({base!r}, torch_dtype=torch.bfloat16"
    if cfg.model.lora_rank:
        return f"import torch\nfrom diffusers import {pipeline}\npipe = {pipe})\npipe.load_lora_weights({str(out)!r})"
    return (f"import torch\nfrom diffusers import {pipeline}, {transformer}\n"
            f"transformer = {transformer}.from_pretrained({str(out)!r}, torch_dtype=torch.bfloat16)\n"
            f"pipe = {pipe}, transformer=transformer)")


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
def export(*, checkpoint: str, out: str, presets: Sequence[str] = (), overrides: Sequence[str] = (),
           dtype: str = "fp32", card: bool = True, max_shard_size: str = "5GB") -> tuple[Path, str]:
    """Export ``checkpoint`` into ``out``; returns ``(out, what was written)``."""
    try:
        weights = find_weights(checkpoint)
        cfg = resolve_eval_config(presets, overrides, weights)
        state = read_weights(weights)
    except (CheckpointError, ConfigError) as exc:
        raise ExportError(f"--checkpoint {_first_line(exc)}") from None
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out_path = Path(out).expanduser()
    _check_out(out_path)
    from mixgrpo_ray.models.flux.flux_folder import is_lora_state

    lora = is_lora_state(state)
    if cfg.model.kind == "tiny" and lora or cfg.model.kind in DIFFUSERS and lora != bool(cfg.model.lora_rank):
        raise ExportError(f"--checkpoint holds {'LoRA adapters' if lora else 'full weights'} but the config says "
                          f"model.kind={cfg.model.kind}, model.lora_rank={cfg.model.lora_rank}; pass the run's config")
    staging = out_path.with_name(f".{out_path.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        if cfg.model.kind == "tiny":
            write_tiny(cfg, state, staging)
            what = "tiny model folder (TinyPolicy.from_pretrained)"
        elif lora:
            write_flux_lora(cfg, state, staging, DTYPES[dtype])
            what = f"diffusers LoRA weights ({DIFFUSERS[cfg.model.kind][0]}.load_lora_weights)"
        else:
            write_flux_transformer(cfg, state, staging, DTYPES[dtype], max_shard_size)
            what = f"diffusers {DIFFUSERS[cfg.model.kind][1]} folder"
        if card:
            run = run_of(weights)
            summary_file = run / "summary.json" if run is not None else None
            summary = json.loads(summary_file.read_text()) if summary_file and summary_file.is_file() else None
            (staging / "README.md").write_text(model_card(cfg, weights, usage_snippet(cfg, out_path), summary))
        if out_path.exists():
            out_path.rmdir()  # empty (checked above)
        os.replace(staging, out_path)
    except (OSError, ValueError, RuntimeError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, ExportError):
            raise
        raise ExportError(f"cannot export {weights}: {_first_line(exc)}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_path, what
