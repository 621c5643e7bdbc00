"""The job behind ``mixgrpo-ray eval``: score the base model and a checkpoint with every
configured reward (the command line is :mod:`mixgrpo_ray.cli.eval_cli`, the outputs
:mod:`mixgrpo_ray.eval.eval_report`).

For each held-out prompt and each of ``seeds`` fixed noise seeds (``10000, 10001, ...``,
:func:`~mixgrpo_ray.common.seeds.eval_seeds`, the seeds training's own before/after evaluation
uses), one image is sampled by deterministic ODE sampling (``sampling.num_steps`` Euler steps,
``sampling.shift``) and scored in-process by every reward in the config's ``rewards`` section
(weight-0 rewards included; no Ray). With a checkpoint, its trainable weights are evaluated beside
the base model on the same prompts and seeds; with ``mix_fraction p < 1`` the checkpoint's images
use test-time mixed-model sampling (docs/algorithm.md eq. (36)): the first
``round(p * num_steps)`` steps with the checkpoint, the rest with the base model.

Input problems (configuration, checkpoint, prompt source, output folder) raise :class:`EvalError`
or :class:`~mixgrpo_ray.config.ConfigError`, one line each.
"""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from mixgrpo_ray.common.checkpoint import WEIGHTS_FILE, CheckpointError, find_weights, read_weights, run_of
from mixgrpo_ray.common.seeds import eval_seeds
from mixgrpo_ray.config import Config, resolve
from mixgrpo_ray.eval.eval_report import (
    ModelResult,
    check_out,
    format_table,
    paired_change,
    render_markdown,
    reward_stats,
    write_outputs,
)


class EvalError(ValueError):
    """A problem with the command's inputs, reported as one line (exit code 2)."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# ---------------------------------------------------------------------------------------------
# Inputs: checkpoint, config, output folder
# ---------------------------------------------------------------------------------------------
@contextmanager
def checkpoint_errors() -> Iterator[None]:
    """Turn a :class:`~mixgrpo_ray.common.checkpoint.CheckpointError` into the command's one-line
    ``--checkpoint ...`` :class:`EvalError`."""
    try:
        yield
    except CheckpointError as exc:
        raise EvalError(f"--checkpoint {exc}") from None


def resolve_eval_config(presets: Sequence[str], overrides: Sequence[str], weights: Optional[Path]) -> Config:
    """``presets`` and ``overrides``; without presets, the checkpoint's run config."""
    presets = list(presets)
    if not presets and weights is not None:
        run = run_of(weights)
        if run is not None and (run / "config.yaml").is_file():
            presets = [str(run / "config.yaml")]
    return resolve(presets or None, list(overrides))


def default_out(cfg: Config, weights: Optional[Path], mix_fraction: float) -> Path:
    run = run_of(weights) if weights is not None else None
    if run is not None:
        name = weights.parent.name + (f"-mix{mix_fraction:g}" if mix_fraction < 1 else "")
        return run / "eval" / name
    return Path(cfg.run.output_dir) / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"


# ---------------------------------------------------------------------------------------------
# Sampling and scoring
# ---------------------------------------------------------------------------------------------
def build_rewards(cfg: Config) -> dict:
    """Every configured reward model, in-process, by name."""
    from mixgrpo_ray.rewards.registry import build_reward

    out = {}
    for name, rc in cfg.rewards.items():
        try:
            out[name] = build_reward(rc.kind, **rc.model_kwargs())
        except (ValueError, FileNotFoundError, TypeError) as exc:
            raise EvalError(f"rewards.{name}: cannot build reward {rc.kind!r}: {_first_line(exc)}") from None
    return out


def score_model(key: str, label: str, policy, prompts: Sequence[str], seeds: Sequence[int], rewards: dict,
                cfg: Config, *, batch_size: int, grid_prompts: int, base_policy=None,
                mix_fraction: float = 1.0) -> ModelResult:
    """Sample one image per (prompt, seed), prompt-major, and score each batch with every reward."""
    from tqdm import tqdm

    from mixgrpo_ray.algo.rollout import sample_images

    pairs = [(p, s) for p in prompts for s in seeds]
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in rewards}
    grid: list[torch.Tensor] = []
    grid_rows = {i * len(seeds) for i in range(min(grid_prompts, len(prompts)))}
    bar = tqdm(total=len(pairs), desc=label, unit="img", disable=not cfg.run.progress, dynamic_ncols=True)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        texts = [p for p, _ in chunk]
        images = sample_images(
            policy, texts, [s for _, s in chunk], num_steps=cfg.sampling.num_steps, shift=cfg.sampling.shift,
            base_policy=base_policy, mix_fraction=mix_fraction, cfg_scale=cfg.sampling.cfg_scale,
            negative_prompt=cfg.sampling.negative_prompt,
        )
        for name, model in rewards.items():
            step = max(1, cfg.rewards[name].batch_size)
            for i in range(0, len(chunk), step):
                scores[name].append(model(images[i : i + step], texts[i : i + step]))
        grid += [images[j - start] for j in range(start, start + len(chunk)) if j in grid_rows]
        bar.update(len(chunk))
    bar.close()
    flat = {name: torch.cat(s) if s else torch.zeros(0) for name, s in scores.items()}
    for name, s in flat.items():
        if not rewards[name].can_fail and not bool(torch.isfinite(s).all()):
            raise RuntimeError(f"reward {name!r} returned non-finite scores for {label}")
    result = ModelResult(key, label, flat, torch.stack(grid) if grid else None)
    result.stats = {name: reward_stats(s) for name, s in flat.items()}
    return result


def _release_memory() -> None:
    """Return freed model memory (call after dropping the last reference to a policy)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def _model_errors() -> Iterator[None]:
    try:
        yield
    except (ValueError, OSError) as exc:  # OSError: missing / unreadable model files
        raise EvalError(f"model: {_first_line(exc)}") from None


def _build(cfg: Config, device: torch.device):
    from mixgrpo_ray.models.build import build_policy

    with _model_errors():
        return build_policy(cfg.model, device, trainable=False)


def _build_base(trained, cfg: Config):
    from mixgrpo_ray.models.build import build_base_policy

    with _model_errors():
        return build_base_policy(trained, cfg.model)


def score_models(cfg: Config, prompts: Sequence[str], seeds: Sequence[int], rewards: dict,
                 weights: Optional[Path], label: str, mix_fraction: float, batch_size: int) -> list[ModelResult]:
    """``[base]``, or ``[base, checkpoint]`` when ``weights`` (a trainable-weights file) is given.

    The checkpoint is loaded first, so weights that do not fit the model fail before any
    sampling. At most two policies live at once, and two only when mixing (``mix_fraction < 1``);
    then the base shares every frozen component with the checkpoint's policy
    (:func:`~mixgrpo_ray.models.build.build_base_policy`).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    common = dict(batch_size=batch_size, grid_prompts=cfg.run.grid_prompts)
    policy = _build(cfg, device)
    results: list[ModelResult] = []
    if weights is not None:
        with checkpoint_errors():
            state = read_weights(weights)
        try:
            policy.load_trainable_state_dict(state)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise EvalError(
                f"--checkpoint {weights}: does not fit model.kind={cfg.model.kind} "
                f"({str(exc).splitlines()[0]}); pass the config the run was trained with"
            ) from None
        state = None
        base = _build_base(policy, cfg) if mix_fraction < 1 else None
        results.append(score_model("checkpoint", label, policy, prompts, seeds, rewards, cfg,
                                   base_policy=base, mix_fraction=mix_fraction, **common))
        policy = None
        _release_memory()
        policy = base if base is not None else _build(cfg, device)
        base = None
    results.insert(0, score_model("base", "base", policy, prompts, seeds, rewards, cfg, **common))
    policy = None
    _release_memory()
    return results


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
def evaluate(*, presets: Sequence[str] = (), overrides: Sequence[str] = (), checkpoint: Optional[str] = None,
             mix_fraction: float = 1.0, prompt_source: Optional[str] = None, seeds: Optional[int] = None,
             batch_size: int = 8, out: Optional[str] = None) -> tuple[Path, str, dict]:
    """Evaluate, write the output folder and return ``(folder, markdown table, summary)``."""
    from mixgrpo_ray.data.prompts import load_prompts

    if not 0 < mix_fraction <= 1:
        raise EvalError(f"--mix-fraction must be in (0, 1], got {mix_fraction:g} (0.8 is the paper's choice)")
    if seeds is not None and seeds < 1:
        raise EvalError(f"--seeds must be >= 1, got {seeds}")
    if batch_size < 1:
        raise EvalError(f"--batch-size must be >= 1, got {batch_size}")
    weights = None
    if checkpoint:
        with checkpoint_errors():
            weights = find_weights(checkpoint)
    cfg = resolve_eval_config(presets, overrides, weights)
    source = prompt_source or cfg.data.eval
    try:
        prompts = load_prompts(source)
    except (ValueError, FileNotFoundError) as exc:
        raise EvalError(f"prompts {source!r}: {exc}") from None
    if cfg.data.eval_prompts:
        prompts = prompts[: cfg.data.eval_prompts]
    seed_list = eval_seeds(seeds or cfg.data.eval_seeds)
    folder = Path(out).expanduser() if out else default_out(cfg, weights, mix_fraction)
    problem = check_out(folder)
    if problem:
        raise EvalError(problem)
    label = "checkpoint"
    if weights is not None:
        with checkpoint_errors():
            read_weights(weights, header_only=True)
        label = weights.parent.name if weights.name == WEIGHTS_FILE else weights.stem
        label += f" (mix {mix_fraction:g})" if mix_fraction < 1 else ""
    rewards = build_rewards(cfg)
    results = score_models(cfg, prompts, seed_list, rewards, weights, label, mix_fraction, batch_size)

    names = list(rewards)
    change = None
    if len(results) == 2:
        change = {n: paired_change(results[1].scores[n], results[0].scores[n]) for n in names}
    summary = {
        "prompts": {"source": source, "count": len(prompts)},
        "seeds": seed_list,
        "images_per_model": len(prompts) * len(seed_list),
        "sampling": {"num_steps": cfg.sampling.num_steps, "shift": cfg.sampling.shift, "solver": "euler"},
        "checkpoint": str(weights) if weights is not None else None,
        "mix_fraction": mix_fraction,
        "mix_steps": int(round(mix_fraction * cfg.sampling.num_steps)),
        "models": {r.key: {"label": r.label, "rewards": r.stats} for r in results},
        "change": change,
        "grids": {r.key: f"grids/{r.key}.png" for r in results if r.grid_images is not None},
        **({"compare_grid": "grids/compare.png"} if len(results) == 2 and cfg.run.grid_prompts else {}),
        "config": cfg.to_dict(),
    }
    table = format_table(results, change, names)
    grid_captions = prompts[: cfg.run.grid_prompts]
    write_outputs(folder, summary, render_markdown(summary, table), results, prompts, seed_list, grid_captions)
    return folder, table, summary
