"""Weights in buckets: what a learner rank sends to rollout actors and how they load it. torch only.

A learner rank sends only what it *owns*: under ``fsdp`` its local shard of every parameter (a
range of rows, dim 0, as FSDP2 shards), under ``replicate`` every ``world_size``-th whole tensor.
What it owns is cut into **buckets** of at most ``bucket_bytes`` in the publish dtype (a tensor
larger than a bucket is split by rows); a bucket is one flat tensor, packed from the live weights
right before it is sent, so a publish never materialises more than one bucket beyond the shard.
Every bucket travels with its :class:`BucketSpec` (which rows of which tensors it holds), the
weight version, and a checksum of its bytes; a receiver checks the checksum before copying the
bucket into its own weights in place, and checks that the buckets of all ranks cover every
trainable tensor exactly once.

Checksum: CRC-32 (zlib) of the bytes for host buffers; for CUDA buffers (the collective transport
on NCCL) a Fletcher-style pair of sums of the bytes computed on the device (``s1 = sum b_i``,
``s2 = sum (i+1) b_i`` over the byte view, mod 2^61-1, in chunks), so no bucket is copied to the
host just to be checked. Both ends of a transfer use the same device type, hence the same sum.
"""

from __future__ import annotations

import dataclasses
import zlib
from datetime import timedelta
from typing import Mapping, Sequence

import torch

from mixgrpo_ray.algo.sharding import is_dtensor


class WeightSyncError(RuntimeError):
    """A sync that cannot be loaded (bad checksum, incomplete or mismatched buckets)."""


@dataclasses.dataclass(frozen=True)
class Piece:
    """Rows ``[row_start, row_start + rows)`` of tensor ``key`` (full shape ``shape``), stored at
    element ``offset`` of a bucket. A 0-dim tensor is one row."""

    key: str
    shape: tuple[int, ...]
    row_start: int
    rows: int
    offset: int

    @property
    def numel(self) -> int:
        inner = 1
        for d in self.shape[1:]:
            inner *= d
        return self.rows * inner


@dataclasses.dataclass(frozen=True)
class BucketSpec:
    """One bucket: sent by learner ``rank``, the ``index``-th of its buckets, ``numel`` elements of
    ``dtype`` (a torch dtype name, e.g. ``"bfloat16"``)."""

    rank: int
    index: int
    dtype: str
    numel: int
    pieces: tuple[Piece, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.torch_dtype).element_size()


def owned_slices(state: Mapping[str, torch.Tensor], rank: int, world_size: int) -> list[tuple[str, tuple, int, torch.Tensor]]:
    """``(key, full shape, first row, local tensor)`` of what ``rank`` sends: its shard of every
    DTensor (row-sharded by FSDP2), and every ``world_size``-th plain (replicated) tensor."""
    out = []
    plain = 0
    for key, t in state.items():
        if is_dtensor(t):
            from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

            local = t.to_local()
            if local.numel() == 0:
                continue
            _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
            out.append((key, tuple(t.shape), int(offset[0]) if t.ndim else 0, local.detach()))
            continue
        if plain % world_size == rank:
            out.append((key, tuple(t.shape), 0, t.detach()))
        plain += 1
    return out


def layout_buckets(slices: Sequence[tuple[str, tuple, int, torch.Tensor]], dtype: torch.dtype, bucket_bytes: int,
                 rank: int) -> list[BucketSpec]:
    """Cut ``slices`` (see :func:`owned_slices`) into buckets of at most ``bucket_bytes`` in
    ``dtype`` (a single row larger than a bucket gets a bucket of its own)."""
    size = torch.empty((), dtype=dtype).element_size()
    cap = max(1, bucket_bytes // size)  # elements per bucket
    specs: list[BucketSpec] = []
    pieces: list[Piece] = []
    used = 0

    def close() -> None:
        nonlocal pieces, used
        if pieces:
            specs.append(BucketSpec(rank, len(specs), str(dtype).replace("torch.", ""), used, tuple(pieces)))
        pieces, used = [], 0

    for key, shape, row0, local in slices:
        rows = local.shape[0] if local.ndim else 1
        per_row = max(1, local.numel() // max(rows, 1))
        done = 0
        while done < rows:
            if used and used + per_row > cap:
                close()
            take = min(rows - done, max(1, (cap - used) // per_row))
            pieces.append(Piece(key, shape, row0 + done, take, used))
            used += take * per_row
            done += take
    close()
    return specs


def pack(spec: BucketSpec, local: Mapping[str, tuple[int, torch.Tensor]], device: torch.device | str = "cpu") -> torch.Tensor:
    """The bucket ``spec`` as one flat tensor on ``device``, converted to the publish dtype;
    ``local[key] = (first row of the local tensor, local tensor)``."""
    buf = torch.empty(spec.numel, dtype=spec.torch_dtype, device=device)
    for p in spec.pieces:
        row0, t = local[p.key]
        src = t.reshape(1, -1) if t.ndim == 0 else t[p.row_start - row0 : p.row_start - row0 + p.rows]
        buf[p.offset : p.offset + p.numel].copy_(src.reshape(-1))
    return buf


_MOD = (1 << 61) - 1
_CHUNK = 1 << 22


def checksum(buf: torch.Tensor) -> int:
    """The checksum of ``buf``'s bytes (see the module docstring)."""
    raw = buf.reshape(-1).view(torch.uint8)
    if raw.device.type == "cpu":
        return zlib.crc32(memoryview(raw.numpy()))
    s1 = s2 = 0
    for start in range(0, raw.numel(), _CHUNK):
        c = raw[start : start + _CHUNK].to(torch.int64)
        idx = torch.arange(start + 1, start + 1 + c.numel(), device=c.device, dtype=torch.int64)
        s1 = (s1 + int(c.sum())) % _MOD
        s2 = (s2 + int((c * idx).sum())) % _MOD
    return (s1 << 64) | s2


def check_coverage(specs: Sequence[BucketSpec], targets: Mapping[str, torch.Tensor]) -> None:
    """Raise unless the buckets hold every key of ``targets`` with its shape, each row once."""
    rows: dict[str, int] = {}
    for spec in specs:
        for p in spec.pieces:
            if p.key not in targets:
                raise WeightSyncError(f"weight sync: bucket {spec.rank}/{spec.index} holds {p.key!r}, which this model lacks")
            if tuple(targets[p.key].shape) != p.shape:
                raise WeightSyncError(f"weight sync: {p.key!r} has shape {p.shape}, this model {tuple(targets[p.key].shape)}")
            rows[p.key] = rows.get(p.key, 0) + p.rows
    for key, t in targets.items():
        want = t.shape[0] if t.ndim else 1
        if rows.get(key, 0) != want:
            raise WeightSyncError(f"weight sync: {key!r} arrived with {rows.get(key, 0)} of {want} rows")


def verify(spec: BucketSpec, buf: torch.Tensor, expected: int) -> None:
    got = checksum(buf)
    if got != expected:
        raise WeightSyncError(
            f"weight sync: bucket {spec.index} of learner rank {spec.rank} is corrupt (checksum {got:#x}, sent {expected:#x})"
        )


@torch.no_grad()
def unpack_into(spec: BucketSpec, buf: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> None:
    """Copy every piece of ``buf`` into its rows of ``targets`` (in place; dtype converted)."""
    for p in spec.pieces:
        t = targets[p.key]
        src = buf[p.offset : p.offset + p.numel]
        if t.ndim == 0:
            t.copy_(src.view(()))
        else:
            dst = t[p.row_start : p.row_start + p.rows]
            dst.copy_(src.view(dst.shape).to(dst.device))


class CollectiveChannel:
    """A torch.distributed process group outside the default one: a learner rank (group rank 0)
    and every rollout actor (ranks 1..R). Built directly on a TCPStore, so members may already
    belong to another default group (the learner ranks do). NCCL on GPU, gloo on CPU."""

    def __init__(self, addr: str, port: int, rank: int, size: int, backend: str, timeout_s: float = 300.0) -> None:
        import torch.distributed as dist

        timeout = timedelta(seconds=timeout_s)
        store = dist.TCPStore(addr, port, size, rank == 0, timeout=timeout)
        store = dist.PrefixStore(f"mixgrpo_weight_sync_{port}", store)
        if backend == "nccl":
            self.pg = dist.ProcessGroupNCCL(store, rank, size)
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.pg = dist.ProcessGroupGloo(store, rank, size, timeout)
            self.device = torch.device("cpu")
        self.rank, self.size = rank, size

    def broadcast(self, t: torch.Tensor, root: int = 0) -> torch.Tensor:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = root
        self.pg.broadcast([t], opts).wait()
        return t

    def send_buckets(self, specs: Sequence[BucketSpec], local: Mapping[str, tuple[int, torch.Tensor]], version: int) -> int:
        """Broadcast every bucket (header ``[version, checksum halves]`` then the data); returns
        the bytes sent."""
        sent = 0
        for spec in specs:
            buf = pack(spec, local, self.device)
            crc = checksum(buf)
            self.broadcast(_header(version, crc, self.device))
            self.broadcast(buf)
            sent += spec.nbytes
            del buf  # before the next bucket is packed: one bucket in memory at a time
        return sent

    def receive_buckets(self, specs: Sequence[BucketSpec], targets: Mapping[str, torch.Tensor], version: int) -> int:
        """Receive, verify and load in place every bucket of ``specs``; returns the bytes. After
        a failed check the remaining buckets are still received (so the sender is not left
        blocked) but not loaded, and the first error is raised at the end."""
        got, error = 0, None
        for spec in specs:
            header = self.broadcast(_header(0, 0, self.device))
            buf = self.broadcast(torch.empty(spec.numel, dtype=spec.torch_dtype, device=self.device))
            if error is not None:
                continue
            try:
                if int(header[0]) != version:
                    raise WeightSyncError(f"weight sync: expected version {version}, the learner sent {int(header[0])}")
                verify(spec, buf, (int(header[1]) << 64) | int(header[2]))
            except WeightSyncError as exc:
                error = exc
                continue
            unpack_into(spec, buf, targets)
            got += spec.nbytes
            del buf
        if error is not None:
            raise error
        return got


def _header(version: int, crc: int, device: torch.device) -> torch.Tensor:
    """``[version, high, low]`` of a checksum that may exceed 64 bits (int64 halves)."""
    return torch.tensor([version, crc >> 64, crc & ((1 << 63) - 1)], dtype=torch.int64, device=device)
