"""Weight-sync throughput per transport, and the host memory a publish takes.

Run by ``mixgrpo-ray bench phases`` (``--sync-gb``, 0 skips it).

One synthetic learner actor holds a state of ``size_gb`` (fp32 tensors of FLUX-block-like
shapes; or, with ``model``, the transformer of a FluxPipeline folder such as the real-width slice
of ``mixgrpo_ray.models.flux.flux_slice``, published in bf16 as a GPU run publishes) and syncs it
through :class:`~mixgrpo_ray.cluster.weight_sync.WeightSync` to two receiving actors, once per
transport (after one warm-up sync), on the running Ray. Reported per transport: bytes, seconds,
GB/s (the same ``sync/*`` numbers the driver logs) and the learner process's peak resident memory
during the publish (Linux ``VmHWM`` reset through ``/proc/self/clear_refs``) minus its resident
memory before it. For ``object_store`` that peak includes the shard's copy in
the shared-memory object store (the pages the learner wrote), so the target is the shard plus at
most 1.5 buckets; for ``collective`` nothing is copied beyond the bucket in flight.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import ray
import torch

from mixgrpo_ray.common.process_memory import resident_bytes
from mixgrpo_ray.cluster.weight_sync import SenderEndpoints, WeightReceiver, WeightSender, WeightSync

ROW = 3072  # FLUX hidden width: tensors are (rows, 3072) fp32


def synthetic_state(size_bytes: int, tensors: int = 64) -> dict[str, torch.Tensor]:
    rows = max(1, size_bytes // (4 * ROW * tensors))
    return {f"blocks.{i}.weight": torch.rand(rows, ROW, generator=torch.Generator().manual_seed(i)) for i in range(tensors)}


class SyntheticLearner(SenderEndpoints):
    """A learner rank's weight-sync surface over a synthetic state (see the module docstring)."""

    def __init__(self, size_bytes: int, transport: str, bucket_mb: float, model: Optional[str] = None) -> None:
        torch.set_num_threads(1)
        if model:
            from mixgrpo_ray.models.flux.flux_folder import load_transformer

            self.state = {k: v.detach() for k, v in load_transformer(model, torch.float32).state_dict().items()}
        else:
            self.state = synthetic_state(size_bytes)
        self.dtype = torch.bfloat16 if model else torch.float32
        self.sender = WeightSender(transport, self.dtype, bucket_mb, 0, 1)
        self.version, self.base, self.peak = 0, 0, 0

    def shapes(self) -> dict:
        return {k: tuple(v.shape) for k, v in self.state.items()}

    def _start(self) -> None:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident memory
        self.base = resident_bytes("VmRSS")

    def _stop(self) -> None:
        self.peak = max(self.peak, resident_bytes("VmHWM") - self.base)

    def publish(self, bump: bool = True) -> tuple[int, list]:
        self.version += int(bump)
        self._start()
        manifest = self.sender.publish(self.state)
        self._stop()
        return self.version, manifest

    def send_weights(self, version: int) -> int:
        self._start()
        sent = super().send_weights(version)
        self._stop()
        return sent

    def peak_bytes(self) -> int:
        return self.peak

    def checksum(self) -> float:
        """What a receiver's checksum is after a sync: the state rounded to the publish dtype."""
        return float(sum(t.to(self.dtype).double().sum() for t in self.state.values()))

    def reset_peak(self) -> None:
        self.peak = 0


class SyntheticRollout:
    """A rollout actor's weight-sync surface: zeros of the learner's shapes, loaded in place."""

    def __init__(self, shapes: dict) -> None:
        torch.set_num_threads(1)
        self.targets = {k: torch.zeros(s) for k, s in shapes.items()}
        self.receiver = WeightReceiver()

    def pid(self) -> int:
        return os.getpid()

    def join_weight_sync(self, learner_rank: int, addr: str, port: int, rank: int, size: int, backend: str) -> None:
        self.receiver.join(learner_rank, addr, port, rank, size, backend)

    def set_weights(self, version: int, manifest: list) -> int:
        self.receiver.load(version, manifest, self.targets)
        return version

    def checksum(self) -> float:
        return float(sum(t.double().sum() for t in self.targets.values()))


def run_sync_bench(size_gb: float = 1.0, bucket_mb: float = 256.0, receivers: int = 2,
                   model: Optional[str] = None) -> dict[str, dict]:
    """Sync a synthetic state of ``size_gb`` (or ``model``'s transformer) with each transport;
    needs a running Ray."""
    size = int(size_gb * 1e9)
    results = {}
    for transport in ("object_store", "collective"):
        learner = ray.remote(SyntheticLearner).options(num_cpus=0).remote(size, transport, bucket_mb, model)
        shapes = ray.get(learner.shapes.remote())
        rollouts = [ray.remote(SyntheticRollout).options(num_cpus=0).remote(shapes) for _ in range(receivers)]
        try:
            t0 = time.perf_counter()
            sync = WeightSync([learner], rollouts, transport, "gloo")
            setup = time.perf_counter() - t0
            sync.sync()  # warm-up: first-use imports and allocations are not the publish's
            ray.get(learner.reset_peak.remote())
            _, stats = sync.sync()
            want = ray.get(learner.checksum.remote())
            sums = ray.get([r.checksum.remote() for r in rollouts])
            shard = stats["sync/bytes"]
            peak = ray.get(learner.peak_bytes.remote())
            beyond = peak - (shard if transport == "object_store" else 0)
            results[transport] = {**stats, "setup_s": setup, "peak_host_bytes": peak, "shard_bytes": shard,
                                  "bucket_bytes": bucket_mb * 2**20, "beyond_buckets": beyond / (bucket_mb * 2**20),
                                  "delivered": all(abs(s - want) <= 1e-9 * max(1.0, abs(want)) for s in sums)}
        finally:
            for a in [learner, *rollouts]:
                ray.kill(a)
    return results


def format_sync_table(results: dict[str, dict]) -> str:
    lines = [f"{'transport':<14} {'GB':>7} {'seconds':>8} {'GB/s':>7} {'publish peak host GB':>21} "
             f"{'beyond shard, buckets':>22}"]
    for name, r in results.items():
        extra = r["peak_host_bytes"] - (r["shard_bytes"] if name == "object_store" else 0)
        lines.append(f"{name:<14} {r['sync/bytes'] / 1e9:7.3f} {r['sync/seconds']:8.2f} {r['sync/gbps']:7.3f} "
                     f"{r['peak_host_bytes'] / 1e9:21.3f} {extra / r['bucket_bytes']:22.2f}")
    lines.append("peak host: the learner process's resident memory during a publish (object_store: its shard now "
                 "lives in the object store; target: at most 1.5 buckets beyond it)")
    return "\n".join(lines)
