"""How the learner ranks share the model: ``replicate`` or ``fsdp`` (``learner.strategy``). torch only.

* ``replicate``: every rank holds the whole trainable model, its gradients and AdamW state;
  after each backward pass the gradients are averaged across ranks with all-reduces over
  buckets of at most ``learner.reduce_bucket_mb`` (never one model-sized flat buffer).
* ``fsdp``: PyTorch's FSDP2 (``fully_shard``) wraps every transformer block and then the root
  transformer over a 1-D device mesh of all learner ranks. Each rank keeps 1/N of the fp32 master
  weights, gradients and AdamW state (the optimiser is built on the sharded parameters, so it is
  sharded too); a block's weights are all-gathered just before its forward/backward and freed
  after; gradients are reduce-scattered (averaged). On GPU the gathered weights are bf16 (compute)
  and gradients are reduced in fp32 (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``);
  on CPU everything stays fp32. ``learner.offload_optimizer`` (GPU only) keeps the sharded
  weights, gradients and AdamW state in host memory (``CPUOffloadPolicy``); the optimiser step
  then runs on the CPU.

Per-rank memory of the trainable part (P parameters, N ranks; docs in ``mixgrpo_ray/plan/memory_plan.py``):
replicate ``16 P`` bytes (fp32 weight + grad + two AdamW moments), fsdp ``16 P / N`` plus the
gathered bf16 weights of the block being computed.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
import torch.distributed as dist

#: the block lists of a diffusers FLUX transformer (the tiny model uses the same class)
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


def is_dtensor(t: object) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def shard_module(module: torch.nn.Module, device: torch.device, world_size: int, *,
                 offload_optimizer: bool = False) -> int:
    """Apply FSDP2 to ``module`` in place: one ``fully_shard`` per transformer block, then the
    root. Needs an initialised default process group of ``world_size`` ranks (a 1-rank group
    works too). Returns how many blocks were wrapped."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    if device.type == "cuda":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        offload = CPUOffloadPolicy(pin_memory=True) if offload_optimizer else OffloadPolicy()
    else:  # CPU: fp32 compute and reduction; the weights already live on the host
        mp, offload = MixedPrecisionPolicy(), OffloadPolicy()
    blocks = [b for name in BLOCK_LISTS for b in getattr(module, name, [])]
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, offload_policy=offload)
    fully_shard(module, mesh=mesh, mp_policy=mp, offload_policy=offload)
    return len(blocks)


def all_reduce_mean(params: Sequence[torch.nn.Parameter], world_size: int, bucket_bytes: int,
                    group: Optional[object] = None) -> None:
    """Average the gradients of ``params`` over ``world_size`` ranks, one all-reduce per bucket
    of at most ``bucket_bytes`` (a single larger gradient is reduced alone, in place). A missing
    gradient counts as zero."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in _buckets([p.grad for p in params], bucket_bytes):
        if len(bucket) == 1:
            flat = bucket[0]
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            flat /= world_size
            continue
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat /= world_size
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def all_reduce_int(value: int, device: torch.device, op=dist.ReduceOp.SUM,
                   group: Optional[object] = None) -> int:
    """``value`` reduced over the ranks of ``group`` (default: the world) with ``op``; a tensor
    on ``device`` (NCCL needs the rank's GPU, gloo the CPU)."""
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=op, group=group)
    return int(t.item())


def _buckets(tensors: Iterable[torch.Tensor], bucket_bytes: int) -> list[list[torch.Tensor]]:
    """Consecutive groups of ``tensors`` of at most ``bucket_bytes`` each (same dtype inside)."""
    out: list[list[torch.Tensor]] = []
    size = 0
    for t in tensors:
        n = t.numel() * t.element_size()
        if not out or size + n > bucket_bytes or out[-1][0].dtype != t.dtype:
            out.append([])
            size = 0
        out[-1].append(t)
        size += n
    return out


def to_float(value: torch.Tensor) -> float:
    """A scalar tensor (a DTensor with a partial/sharded placement included) as a float; for a
    DTensor this is a collective every rank must call."""
    if is_dtensor(value):
        value = value.full_tensor()
    return float(value)


def full_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole CPU copies of ``state`` (DTensor shards gathered: a collective every rank must
    call at the same time)."""
    out = {}
    for k, v in state.items():
        v = v.full_tensor() if is_dtensor(v) else v
        out[k] = v.detach().to("cpu").clone()
    return out
