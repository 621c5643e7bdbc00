"""A learner group's checkpoint with ``torch.distributed.checkpoint`` (layout in
:mod:`mixgrpo_ray.common.sharded_checkpoint`), and loading either kind on any number of ranks.

* ``save``: every rank calls it (a collective); each writes the rows of the weights and AdamW
  state it owns into ``<staging>/sharded``; the driver then commits the staging folder as
  before. No rank ever holds the whole model.
* ``load``: every rank calls it. A sharded checkpoint is read by DCP, which reshards to this
  group (2 ranks -> 1, 1 -> 2, fsdp -> replicate, replicate -> fsdp all go the same way). A
  single-file checkpoint (``weights.safetensors`` + ``optimizer.pt``, written by a replicated
  group) loads into a sharded group too: the weights and the index-keyed AdamW state are handed
  to ``set_state_dict`` as full state dicts, and each rank keeps its rows.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mixgrpo_ray.common import checkpoint as ckpt
from mixgrpo_ray.common.sharded_checkpoint import SHARDED_DIR, sharded_dir


def _state(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(module, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def save(directory: "str | Path", module: torch.nn.Module, optimizer: torch.optim.Optimizer, version: int) -> Path:
    import torch.distributed.checkpoint as dcp

    path = Path(directory) / SHARDED_DIR
    state = _state(module, optimizer)
    state["learner"] = {"version": torch.tensor(int(version)), "torch_rng": torch.get_rng_state()}
    dcp.save(state, checkpoint_id=str(path))
    return path


def load(directory: "str | Path", module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load a sharded or single-file checkpoint into ``module`` and ``optimizer``; sets the
    torch RNG state and returns the weight version."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    src = sharded_dir(directory)
    if src is not None:
        state = _state(module, optimizer)
        state["learner"] = {"version": torch.zeros((), dtype=torch.int64), "torch_rng": torch.get_rng_state()}
        dcp.load(state, checkpoint_id=str(src))
        set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        torch.set_rng_state(state["learner"]["torch_rng"])
        return int(state["learner"]["version"])
    weights = ckpt.read_weights(directory)
    extra = ckpt.load_trainer_state(directory)
    names = [n for n, _ in module.named_parameters()]
    optim = extra["optimizer"]  # parameters numbered in module order (build_optimizer)
    full_optim = {
        "state": {names[int(i)]: s for i, s in optim["state"].items()},
        "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in optim["param_groups"]],
    }
    set_state_dict(module, optimizer, model_state_dict=weights, optim_state_dict=full_optim,
                   options=StateDictOptions(full_state_dict=True))
    torch.set_rng_state(extra["torch_rng"])
    return int(extra["version"])
