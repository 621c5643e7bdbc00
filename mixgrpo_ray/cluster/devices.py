"""Which device an actor computes on, taken from the GPUs Ray assigned to it.

Ray 2.60 narrows ``CUDA_VISIBLE_DEVICES`` to an actor's own GPUs, so a bare ``cuda`` usually is
the right GPU. It is not when that narrowing is switched off
(``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES``) or when an actor inherits a wider
``CUDA_VISIBLE_DEVICES``: then every actor of a node computes on GPU 0, and two NCCL learners on
one node fail with "Duplicate GPU detected". :func:`actor_device` therefore maps the first id of
``ray.get_gpu_ids()`` to its torch index through ``CUDA_VISIBLE_DEVICES`` and makes that device
current. An actor given no GPU computes on CPU (even though, in Ray 2.60, it *sees* all of the
node's GPUs); one given GPUs that torch cannot use is refused
(:class:`~mixgrpo_ray.models.build.NoCudaError`).
"""

from __future__ import annotations

import datetime

import os
from typing import Optional, Sequence

import ray
import torch
import torch.distributed as dist

from mixgrpo_ray.models.build import pick_device


def local_gpu_index(gpu_ids: Sequence, visible: Optional[str]) -> Optional[int]:
    """The torch index of the first GPU in ``gpu_ids`` (Ray's ids: physical indices or UUIDs)
    given the process's ``CUDA_VISIBLE_DEVICES`` ``visible``; ``None`` without ids."""
    if not gpu_ids:
        return None
    first = str(gpu_ids[0]).strip()
    if visible is None:  # every GPU visible: torch's index is the physical index
        return int(first)
    entries = [v.strip() for v in visible.split(",") if v.strip()]
    if first in entries:
        return entries.index(first)
    raise RuntimeError(
        f"Ray assigned GPU {first} to this actor but CUDA_VISIBLE_DEVICES={visible!r} hides it; "
        "do not set CUDA_VISIBLE_DEVICES for Ray workers (Ray sets it per actor)"
    )


def assigned_gpu_ids() -> list[str]:
    """The ids of the GPUs Ray assigned to the calling actor (empty for a CPU actor)."""
    return [str(i) for i in ray.get_gpu_ids()]


def actor_device(num_gpus: float) -> torch.device:
    """The device of an actor created with ``num_gpus``: CPU for 0, else the CUDA device Ray
    assigned (made the current device, so bare ``cuda`` tensors land there too)."""
    index = None
    if num_gpus > 0:
        index = local_gpu_index(assigned_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    device = pick_device(num_gpus, index)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def join_process_group(backend: str, device: torch.device, addr: str, port: int, rank: int, world_size: int,
                       timeout_s: float = 600.0) -> str:
    """``torch.distributed.init_process_group`` for one learner rank; returns the backend used.

    ``auto`` is NCCL on CUDA and gloo on CPU. For NCCL the rank's own GPU is made current first
    and passed as ``device_id`` (binding the communicator to it), so ranks on one node never share
    GPU 0. ``timeout_s`` bounds the rendezvous (and every later collective of the group): a rank
    that cannot reach rank 0's address, or whose peers never come, fails with a one-line reason
    instead of waiting for ever."""
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {}
    if backend == "nccl":
        if device.type != "cuda":
            raise RuntimeError(f"learner.backend=nccl needs a GPU per learner, but rank {rank} computes on {device}")
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    try:
        dist.init_process_group(
            backend=backend, init_method=f"tcp://{addr}:{port}", rank=rank, world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s), **kwargs
        )
    except (RuntimeError, TimeoutError, OSError) as exc:  # DistStoreError / DistNetworkError are RuntimeErrors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(
            f"learner rank {rank} of {world_size} could not join the process group at {addr}:{port} "
            f"within learner.init_timeout_s={timeout_s:g}s ({first}); check that every learner node can "
            "reach that address and port, and that all ranks were placed"
        ) from exc
    return backend
