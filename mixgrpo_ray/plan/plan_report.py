"""``mixgrpo-ray plan``'s report: every role's memory on its GPU, where the roles land on the
cluster, and the seconds per iteration of the run's layout beside the other one; and the check
``train`` runs before it starts any actor (:func:`check_learner_fits`)."""

from __future__ import annotations

from typing import Optional

from mixgrpo_ray.config import Config
from mixgrpo_ray.plan.colocated_plan import hybrid_rows, rewards_beside, sampling_weights, weights_moved
from mixgrpo_ray.plan.gpu_packing import Actor, Target, pack
from mixgrpo_ray.plan.iteration_time import (
    DEFAULT_TFLOPS, LayoutTime, as_disaggregated, colocated_time, disaggregated_time, time_lines,
)
from mixgrpo_ray.plan.memory_plan import (
    GB, USABLE, ModelSize, activation_bytes, fits, learner_rows, model_size, reward_rows, rollout_rows,
    smallest_learner_count,
)


def _table(title: str, rows: list[tuple[str, float]], gpu_gb: float) -> tuple[list[str], bool]:
    total = sum(v for _, v in rows)
    fit = fits(rows, gpu_gb)
    lines = [f"{title:<42} {'GB':>9}", *[f"  {k:<40} {v:9.2f}" for k, v in rows if v],
             f"  {'total':<40} {total:9.2f}   {'fits' if fit else 'DOES NOT FIT'}", ""]
    return lines, fit


def plan_report(cfg: Config, gpu_gb: float, gpus_per_node: int, nodes: int,
                tflops: float = DEFAULT_TFLOPS) -> tuple[str, bool]:
    """The plan as text, and whether every GPU role fits its GPU's memory and (colocated) the
    cluster holds the run."""
    size = model_size(cfg)
    lr = cfg.learner
    lines = [f"model {cfg.model.kind}: transformer {size.params / 1e9:.3f} B parameters in {size.blocks} blocks "
             f"(largest {size.block_max / 1e6:.1f} M), {size.tokens} tokens x width {size.hidden} per sample",
             f"cluster: {nodes} node(s) x {gpus_per_node} GPU(s) of {gpu_gb:g} GB (a role fits within {USABLE:.0%})",
             f"placement: {cfg.run.placement}", ""]
    colocated = cfg.run.placement == "colocated"
    ok = True
    if colocated:
        way = sampling_weights(cfg, size, gpu_gb)
        table, fit = _table(f"hybrid worker ({lr.strategy}, {lr.num_workers} worker(s), sampling on the {way})",
                            hybrid_rows(cfg, size, way), gpu_gb)
        lines += table
        ok &= fit or lr.num_gpus <= 0
        for other in ("module", "copy"):
            total = sum(v for _, v in hybrid_rows(cfg, size, other))
            lines.append(f"sampling on the {other + ':':<7} {total:6.1f} GB per worker, sampling weights moved "
                         f"{weights_moved(cfg, size, other) / GB:7.1f} GB per worker per iteration"
                         + ("   (chosen)" if other == way else ""))
        lines.append("")
    else:
        for title, rows, needs_gpu in ((f"learner rank ({lr.strategy}, {lr.num_workers} rank(s))",
                                        learner_rows(cfg, size, lr.num_workers, lr.strategy), lr.num_gpus > 0),
                                       ("rollout actor", rollout_rows(cfg, size), cfg.rollout.num_gpus > 0)):
            table, fit = _table(title, rows, gpu_gb)
            lines += table
            ok &= fit or not needs_gpu
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
    if colocated:
        line, placed = _colocated_gpus(cfg, size, gpu_gb, gpus_per_node, nodes)
        lines.append(line)
        ok &= placed
    else:
        lines.append(_disaggregated_gpus(cfg, gpus_per_node, nodes))
    lines.append("")
    lines += time_lines(layout_times(cfg, size, gpu_gb, tflops))
    lines.append(f"(at {tflops:g} sustained TFLOP/s per GPU, --gpu-tflops; sampling and training only, sync pipeline)")
    return "\n".join(lines), ok


def _disaggregated_gpus(cfg: Config, gpus_per_node: int, nodes: int) -> str:
    lr = cfg.learner
    have = gpus_per_node * nodes
    parts = {"learners": lr.num_workers * lr.num_gpus, "rollout": cfg.rollout.num_workers * cfg.rollout.num_gpus,
             "rewards": sum(r.replicas * r.num_gpus for r in cfg.rewards.values())}
    need = sum(parts.values())
    nodes_needed = -(-need // gpus_per_node) if need else 0
    return ("GPUs: " + " + ".join(f"{k} {v:g}" for k, v in parts.items()) + f" = {need:g} of {have}"
            + ("" if need <= have else f": needs {nodes_needed:g} node(s) of {gpus_per_node} (--nodes)"))


def colocated_actors(cfg: Config, size: ModelSize, gpu_gb: float) -> list[Actor]:
    """The hybrid workers (first, as their placement group is made first) and the reward replicas
    that ask for GPUs, each with its planned memory."""
    hybrid = sum(v for _, v in hybrid_rows(cfg, size, sampling_weights(cfg, size, gpu_gb)))
    actors = [Actor("hybrid", cfg.learner.num_gpus, hybrid) for _ in range(cfg.learner.num_workers)]
    for name, rc in cfg.rewards.items():
        rows = reward_rows(rc)
        memory = sum(v for _, v in rows) if rows is not None else None
        actors += [Actor(f"reward/{name}", rc.num_gpus, memory) for _ in range(rc.replicas)]
    return actors


def _colocated_gpus(cfg: Config, size: ModelSize, gpu_gb: float, gpus_per_node: int, nodes: int) -> tuple[str, bool]:
    lr = cfg.learner
    if lr.num_gpus <= 0:
        return "GPUs: none asked for (hybrid workers on CPU)", True
    actors = pack(colocated_actors(cfg, size, gpu_gb), Target.uniform(nodes, gpus_per_node, gpu_gb))
    used = len({gpu for a in actors for gpu in a.gpus})
    nodes_used = len({node for a in actors for node, _ in a.gpus})
    rewards = [a for a in actors if a.role.startswith("reward/") and a.num_gpus > 0]
    shared = sum(1 for a in rewards if a.num_gpus < 1)
    text = (f"GPUs: hybrid workers {lr.num_workers} x {lr.num_gpus:g}"
            + (f" + rewards {sum(a.num_gpus for a in rewards):g}" if rewards else "")
            + (f" ({shared} replica(s) sharing the hybrid workers' GPUs)" if shared else ""))
    errors = [f"{a.role}: {a.error}" for a in actors if a.error]
    if errors:
        return text + f": does NOT fit {nodes} node(s) of {gpus_per_node}: {errors[0]}", False
    where = "fits one node" if nodes_used == 1 else f"fits {nodes_used} nodes"
    return text + f" = {used} of {gpus_per_node * nodes} GPUs: {where}", True


def comparison_splits(cfg: Config, size: ModelSize, gpu_gb: float, gpus: int) -> list[tuple[int, int, int]]:
    """The disaggregated layouts of ``gpus`` GPUs a colocated run is compared with: ``(learners,
    rollout GPUs, reward GPUs)`` with the reward replicas' GPUs rounded up, fsdp learners from the
    fewest that fit (full fine-tuning; the configured count under LoRA) doubling while a rollout
    GPU is left, and the rest sampling."""
    first = smallest_learner_count(cfg, size, gpu_gb) if cfg.model.lora_rank == 0 else cfg.learner.num_workers
    reward_gpus = int(-(-sum(r.replicas * r.num_gpus for r in cfg.rewards.values()) // 1))
    out = []
    learners = first
    while learners is not None and gpus - learners - reward_gpus >= 1:
        out.append((learners, gpus - learners - reward_gpus, reward_gpus))
        if cfg.model.lora_rank:
            break
        learners *= 2
    return out


def layout_times(cfg: Config, size: ModelSize, gpu_gb: float, tflops: float) -> list[LayoutTime]:
    """The run's own layout first, then the other one on the same GPUs."""
    if cfg.run.placement == "colocated":
        own = colocated_time(cfg, size, tflops, sampling_weights(cfg, size, gpu_gb))
        others = []
        for learners, rollouts, rewards in comparison_splits(cfg, size, gpu_gb, cfg.learner.num_workers):
            other = disaggregated_time(as_disaggregated(cfg, learners, rollouts), size, tflops, learners, rollouts)
            other.detail += f" ({rewards} reward GPU(s))"
            others.append(other)
        # the fastest split of the same GPUs
        return [own] + ([min(others, key=lambda t: t.iteration_s)] if others else [])
    lr, ro = cfg.learner, cfg.rollout
    own = disaggregated_time(cfg, size, tflops, lr.num_workers, ro.num_workers)
    gpus = round(lr.num_workers * lr.num_gpus + ro.num_workers * ro.num_gpus) or lr.num_workers + ro.num_workers
    hybrid = as_disaggregated(cfg, gpus, gpus)
    hybrid.run.placement = "colocated"
    return [own, colocated_time(hybrid, size, tflops, sampling_weights(hybrid, size, gpu_gb))]


def check_learner_fits(cfg: Config) -> Optional[str]:
    """One line saying why a learner rank (a hybrid worker when colocated) does not fit
    ``learner.gpu_memory_gb``, or None."""
    gpu_gb = cfg.learner.gpu_memory_gb
    if gpu_gb <= 0 or cfg.learner.num_gpus <= 0:
        return None
    size = model_size(cfg)
    if cfg.run.placement == "colocated":
        way = sampling_weights(cfg, size)
        rows = hybrid_rows(cfg, size, way) + [("rewards beside it", rewards_beside(cfg))]
        if fits(rows, gpu_gb):
            return None
        return (f"a hybrid worker needs {sum(v for _, v in rows):.1f} GB ({cfg.learner.strategy}, "
                f"{cfg.learner.num_workers} worker(s), sampling on the {way}, with the reward replicas beside it) "
                f"but learner.gpu_memory_gb={gpu_gb:g} allows {USABLE * gpu_gb:.1f} GB; use more workers, "
                "rollout.colocated_weights=module, rollout.offload_encoders=true or learner.offload_optimizer=true "
                "(see mixgrpo-ray plan)")
    rows = learner_rows(cfg, size, cfg.learner.num_workers, cfg.learner.strategy)
    if fits(rows, gpu_gb):
        return None
    n = smallest_learner_count(cfg, size, gpu_gb)
    hint = f"use learner.strategy=fsdp with learner.num_workers>={n}" if n else "use LoRA (model.lora_rank)"
    return (f"a learner rank needs {sum(v for _, v in rows):.1f} GB ({cfg.learner.strategy}, "
            f"{cfg.learner.num_workers} rank(s)) but learner.gpu_memory_gb={gpu_gb:g} allows {USABLE * gpu_gb:.1f} GB; "
            f"{hint} (see mixgrpo-ray plan)")
