"""How tensors travel between this project's processes: as raw bytes, out of band.

Ray pickles a ``torch.Tensor`` through its storage's ``__reduce__``, which runs ``torch.save``
with the legacy pickler: a full in-band copy of the bytes, and a reference cycle (the pickler
class ``torch.save`` builds per call) left behind in the sending process. Those cycles are only
reclaimed by a full garbage collection, and until then the objects the call returned stay in the
object store: a rollout actor that returns a trajectory every iteration grew the object store by
a trajectory and a weight bucket per iteration until Python's generation-2 collection happened to
run (``tests/train/test_soak.py``).

:func:`install` registers, in the calling process, a reducer that ships a tensor as a flat
``uint8`` NumPy view of its bytes plus dtype and shape: pickle protocol 5 hands the view to Ray
out of band (written straight into the object store, no intermediate copy) and nothing cyclic is
created. :func:`tensor_from_wire` rebuilds it on the receiving side as a writable copy (the object
store's buffer is read-only and may be shared by other readers), on the original device when that
device exists there. Only the sender needs :func:`install`; every role's actor and the driver call
it, so everything the pipeline sends (images, trajectories, scores, weights) takes this path.
"""

from __future__ import annotations

import numpy as np
import ray
import torch

def tensor_to_wire(t: torch.Tensor) -> tuple[np.ndarray, str, tuple[int, ...], str]:
    """``(uint8 bytes, dtype name, shape, device)`` of ``t`` (detached, CPU, contiguous)."""
    device = str(t.device)
    flat = t.detach().to("cpu").contiguous()
    raw = flat.reshape(-1).view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)
    return raw.numpy(), str(t.dtype).removeprefix("torch."), tuple(t.shape), device


def tensor_from_wire(raw: np.ndarray, dtype: str, shape: tuple[int, ...], device: str) -> torch.Tensor:
    """The tensor :func:`tensor_to_wire` described: a writable copy, on ``device`` when present."""
    torch_dtype = getattr(torch, dtype)
    out = torch.from_numpy(np.array(raw, dtype=np.uint8, copy=True))
    out = out.view(torch_dtype).reshape(shape) if out.numel() else torch.empty(shape, dtype=torch_dtype)
    if device != "cpu" and _device_available(device):
        out = out.to(device)
    return out


def _device_available(device: str) -> bool:
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available()
    module = getattr(torch, kind, None)
    return bool(module is not None and getattr(module, "is_available", lambda: False)())


def install() -> None:
    """Register the out-of-band tensor reducer for this process's Ray pickler (idempotent; Ray
    must be connected in this process: the driver after ``ray.init``, or an actor)."""
    ray.util.register_serializer(torch.Tensor, serializer=tensor_to_wire, deserializer=_from_tuple)


def _from_tuple(args: tuple) -> torch.Tensor:
    return tensor_from_wire(*args)
