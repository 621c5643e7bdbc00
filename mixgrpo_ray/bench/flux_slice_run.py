"""FLUX at its real width through the product, on CPU: ``mixgrpo-ray bench slice``.

On a FluxPipeline folder (by default the real-width slice of
:mod:`mixgrpo_ray.models.flux.flux_slice`: FLUX.1-dev's transformer with one block of each kind,
a T5-XXL-wide and a CLIP-L-wide encoder, the FLUX VAE), two short runs of ``mixgrpo-ray train``:

the roles in separate processes (``run.placement=disaggregated``: one rollout actor, the learner
ranks):

* ``full``: full fine-tuning on ``learner.num_workers`` fsdp ranks (gloo on CPU), collective
  weight sync;
* ``lora``: LoRA adapters on one replicated rank.

Each run's final checkpoint is exported (``mixgrpo-ray export``) and loaded back with diffusers'
``FluxPipeline.from_pretrained`` (plus ``FluxTransformer2DModel.from_pretrained`` for the full
export, ``load_lora_weights`` for the adapters); its sample for a fixed prompt and noise must equal
the product's own sample of the same checkpoint (to ``atol``), which must differ from the base
model's (training moved the weights). Each run's ``memory/learner_peak_gb`` and
``memory/rollout_peak_gb`` (:mod:`mixgrpo_ray.common.process_memory`: the resident high-water mark
of each actor process above its baseline) are set beside ``mixgrpo-ray plan``'s rows for the
same config, with the plan's ``runtime`` row (the CUDA context and allocator slack a GPU has and a
CPU process does not) left out. A role whose measurement is more than ``tolerance`` off fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch

PROMPTS = ["a red cat on a mat", "a bowl of fruit on a table", "a mountain lake at dawn", "a city street at night"]
SIZE, SEQ, STEPS = 32, 16, 4  # 32x32 images: 4 packed latent tokens + 16 text tokens
#: the plan's rows that are GPU-only: left out of the comparison with a CPU measurement
GPU_ONLY_ROWS = ("runtime",)
ROLES = {"learner": "memory/learner_peak_gb", "rollout": "memory/rollout_peak_gb"}


def run_overrides(model: str, out: Path, name: str, *, lora: bool, ranks: int) -> list[str]:
    """The ``flux`` + ``mixgrpo_flash`` overrides of one CPU run of the slice (``lora``: rank-16
    adapters on one replicated rank; else full fine-tuning on ``ranks`` fsdp ranks)."""
    learner = (["model.lora_rank=16", "model.lora_alpha=32", "learner.strategy=replicate", "learner.num_workers=1",
                "learner.sync_transport=object_store"] if lora else
               ["model.lora_rank=0", "learner.strategy=fsdp", f"learner.num_workers={ranks}",
                "learner.sync_transport=collective", "learner.backend=gloo"])
    return [
        f"model.path={model}", f"model.height={SIZE}", f"model.width={SIZE}", f"model.max_sequence_length={SEQ}",
        "model.gradient_checkpointing=false", *learner,
        f"data.train={out / 'prompts.txt'}", f"data.eval={out / 'prompts.txt'}", "data.prompts_per_iteration=1",
        "data.eval_prompts=1", "grpo.group_size=2", "optim.samples_per_update=2", "optim.lr=1e-4",
        f"sampling.num_steps={STEPS}", "window.size=2",
        "rollout.num_workers=1", "rollout.num_cpus=0.5", "rollout.num_gpus=0", "rollout.resources=null",
        "rollout.torch_threads=1", "rollout.prompts_per_call=0",
        "learner.num_cpus=0.5", "learner.num_gpus=0", "learner.resources=null", "learner.torch_threads=1",
        "rewards.hps=null", "rewards.imagereward=null", "rewards.pickscore=null",
        "rewards.quality.kind=quality", "rewards.quality.num_cpus=0.25",
        "run.placement=disaggregated", "run.iterations=2", "run.checkpoint_every=0", "run.grid_every=0", "run.grid_prompts=0", "run.progress=false",
        f"run.output_dir={out / 'runs'}", f"run.name={name}",
    ]


def run_config(model: str, out: Path, name: str, *, ranks: int):
    """The resolved config of run ``name`` (``full`` or ``lora``)."""
    from mixgrpo_ray.config import resolve

    return resolve(["flux", "mixgrpo_flash"], run_overrides(model, out, name, lora=name == "lora", ranks=ranks))


def train_slice(model: str, out: Path, name: str, *, ranks: int):
    """One run of ``mixgrpo-ray train`` (the product's driver, actors and learner group) on a Ray
    of its own; returns ``(config, run directory)``."""
    from mixgrpo_ray.cluster.ray_start import ray_running
    from mixgrpo_ray.train.training_run import run

    cfg = run_config(model, out, name, ranks=ranks)
    with ray_running(num_cpus=max(4, ranks + 2), private=True, log_to_driver=False):
        if run(cfg) != 0:
            raise RuntimeError(f"the {name} run did not finish")
    return cfg, out / "runs" / name


def product_sample(cfg, checkpoint: Optional[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """The product's sample of ``checkpoint`` (``mixgrpo-ray sample``'s code path; None: the base
    model) for the first prompt and seed 0 (float images in [0, 1]), and the noise it started from."""
    from mixgrpo_ray.algo.rollout import sample_images
    from mixgrpo_ray.models.flux.flux_policy import FluxPolicy, load_trained_weights

    policy = FluxPolicy.from_model_config(cfg.model, trainable=False)
    if checkpoint is not None:
        load_trained_weights(policy, checkpoint)
    images = sample_images(policy, PROMPTS[:1], [0], num_steps=STEPS, shift=cfg.sampling.shift, float_images=True)
    return images, policy.initial_noise(1, torch.Generator().manual_seed(0))


def diffusers_sample(cfg, exported: Path, noise: torch.Tensor, *, lora: bool) -> torch.Tensor:
    """The same sample from the export, loaded by diffusers alone, from the same (packed) noise."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    base, extra = cfg.model.path, {}
    if not lora:
        extra["transformer"] = FluxTransformer2DModel.from_pretrained(str(exported), torch_dtype=torch.float32)
    pipe = FluxPipeline.from_pretrained(base, torch_dtype=torch.float32,
                                        scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg.sampling.shift), **extra)
    if lora:
        pipe.load_lora_weights(str(exported))
    with torch.no_grad():
        return pipe(PROMPTS[:1], height=cfg.model.height, width=cfg.model.width, num_inference_steps=STEPS,
                    guidance_scale=cfg.model.guidance, latents=noise,
                    max_sequence_length=cfg.model.max_sequence_length, output_type="pt").images.float()


def plan_rows(cfg, role: str) -> list[tuple[str, float]]:
    """``mixgrpo-ray plan``'s rows of ``role`` (``learner`` or ``rollout``) for ``cfg``."""
    from mixgrpo_ray.plan import memory_plan

    size = memory_plan.model_size(cfg)
    if role == "learner":
        return memory_plan.learner_rows(cfg, size, cfg.learner.num_workers, cfg.learner.strategy)
    return memory_plan.rollout_rows(cfg, size)


def compare_memory(cfg, rows: Sequence[dict], tolerance: float) -> list[dict]:
    """Per role: the plan without its GPU-only rows, the measured peak (the largest over the run's
    iterations), their ratio, and whether it is within ``tolerance``."""
    out = []
    for role, metric in ROLES.items():
        planned = sum(v for k, v in plan_rows(cfg, role) if k not in GPU_ONLY_ROWS)
        measured = max((r[metric] for r in rows if metric in r), default=float("nan"))
        ratio = measured / planned if planned else float("nan")
        out.append({"role": role, "plan_gb": planned, "measured_gb": measured, "ratio": ratio,
                    "ok": abs(ratio - 1) <= tolerance})
    return out


def one_run(model: str, out: Path, *, lora: bool, ranks: int, tolerance: float) -> dict:
    from mixgrpo_ray.common import checkpoint as ckpt
    from mixgrpo_ray.export import export
    from mixgrpo_ray.train.run_dir import RunDir

    name = "lora" if lora else "full"
    what = "LoRA on 1 rank" if lora else f"full fine-tuning on {ranks} fsdp rank(s)"
    print(f"[{name}] training 2 iterations, {what} ...", flush=True)
    cfg, run_dir = train_slice(model, out, name, ranks=ranks)
    checkpoint = ckpt.latest_checkpoint(run_dir)
    print(f"[{name}] exporting {checkpoint} and sampling it in the product and in diffusers ...", flush=True)
    exported, _ = export(checkpoint=str(checkpoint), out=str(out / f"export-{name}"), card=False)
    ours, noise = product_sample(cfg, checkpoint)
    theirs = diffusers_sample(cfg, exported, noise, lora=lora)
    base, _ = product_sample(cfg, None)
    rows = [r for r in RunDir(run_dir).read_metrics() if "reward_mean" in r]
    return {
        "run": name, "learner": f"lora rank {cfg.model.lora_rank}" if lora else f"fsdp x{ranks}",
        "iterations": len(rows), "export": str(exported), "sample_max_abs_diff": float((ours - theirs).abs().max()),
        "sample_std": float(ours.std()), "trained_vs_base_max_abs_diff": float((ours - base).abs().max()), "memory": compare_memory(cfg, rows, tolerance),
    }


def run_slice_bench(out: Path, model: Optional[str] = None, *, ranks: int = 2, tolerance: float = 0.15,
                    atol: float = 1e-4, lora: bool = True, full: bool = True) -> dict:
    """Both runs (see the module docstring) under ``out``; writes ``report.json`` and ``report.md``
    and returns the report (``ok``: every sample matched and every role was within tolerance)."""
    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        from mixgrpo_ray.models.flux import flux_slice

        model = str(out / "flux-slice")
        if not Path(model, "model_index.json").is_file() and flux_slice.main([model]) != 0:
            raise RuntimeError(f"could not write the slice into {model}")
    (out / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    runs = [one_run(model, out, lora=False, ranks=ranks, tolerance=tolerance)] if full else []
    if lora:
        runs.append(one_run(model, out, lora=True, ranks=1, tolerance=tolerance))
    ok = all(r["sample_max_abs_diff"] <= atol < r["trained_vs_base_max_abs_diff"] and r["sample_std"] > 1e-3
             and all(m["ok"] for m in r["memory"]) for r in runs)
    report = {"model": model, "tolerance": tolerance, "atol": atol, "runs": runs, "ok": ok}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(format_report(report))
    return report


def format_report(report: dict) -> str:
    lines = [f"model: {report['model']}", "",
             "| run | learner | diffusers vs product sample (trained vs base) | role | plan GB (no runtime) | "
             "measured GB | measured / plan |", "|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        for m in r["memory"]:
            flag = "" if m["ok"] else f" (off by more than {report['tolerance']:.0%})"
            lines.append(f"| {r['run']} | {r['learner']} | {r['sample_max_abs_diff']:.1e} "
                         f"({r['trained_vs_base_max_abs_diff']:.1e}) | {m['role']} | "
                         f"{m['plan_gb']:.2f} | {m['measured_gb']:.2f} | {m['ratio']:.2f}{flag} |")
    lines += ["", "result: " + ("ok" if report["ok"] else "FAILED"), ""]
    return "\n".join(lines)
