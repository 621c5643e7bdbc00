"""Reward traffic: declared reward inputs, the images a rollout actor sends per input, and reward
replicas that merge concurrent requests into batches of up to ``batch_size`` images."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from mixgrpo_ray.algo.rollout import images_for
from mixgrpo_ray.models.reward_input import RewardInput, declared_input



def tagged(ids, side=4) -> torch.Tensor:
    """uint8 images whose first pixel holds their id (what custom_rewards.Tagged scores)."""
    images = torch.zeros(len(ids), 3, side, side, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(ids, dtype=torch.uint8)
    return images


# ------------------------------------------------------------------ declared inputs


@pytest.mark.parametrize("resize,dtype", [("shortest_edge", torch.uint8), ("shortest_edge_pil", torch.uint8),
                                          ("longest_edge_float", torch.float32)])
@pytest.mark.parametrize("height,width", [(64, 64), (64, 40), (40, 64)])
def test_reward_input_geometry_and_applying_twice_is_once(resize, dtype, height, width):
    images = torch.randint(0, 256, (2, 3, height, width), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    spec = RewardInput(16, resize)
    out = spec.apply(images)
    side = max if resize == "longest_edge_float" else min
    assert out.dtype == dtype and side(out.shape[-2:]) == 16 and tuple(out.shape[-2:]) == spec.shape(height, width)
    assert torch.equal(spec.apply(out), out)
    floats = spec.apply(images.float() / 255.0)  # float images in [0, 1] resize to the same pixels
    assert torch.allclose(floats.float(), out.float(), atol=1e-5)


def test_declarations_are_checked():
    with pytest.raises(ValueError, match="resize must be one of"):
        RewardInput(224, "nearest")
    with pytest.raises(ValueError, match=">= 1"):
        RewardInput(0)

    class Bad:
        input_size = "224"
    with pytest.raises(ValueError, match="input_size must be an int or None"):
        declared_input(Bad())
    assert declared_input(object()) is None  # declaring nothing: full resolution


def test_rollout_sends_one_object_per_needed_input():
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    clip, hps = RewardInput(16), RewardInput(16, "longest_edge_float")
    full, small, small_float = images_for(images, [None, clip, hps])
    assert full is images and small.shape == (4, 3, 16, 16) and small_float.dtype == torch.float32
    (only,) = images_for(images, [clip])  # no reward needs full resolution: it is not sent
    assert torch.equal(only, small)


def test_pools_forward_to_each_reward_the_images_it_needs():
    from mixgrpo_ray.rewards.server import pick_images

    sent = {None: "full", RewardInput(16): "clip16"}
    assert pick_images(sent, RewardInput(16)) == "clip16"
    assert pick_images(sent, None) == "full"
    assert pick_images(sent, RewardInput(32)) == "full"  # not sent at that size: full resolution serves
    assert pick_images("one-ref", RewardInput(16)) == "one-ref"
    with pytest.raises(KeyError, match="no images for reward input"):
        pick_images({RewardInput(16): "clip16"}, None)


# ------------------------------------------------------------------ merging requests, in process


@pytest.fixture()
def server(monkeypatch):
    from mixgrpo_ray.rewards.server import RewardServer


    def make(batch_size, **options):
        return RewardServer("tagged", "python", {"target": "custom_rewards:Tagged", **options}, batch_size, 1, 0)
    return make


def concurrently(fns):
    """Run each ``fn`` on its own thread at once; their results (or exceptions) in order."""
    out = [None] * len(fns)
    barrier = threading.Barrier(len(fns))

    def call(i):
        barrier.wait()
        try:
            out[i] = fns[i]()
        except Exception as exc:  # noqa: BLE001 - returned to the test
            out[i] = exc
    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_concurrent_requests_are_merged_into_batches_and_each_gets_its_own_scores(server):
    srv = server(batch_size=8, delay_s=0.2)
    sizes = [3, 2, 5, 1, 4, 3, 2]  # 20 images
    ids = [list(range(1 + 10 * i, 1 + 10 * i + n)) for i, n in enumerate(sizes)]
    out = concurrently([lambda ids=ids_: srv.score(tagged(ids), ["p"] * len(ids)) for ids_ in ids])
    for ids_, scores in zip(ids, out):
        assert scores.tolist() == [float(i) for i in ids_]
    stats = srv.stats()
    assert stats["requests"] == 7 and stats["images"] == 20
    # whatever arrives first is scored at once; the rest merge: ceil(20 / 8) = 3 calls, +1 at most
    assert stats["model_calls"] <= math.ceil(20 / 8) + 1, stats


def test_a_request_larger_than_the_batch_is_split_and_reassembled(server):
    srv = server(batch_size=4)
    ids = list(range(1, 12))
    assert srv.score(tagged(ids), ["p"] * 11).tolist() == [float(i) for i in ids]
    assert srv.stats()["model_calls"] == 3


def test_a_failing_request_fails_only_its_caller(server):
    srv = server(batch_size=16, delay_s=0.2, fail_word="boom")
    out = concurrently([
        lambda: srv.score(tagged([1, 2]), ["p", "p"]),
        lambda: srv.score(tagged([3]), ["boom"]),
        lambda: srv.score(tagged([4, 5]), ["p", "p"]),
        lambda: srv.score(tagged([6]), ["p", "p"]),  # two prompts for one image: refused up front
    ])
    assert out[0].tolist() == [1.0, 2.0] and out[2].tolist() == [4.0, 5.0]
    assert isinstance(out[1], ValueError) and "boom" in str(out[1])
    assert isinstance(out[3], ValueError) and "1 images but 2 prompts" in str(out[3])


def test_requests_of_different_shapes_are_not_merged(server):
    srv = server(batch_size=16, delay_s=0.1)
    out = concurrently([lambda: srv.score(tagged([1, 2], side=4), ["p"] * 2),
                        lambda: srv.score(tagged([3], side=8), ["p"]),
                        lambda: srv.score(tagged([4], side=4).float() / 255.0, ["p"])])
    assert [o.tolist() for o in out] == [[1.0, 2.0], [3.0], [4.0]]


# ------------------------------------------------------------------ one replica under Ray


LOCAL_RAY = {"num_cpus": 2, "namespace": "mixgrpo-traffic"}  # tests/conftest.py


def test_a_replica_merges_concurrent_requests_up_to_its_batch_size(local_ray):
    from mixgrpo_ray.config import RewardConfig
    from mixgrpo_ray.rewards.server import RewardPools

    ray = local_ray
    cfg = RewardConfig(kind="python", target="custom_rewards:Tagged", batch_size=16, num_cpus=0.5,
                       options={"delay_s": 0.3})
    pools = RewardPools({"tagged": cfg})
    try:
        pool = pools["tagged"]
        assert pool.input is None and pools.inputs() == [None] and pool.info["batch_size"] == 16
        n, per = 12, 4  # 12 rollout calls of 4 images: 48 images, 3 batches of 16
        ids = [list(range(1 + 4 * i, 1 + 4 * i + per)) for i in range(n)]
        refs = [ray.put(tagged(x)) for x in ids]
        requests = [pools.submit(r, ["p"] * per) for r in refs]
        scores = pools.gather(requests, lambda *a: pytest.fail(f"fault {a}"))["tagged"]
        assert scores.tolist() == [float(i) for x in ids for i in x]  # each caller got its own scores
        stats = ray.get(pool.actors[0].stats.remote())
        # the first request is scored on its own before the others arrive, then batches of 16
        assert stats["requests"] == n and stats["model_calls"] <= math.ceil(n * per / 16) + 1, stats
    finally:
        pools.shutdown()


# ------------------------------------------------------------------ bytes shipped per iteration


def test_reward_traffic_before_and_after_for_a_flux_sized_image(capsys):
    from mixgrpo_ray.cli.bench_cli import traffic_bench
    from mixgrpo_ray.rewards.clip.clip_preprocess import ImagePreprocess
    from mixgrpo_ray.bench.phases import FLUX_REWARD_INPUTS, reward_traffic

    # the table is what the real checkpoints' preprocessing declares
    assert ImagePreprocess(size=224, mode="pad", pipeline="tensor").input() == FLUX_REWARD_INPUTS["hps"]
    laion = {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}}
    assert ImagePreprocess.from_processor_dict(laion, 224).input() == FLUX_REWARD_INPUTS["pickscore"]
    # HPS alone at 1024x1024: uint8 3x1024x1024 -> float32 3x224x224
    hps = reward_traffic({"hps": FLUX_REWARD_INPUTS["hps"]}, 1024, 1024, images=96)
    assert hps["before_bytes"] == 96 * 3 * 1024 * 1024 and hps["after_bytes"] == 96 * 3 * 224 * 224 * 4
    # a CLIP-family reward that takes 8-bit pixels: uint8 3x224x224
    pick = reward_traffic({"pickscore": FLUX_REWARD_INPUTS["pickscore"]}, 1024, 1024, images=96)
    assert pick["after_bytes"] == 96 * 3 * 224 * 224
    # the flux preset's three rewards, and a full-resolution one added (sent as sampled)
    three = reward_traffic(FLUX_REWARD_INPUTS, 1024, 1024, images=96)
    four = reward_traffic({**FLUX_REWARD_INPUTS, "unifiedreward": None}, 1024, 1024, images=96)
    assert four["after_bytes"] == three["after_bytes"] + 96 * 3 * 1024 * 1024
    print(f"\nbytes to reward servers per iteration, 1024x1024: HPS {hps['ratio']:.1f}x less, "
          f"PickScore {pick['ratio']:.1f}x, HPS+PickScore+ImageReward {three['ratio']:.1f}x")
    assert hps["ratio"] == pytest.approx(5.22, abs=0.01) and pick["ratio"] == pytest.approx(20.9, abs=0.1)
    assert three["ratio"] == pytest.approx(10.45, abs=0.01)
    traffic_bench(1024)  # `mixgrpo-ray bench phases` prints it with the flux preset's batch
    assert "10.4x less" in capsys.readouterr().out


def test_rollout_actors_send_only_the_inputs_the_pools_need(local_ray):
    from mixgrpo_ray.actors.rollout_workers import RolloutWorkers
    from mixgrpo_ray.config import resolve

    ray = local_ray
    cfg = resolve(None, ["rollout.num_cpus=0.5", "sampling.num_steps=4", "window.size=2", "window.initial_start=0"])
    workers = RolloutWorkers(cfg.model, cfg.sampling, cfg.grpo, cfg.rollout, 0)
    try:
        small = RewardInput(16)
        for inputs in ([small], [None, small, RewardInput(16, "longest_edge_float")]):
            workers.inputs = inputs
            prompts, images, _traj, meta = workers.submit(0, ["a red circle on white"], [0, 1], iteration=1)
            assert list(images) == inputs and ray.get(meta).num_images == len(prompts)
            got = {spec: ray.get(ref) for spec, ref in images.items()}
            full = got.get(None)
            assert got[small].shape[-2:] == (16, 16) and got[small].dtype == torch.uint8
            if full is not None:  # the same images, resized on the rollout actor
                assert full.shape[-1] == 32 and torch.equal(got[small], small.apply(full))
            (_ps, eval_images), = workers.sample_eval(["a red circle on white"], [0])
            assert list(eval_images) == inputs and ray.get(eval_images[small]).shape[-2:] == (16, 16)
    finally:
        workers.shutdown()
