"""Weight sync (learner.sync_transport): both transports deliver the learner's weights, in the
publish dtype, bit-identical to two rollout actors; a corrupted bucket is detected and the
version is not bumped."""

import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")

from mixgrpo_ray.actors.rollout_workers import RolloutWorkers  # noqa: E402
from mixgrpo_ray.algo import weight_buckets as ws  # noqa: E402
from mixgrpo_ray.cluster.weight_sync import BucketRef, WeightSync  # noqa: E402
from mixgrpo_ray.config import resolve  # noqa: E402
from mixgrpo_ray.learner.group import LearnerGroup  # noqa: E402
from mixgrpo_ray.models.tiny.model import TinyPolicy  # noqa: E402
from processes import spawn_ranks  # noqa: E402
from tiny_runs import tiny_batch  # noqa: E402


def _groups(transport, *extra):
    cfg = resolve(None, [*extra, "model.path=random", "learner.num_workers=2", "learner.num_cpus=0.5", "learner.strategy=fsdp",
                         "learner.publish_dtype=bf16", "learner.sync_bucket_mb=0.02", f"learner.sync_transport={transport}",
                         "rollout.num_workers=2", "rollout.num_cpus=0.5", "optim.samples_per_update=4", "optim.lr=1e-3",
                         "grpo.group_size=4", "data.prompts_per_iteration=2"])
    learners = LearnerGroup(cfg.model, cfg.optim, cfg.grpo.clip_range, cfg.learner, cfg.run.seed)
    rollouts = RolloutWorkers(cfg.model, cfg.sampling, cfg.grpo, cfg.rollout, cfg.run.seed)
    return learners, rollouts


@pytest.mark.parametrize("transport", ["object_store", "collective"])
def test_sync_delivers_bit_identical_weights_and_detects_corruption(local_ray, transport):
    learners, rollouts = _groups(transport)
    try:
        traj, adv = tiny_batch()
        learners.train([ray.put(traj)], adv, 0)  # the learners' weights now differ from the rollouts'
        sync = WeightSync(learners.actors, rollouts.actors, transport)
        version, stats = sync.sync()
        full = learners.get_all("trainable_state")[0]
        n = sum(v.numel() for v in full.values())
        assert version == 1 and stats["sync/bytes"] == 2 * n and stats["sync/gbps"] > 0
        init = TinyPolicy(seed=0).trainable_state_dict()
        for state in rollouts.get_all("trainable_state"):
            assert any(not torch.equal(state[k], init[k]) for k in init)
            for k, v in full.items():  # the rollout holds fp32 copies of the bf16 it was sent
                assert torch.equal(state[k], v.to(torch.bfloat16).float()), k
        assert rollouts.get_all("version") == [1, 1]
        if transport == "object_store":  # a bucket whose bytes changed after its checksum
            _, manifest = zip(*learners.get_all("publish", True))
            manifest = [b for m in manifest for b in m]
            raw = ray.get(manifest[3].ref).copy()
            raw[5] ^= 0xFF
            manifest[3] = BucketRef(manifest[3].spec, manifest[3].checksum, ray.put(raw))
            with pytest.raises(ray.exceptions.RayTaskError, match="is corrupt"):
                ray.get(rollouts.actors[0].set_weights.remote(2, manifest))
            assert ray.get(rollouts.actors[0].version.remote()) == 1
            with pytest.raises(ray.exceptions.RayTaskError, match="last weight sync failed"):
                ray.get(rollouts.actors[0].sample.remote(["a red circle"], [0], 0, 1, [])[0])
    finally:
        learners.shutdown()
        rollouts.shutdown()


@pytest.mark.parametrize("restarts", [1, 0])
def test_collective_sync_survives_a_killed_rollout_actor(local_ray, restarts):
    """A rollout process killed between syncs: restarted, it cannot fetch the version it lost by
    itself (WeightsLost) and the next sync re-forms the group with it; dead for good, it is left
    out and reported, and the broadcast to the others does not wait for it."""
    import signal

    learners, rollouts = _groups("collective", f"rollout.max_restarts={restarts}")
    try:
        traj, adv = tiny_batch()
        learners.train([ray.put(traj)], adv, 0)  # the learners' weights differ from the initial ones
        sync = WeightSync(learners.actors, rollouts.actors, "collective")
        assert sync.sync()[0] == 1
        os.kill(ray.get(rollouts.actors[1].pid.remote()), signal.SIGKILL)
        if restarts:
            with pytest.raises(ray.exceptions.RayTaskError, match="lost weights v1"):
                ray.get(rollouts.actors[1].sample.remote(["a red circle"], [0], 0, 1, sync.manifest)[2])
        version, _ = sync.sync()
        assert version == 2
        full = learners.get_all("trainable_state")[0]
        live = rollouts.actors if restarts else rollouts.actors[:1]
        assert sync.gone == ([] if restarts else [1])
        for state in ray.get([a.trainable_state.remote() for a in live]):
            for k, v in full.items():
                assert torch.equal(state[k], v.to(torch.bfloat16).float()), k
        assert ray.get([a.version.remote() for a in live]) == [2] * len(live)
        assert sync.sync()[0] == 3 and sync.gone == []  # the re-formed group keeps working
    finally:
        learners.shutdown()
        rollouts.shutdown()


def _channel_rank(rank, port, corrupt, path):
    state = TinyPolicy(seed=1).trainable_state_dict()
    if rank == 0:
        if corrupt:
            real = ws.checksum
            ws.checksum = lambda buf: real(buf) ^ 1  # every checksum this sender sends is wrong
        chan = ws.CollectiveChannel("127.0.0.1", port, 0, 3, "gloo", timeout_s=60)
        slices = ws.owned_slices(state, 0, 1)
        specs = ws.layout_buckets(slices, torch.bfloat16, 4096, 0)
        torch.save(specs, path + ".specs")
        chan.broadcast(torch.zeros(1))  # the receivers read the specs after this
        chan.send_buckets(specs, {k: (r, t) for k, _, r, t in slices}, version=5)
        return
    target = TinyPolicy(seed=0)
    chan = ws.CollectiveChannel("127.0.0.1", port, rank, 3, "gloo", timeout_s=60)
    chan.broadcast(torch.zeros(1))
    specs = torch.load(path + ".specs", weights_only=False)
    tensors = target.trainable_tensors()
    ws.check_coverage(specs, tensors)
    try:
        got = chan.receive_buckets(specs, tensors, version=5)
        err = ""
    except ws.WeightSyncError as exc:
        got, err = 0, str(exc)
    torch.save({"state": target.trainable_state_dict(), "got": got, "err": err, "n": len(specs)}, f"{path}.{rank}")


@pytest.mark.parametrize("corrupt", [True])  # delivery itself: the Ray test above
def test_collective_channel_without_ray(tmp_path, corrupt):
    path = str(tmp_path / "sync")
    spawn_ranks(_channel_rank, 3, corrupt, path)
    sent = TinyPolicy(seed=1).trainable_state_dict()
    old = TinyPolicy(seed=0).trainable_state_dict()
    for rank in (1, 2):
        out = torch.load(f"{path}.{rank}")
        assert out["n"] > 3
        if corrupt:  # detected at the first bucket: nothing loaded
            assert "is corrupt" in out["err"] and out["got"] == 0
            assert all(torch.equal(out["state"][k], old[k]) for k in old)
        else:
            assert out["err"] == "" and out["got"] == sum(v.numel() * 2 for v in sent.values())
            assert all(torch.equal(out["state"][k], v.to(torch.bfloat16).float()) for k, v in sent.items())


def test_non_float_tensors_travel_in_their_own_dtype(local_ray):
    from mixgrpo_ray.cluster.weight_sync import WeightReceiver, WeightSender

    state = {"w": torch.randn(40, 3), "steps": torch.tensor(2**40 + 3), "ids": torch.arange(9)}
    manifest = WeightSender("object_store", torch.bfloat16, 0.0002, 0, 1).publish(state)
    assert [b.spec.dtype for b in manifest][-2:] == ["bfloat16", "int64"] and len(manifest) > 2
    target = {"w": torch.zeros(40, 3), "steps": torch.tensor(0), "ids": torch.zeros(9, dtype=torch.int64)}
    WeightReceiver().load(3, manifest, target)
    assert int(target["steps"]) == 2**40 + 3 and torch.equal(target["ids"], state["ids"])
    assert torch.equal(target["w"], state["w"].bfloat16().float())
    with pytest.raises(ws.WeightSyncError, match="'steps' arrived with 0 of 1 rows"):
        WeightReceiver().load(3, [b for b in manifest if b.spec.dtype != "int64"], target)
