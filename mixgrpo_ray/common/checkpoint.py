"""The checkpoint layout, known in this one module::

    RUN/checkpoints/iter_000050/    a complete checkpoint (renamed into place when whole)
        weights.safetensors         the trainable weights (metadata: version)
        optimizer.pt                optimiser state, weight version, torch RNG (tensors only)
        sharded/                    instead of the two above with learner.strategy=fsdp: the
                                    torch.distributed.checkpoint files (common/sharded_checkpoint.py)
        state.json                  the driver's state and a sha256 per file; its presence marks
                                    the checkpoint complete
    RUN/checkpoints/.iter_000050.partial/   staging while a checkpoint is written
    RUN/checkpoints/latest          the name of the newest complete checkpoint

Nothing is unpickled on load: weights are safetensors and the optimiser file is read with
``torch.load(weights_only=True)``. :func:`verify` checks every file against the checksum
recorded when the checkpoint was committed, so a corrupt or truncated file is reported by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from mixgrpo_ray.common.files import atomic_write_text
from mixgrpo_ray.common.sharded_checkpoint import read_model_state, sharded_dir

CHECKPOINTS_DIR = "checkpoints"
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
LATEST_MARKER = "latest"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, as one line naming the file and the fix."""


def checkpoint_name(iteration: int) -> str:
    return f"iter_{int(iteration):06d}"


def checkpoints_dir(run: Path) -> Path:
    return Path(run) / CHECKPOINTS_DIR


def is_complete(path: Path) -> bool:
    return (Path(path) / STATE_FILE).is_file()


def latest_checkpoint(run: Path) -> Optional[Path]:
    """The newest complete checkpoint of the run directory ``run`` (or ``None``)."""
    root = checkpoints_dir(run)
    marker = root / LATEST_MARKER
    if marker.is_file():
        path = root / marker.read_text().strip()
        if is_complete(path):
            return path
    done = sorted(p for p in root.glob("iter_*") if is_complete(p))
    return done[-1] if done else None


def staging_dir(run: Path, iteration: int) -> Path:
    """An empty staging folder for the checkpoint of ``iteration``."""
    path = checkpoints_dir(run) / f".{checkpoint_name(iteration)}.partial"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def commit(run: Path, staging: Path, iteration: int, state: Mapping[str, Any]) -> Path:
    """Write the driver ``state`` (with a checksum of every file in ``staging``) into
    ``staging``, rename it into place (atomic) and point ``latest`` at it."""
    files = {p.relative_to(staging).as_posix(): sha256(p) for p in sorted(Path(staging).rglob("*"))
             if p.is_file() and p.name != STATE_FILE}  # the sharded/ files of an fsdp learner too
    atomic_write_text(Path(staging) / STATE_FILE, json.dumps({**dict(state), "files": files}, indent=2))
    final = checkpoints_dir(run) / checkpoint_name(iteration)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    atomic_write_text(checkpoints_dir(run) / LATEST_MARKER, final.name)
    return final


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(checkpoint: Path) -> None:
    """Raise CheckpointError naming the first file of ``checkpoint`` that is missing or whose
    content differs from the checksum recorded at commit."""
    for name, digest in read_state(checkpoint).get("files", {}).items():
        path = Path(checkpoint) / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing; restore it or delete {checkpoint} to resume from an earlier checkpoint")
        if sha256(path) != digest:
            raise CheckpointError(f"checkpoint file {path} is corrupt or truncated (checksum mismatch); "
                                  f"delete {checkpoint} to resume from an earlier checkpoint")


def prune(run: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints of ``run`` (``keep`` 0: none);
    returns the deleted folders."""
    if keep <= 0:
        return []
    root = checkpoints_dir(run)
    for leftover in root.glob(".iter_*.deleting"):  # a deletion that a killed process left half done
        shutil.rmtree(leftover, ignore_errors=True)
    done = sorted(p for p in root.glob("iter_*") if is_complete(p))
    old = done[:-keep]
    # incomplete folders older than the newest complete checkpoint are what an interrupted deletion
    # of an earlier version of this code left behind (staging folders are named .iter_*.partial)
    stale = [p for p in root.glob("iter_*") if done and p.name < done[-1].name and not is_complete(p)]
    for path in old + stale:
        doomed = path.with_name(f".{path.name}.deleting")
        try:
            path.rename(doomed)  # atomic: the checkpoint is gone at once, not half-deleted
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
    return old


def read_state(checkpoint: Path) -> dict:
    path = Path(checkpoint) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint state {path}: cannot read it ({exc}); resume from another checkpoint") from None


# --- weights -------------------------------------------------------------------------------------
def find_weights(path: "str | Path") -> Path:
    """The weights file of ``path``: a ``.safetensors`` file, a checkpoint folder holding
    ``weights.safetensors``, or a run directory (its latest complete checkpoint)."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix != ".safetensors":
            raise CheckpointError(f"{path}: not a .safetensors file; pass RUN_DIR/checkpoints/iter_N or its {WEIGHTS_FILE}")
        return p
    if p.is_dir():
        if (p / WEIGHTS_FILE).is_file():
            return p / WEIGHTS_FILE
        if sharded_dir(p) is not None:  # a learner group's sharded checkpoint (its sharded/ folder)
            return sharded_dir(p)
        if checkpoints_dir(p).is_dir():
            latest = latest_checkpoint(p)
            if latest is not None and (latest / WEIGHTS_FILE).is_file():
                return latest / WEIGHTS_FILE
            if latest is not None and sharded_dir(latest) is not None:
                return sharded_dir(latest)
            raise CheckpointError(f"{path}: the run has no complete checkpoint yet; pass a run with checkpoints/iter_N/{WEIGHTS_FILE}")
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE} in this folder; pass RUN_DIR/checkpoints/iter_N")
    raise CheckpointError(f"{path}: does not exist; pass RUN_DIR/checkpoints/iter_N or a weights .safetensors file")


def run_of(weights: Path) -> Optional[Path]:
    """``RUN`` when ``weights`` is ``RUN/checkpoints/<name>/weights.safetensors`` (or ``sharded``)."""
    ckpt = Path(weights).parent
    return ckpt.parent.parent if ckpt.parent.name == CHECKPOINTS_DIR else None


def save_weights(directory: Path, state: Mapping[str, torch.Tensor], version: int) -> Path:
    from safetensors.torch import save_file

    path = Path(directory) / WEIGHTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"version": str(int(version))})
    return path


def read_weights(path: "str | Path", header_only: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, or of a checkpoint folder's ``weights.safetensors``
    (``header_only``: only check that it reads; returns ``{}``). Trainable-weight files written
    with a ``transformer.`` prefix on every key are read without it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    if p.is_dir() and not (p / WEIGHTS_FILE).is_file() and sharded_dir(p) is not None:
        try:
            return {} if header_only else read_model_state(sharded_dir(p))
        except Exception as exc:  # noqa: BLE001 - DCP raises its own error types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{p}: cannot read the sharded checkpoint ({first})") from None
    if p.is_dir():
        p = p / WEIGHTS_FILE
    if not p.is_file():
        raise CheckpointError(f"trained weights {str(p)!r} not found; pass a checkpoint folder or its {WEIGHTS_FILE}")
    try:
        if header_only:
            with safe_open(str(p), framework="pt") as f:
                if not list(f.keys()):
                    raise ValueError("the file holds no tensors")
            return {}
        state = load_file(str(p), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{p}: cannot read weights ({first}); the file is damaged or not safetensors") from None
    if state and all(k.startswith("transformer.") for k in state):
        state = {k[len("transformer."):]: v for k, v in state.items()}
    return state


# --- optimiser state -----------------------------------------------------------------------------
def save_trainer_state(directory: Path, optimizer_state: Mapping[str, Any], version: int) -> Path:
    path = Path(directory) / OPTIMIZER_FILE
    torch.save({"optimizer": dict(optimizer_state), "version": int(version), "torch_rng": torch.get_rng_state()}, path)
    return path


def load_trainer_state(directory: Path) -> dict:
    """``{"optimizer", "version", "torch_rng"}`` read without unpickling arbitrary objects."""
    path = Path(directory) / OPTIMIZER_FILE
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: cannot read optimiser state ({first}); resume from another checkpoint") from None
