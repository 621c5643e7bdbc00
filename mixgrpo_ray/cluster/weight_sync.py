"""Weight sync: the one path from the learner ranks to the rollout actors (``learner.sync_transport``).

Three parts, one per place they run:

* :class:`WeightSender` inside every learner rank. ``publish`` lays out what the rank owns in
  buckets (:mod:`mixgrpo_ray.algo.weight_buckets`) and returns the manifest, a list of
  :class:`BucketRef`. With ``object_store`` it packs the buckets one at a time, in the publish
  dtype, and ``ray.put`` s each (the rank's host memory holds at most one bucket beyond the
  object store's copy of its shard); with ``collective`` it only lays them out and ``send``
  broadcasts them afterwards.
* :class:`WeightReceiver` inside every rollout actor. ``load`` checks that the manifests of all
  ranks cover its weights, then, bucket by bucket, fetches (``ray.get`` of the bucket, or the
  broadcast of learner rank r's channel), verifies the checksum and copies the bucket into its
  weights in place. A failed check raises :class:`~mixgrpo_ray.algo.weight_buckets.WeightSyncError`;
  the actor then does not report the new version (and refuses to sample until a sync succeeds).
* :class:`WeightSync` in the driver: sets up the collective channels (one per learner rank:
  that rank plus every rollout actor, on a TCPStore the learner hosts), runs each sync and
  returns its version and ``sync/bytes``, ``sync/seconds``, ``sync/gbps``.
"""

from __future__ import annotations

import dataclasses
import socket
import time
import warnings
from typing import Mapping, Optional, Sequence

import ray
import torch

from mixgrpo_ray.cluster.retry import actor_died, get_each
from mixgrpo_ray.algo.weight_buckets import (
    BucketSpec, CollectiveChannel, WeightSyncError, check_coverage, checksum, owned_slices, pack, layout_buckets,
    unpack_into, verify,
)


def node_endpoint() -> tuple[str, int]:
    """(address of this node, a free TCP port on it), for a process group this process hosts."""
    addr = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return addr, port


@dataclasses.dataclass(frozen=True)
class BucketRef:
    """One bucket of a sync: its layout, its checksum (``object_store``; the collective sends it
    with the data) and the ObjectRef of its bytes (``object_store``; ``None`` for ``collective``)."""

    spec: BucketSpec
    checksum: int = 0
    ref: Optional[ray.ObjectRef] = None


class WeightsLost(RuntimeError):
    """A restarted rollout actor was asked for a weight version it cannot fetch by itself (the
    ``collective`` transport broadcasts each version once). The driver re-forms the sync group
    with the live actors, resends the current version, and redoes the call."""


class WeightSender:
    """A learner rank's side (see the module docstring)."""

    def __init__(self, transport: str, dtype: torch.dtype, bucket_mb: float, rank: int, world_size: int) -> None:
        self.transport, self.dtype = transport, dtype
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.rank, self.world_size = rank, world_size
        self.channel: Optional[CollectiveChannel] = None
        self._pending: Optional[tuple[list[BucketSpec], dict]] = None

    def join(self, addr: str, port: int, size: int, backend: str) -> None:
        self.channel = CollectiveChannel(addr, port, 0, size, backend)

    def publish(self, state: Mapping[str, torch.Tensor]) -> list[BucketRef]:
        """The manifest of this rank's buckets of ``state`` (live weights, maybe DTensors)."""
        slices = owned_slices(state, self.rank, self.world_size)
        local = {key: (row0, t) for key, _, row0, t in slices}
        specs = layout_buckets([x for x in slices if x[3].is_floating_point()], self.dtype, self.bucket_bytes, self.rank)
        for dtype in sorted({x[3].dtype for x in slices if not x[3].is_floating_point()}, key=str):
            more = layout_buckets([x for x in slices if x[3].dtype == dtype], dtype, self.bucket_bytes, self.rank)
            specs += [dataclasses.replace(b, index=len(specs) + i) for i, b in enumerate(more)]  # kept exact
        if self.transport == "collective":
            self._pending = (specs, local)
            return [BucketRef(spec) for spec in specs]
        out = []
        for spec in specs:
            buf = pack(spec, local, "cpu")
            out.append(BucketRef(spec, checksum(buf), ray.put(buf.view(torch.uint8).numpy())))
            del buf
        return out

    def send(self, version: int) -> int:
        """Broadcast the buckets laid out by the last ``publish`` (collective); returns bytes."""
        if self.channel is None or self._pending is None:
            raise RuntimeError("weight sync: send() needs join() and publish() first")
        specs, local = self._pending
        self._pending = None
        return self.channel.send_buckets(specs, local, version)


class SenderEndpoints:
    """The weight-sync methods a learner actor exposes to :class:`WeightSync` besides
    ``publish`` (mixed into actor classes that hold a :class:`WeightSender` as ``self.sender``)."""

    sender: WeightSender

    def send_weights(self, version: int) -> int:
        """Broadcast the buckets of the last publish on this rank's collective channel."""
        return self.sender.send(version)

    def sync_endpoint(self) -> tuple[str, int]:
        return node_endpoint()

    def join_weight_sync(self, addr: str, port: int, size: int, backend: str) -> None:
        self.sender.join(addr, port, size, backend)


class WeightReceiver:
    """A rollout actor's side (see the module docstring)."""

    def __init__(self) -> None:
        self.channels: dict[int, CollectiveChannel] = {}

    def join(self, learner_rank: int, addr: str, port: int, rank: int, size: int, backend: str) -> None:
        self.channels[learner_rank] = CollectiveChannel(addr, port, rank, size, backend)

    def load(self, version: int, manifest: Sequence[BucketRef], targets: Mapping[str, torch.Tensor]) -> int:
        """Fetch, verify and load every bucket into ``targets`` in place; returns the bytes."""
        check_coverage([b.spec for b in manifest], targets)
        if manifest and manifest[0].ref is None:
            by_rank: dict[int, list[BucketSpec]] = {}
            for b in manifest:
                by_rank.setdefault(b.spec.rank, []).append(b.spec)
            missing = sorted(set(by_rank) - set(self.channels))
            if missing:
                raise WeightSyncError(f"weight sync: no collective channel to learner ranks {missing}")
            return sum(self.channels[r].receive_buckets(specs, targets, version) for r, specs in sorted(by_rank.items()))
        got = 0
        for b in manifest:
            raw = ray.get(b.ref)
            with warnings.catch_warnings():  # a read-only view of the object store, never written
                warnings.simplefilter("ignore", UserWarning)
                buf = torch.frombuffer(memoryview(raw), dtype=torch.uint8).view(b.spec.torch_dtype)
            verify(b.spec, buf, b.checksum)
            unpack_into(b.spec, buf, targets)
            got += b.spec.nbytes
            del raw, buf
        return got


class WeightSync:
    """The driver's side: one sync from the learner ranks to every rollout actor.

    Learner actors implement ``publish(bump) -> (version, [BucketRef])``, ``send_weights(version)``,
    ``sync_endpoint()`` and ``join_weight_sync(addr, port, size, backend)``; rollout actors
    ``set_weights(version, manifest) -> version``, ``join_weight_sync(learner_rank, addr, port,
    rank, size, backend)`` and ``pid()``.

    ``collective``: a broadcast needs every member of its group, so before each sync the members'
    processes are checked (one ``pid()`` call each): an actor that died for good is left out and
    reported in :attr:`gone`, and when any member is gone or was restarted (a new process, outside
    the group) the group is re-formed first. An actor that dies during the broadcast itself fails
    the sync after the channel's timeout."""

    def __init__(self, learners: Sequence, rollouts: Sequence, transport: str, backend: str = "gloo") -> None:
        self.learners, self.rollouts = list(learners), list(rollouts)
        self.transport, self.backend = transport, backend
        self.manifest: list = []  # the last sync's buckets (rollout calls name them, to reload after a restart)
        self.gone: list[int] = []  # positions (in the rollouts of the last sync) of actors that had died
        self.pids: list = []  # collective: the processes of the group's members, as formed
        if transport == "collective":
            self._join()

    def rejoin(self, rollouts: Sequence) -> None:
        """``collective``: form new sync channels between the learner ranks and ``rollouts`` (the
        live actors, a restarted one included; an actor that is gone is left out, so no broadcast
        waits for it). Every member replaces its old channel."""
        self.rollouts = list(rollouts)
        if self.transport == "collective":
            self._join()

    def _join(self) -> None:
        size = 1 + len(self.rollouts)
        calls = []
        for r, learner in enumerate(self.learners):
            addr, port = ray.get(learner.sync_endpoint.remote())
            calls.append(learner.join_weight_sync.remote(addr, port, size, self.backend))
            calls += [a.join_weight_sync.remote(r, addr, port, i + 1, size, self.backend) for i, a in enumerate(self.rollouts)]
        ray.get(calls)
        self.pids = ray.get([a.pid.remote() for a in self.rollouts])

    def _members(self, rollouts: list) -> list[int]:
        """``collective``: positions of ``rollouts`` whose process is gone for good; re-forms the
        group over the others when it is not exactly their current processes."""
        pids = get_each([a.pid.remote() for a in rollouts])
        gone = [i for i, p in enumerate(pids) if isinstance(p, BaseException) and actor_died(p)]
        for p in pids:
            if isinstance(p, BaseException) and not actor_died(p):
                raise p
        alive = [a for i, a in enumerate(rollouts) if i not in gone]
        if alive != self.rollouts or [p for i, p in enumerate(pids) if i not in gone] != self.pids:
            self.rejoin(alive)
        return gone

    @staticmethod
    def lost(error: BaseException) -> bool:
        """Did a rollout call fail because its actor lost the weights (restarted outside the
        ``collective`` group)? The fix is another :meth:`sync` with ``bump=False``: it re-forms
        the group, the restarted process in it, and sends the current version again."""
        return isinstance(error, WeightsLost)

    def sync(self, bump: bool = True, rollouts: Optional[Sequence] = None) -> tuple[int, dict]:
        """Publish, deliver (to ``rollouts``, default all) and verify; returns ``(version,
        {"sync/bytes", "sync/seconds", "sync/gbps"})``; :attr:`manifest` is the sync's buckets."""
        t0 = time.perf_counter()
        rollouts = self.rollouts if rollouts is None else list(rollouts)
        gone_before = self._members(rollouts) if self.transport == "collective" else []
        positions = [i for i in range(len(rollouts)) if i not in gone_before]
        rollouts = [rollouts[i] for i in positions]
        results = ray.get([a.publish.remote(bump) for a in self.learners])
        versions = {v for v, _ in results}
        if len(versions) != 1:
            raise RuntimeError(f"learner ranks disagree on the weight version: {sorted(versions)}")
        version = results[0][0]
        manifest = [b for _, refs in results for b in refs]
        sends = [a.send_weights.remote(version) for a in self.learners] if self.transport == "collective" else []
        results = get_each([a.set_weights.remote(version, manifest) for a in rollouts])
        self.manifest = manifest
        ray.get(sends)
        # a rollout actor that died (and was not restarted) is reported, not fatal: the driver
        # takes it out of the rotation; any other failure (e.g. a checksum) stops the sync
        self.gone = sorted(gone_before + [positions[i] for i, r in enumerate(results)
                                          if isinstance(r, BaseException) and actor_died(r)])
        loaded = [r for r in results if not (isinstance(r, BaseException) and actor_died(r))]
        for r in loaded:
            if isinstance(r, BaseException):
                raise r
        if loaded and set(loaded) != {version}:
            raise RuntimeError(f"rollout actors hold versions {loaded}, expected {version}")
        seconds = time.perf_counter() - t0
        nbytes = sum(b.spec.nbytes for b in manifest)
        return version, {"sync/bytes": nbytes, "sync/seconds": seconds, "sync/gbps": nbytes / max(seconds, 1e-9) / 1e9}
