"""Sharded checkpoints: the ``sharded/`` folder a learner group with ``learner.strategy=fsdp``
writes with ``torch.distributed.checkpoint`` (DCP) inside a checkpoint folder::

    RUN/checkpoints/iter_000050/sharded/   .metadata + one __<rank>_0.distcp file per learner rank
        model.<name>      the trainable weights (each rank wrote the rows it owns)
        optim.<...>       AdamW state, keyed by parameter name (sharded like the weights)
        learner.version   the weight version;  learner.torch_rng  rank 0's torch RNG state

Any number of ranks can load it (DCP reshards on read; see ``learner/dcp_checkpoint.py``). This
module reads it without a process group: :func:`read_model_state` assembles the whole weights in
one process (what ``eval``, ``sample`` and ``consolidate`` use) and :func:`consolidate` writes
them to one safetensors file. torch only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

SHARDED_DIR = "sharded"
MODEL_PREFIX = "model."


def is_sharded(path: "str | Path") -> bool:
    """``path`` is a DCP folder (holds ``.metadata``)."""
    return (Path(path) / ".metadata").is_file()


def sharded_dir(checkpoint: "str | Path") -> Optional[Path]:
    """The DCP folder of a checkpoint folder (or ``checkpoint`` itself if it is one), else None."""
    p = Path(checkpoint)
    for candidate in (p, p / SHARDED_DIR):
        if is_sharded(candidate):
            return candidate
    return None


def model_metadata(path: "str | Path") -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``name -> (shape, dtype)`` of the trainable weights in a DCP folder (reads the metadata)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = FileSystemReader(str(path)).read_metadata()
    return {
        key[len(MODEL_PREFIX):]: (tuple(m.size), m.properties.dtype)
        for key, m in meta.state_dict_metadata.items()
        if key.startswith(MODEL_PREFIX) and isinstance(m, TensorStorageMetadata)
    }


def read_model_state(path: "str | Path") -> dict[str, torch.Tensor]:
    """The whole trainable weights of a DCP folder, as CPU tensors, in this one process."""
    import torch.distributed.checkpoint as dcp

    shapes = model_metadata(path)
    if not shapes:
        raise ValueError(f"{path}: the sharded checkpoint holds no model weights")
    state = {"model": {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in shapes.items()}}
    dcp.load(state, checkpoint_id=str(path), no_dist=True)
    return state["model"]


def consolidate(checkpoint: "str | Path", out: "str | Path") -> Path:
    """Write the trainable weights of a sharded checkpoint to one safetensors file ``out``
    (metadata: the weight version)."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file

    src = sharded_dir(checkpoint)
    if src is None:
        raise ValueError(f"{checkpoint}: not a sharded checkpoint (no {SHARDED_DIR}/.metadata)")
    tensors = read_model_state(src)
    version = {"learner": {"version": torch.zeros((), dtype=torch.int64)}}
    dcp.load(version, checkpoint_id=str(src), no_dist=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out),
              metadata={"version": str(int(version["learner"]["version"]))})
    return out
