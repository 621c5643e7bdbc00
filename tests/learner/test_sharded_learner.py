"""learner.strategy on CPU/gloo without Ray: 2 fsdp ranks (FSDP2) and 2 replicate ranks (bucketed
all-reduce) end where 1 replicate rank ends after 3 iterations, for the tiny policy and tiny FLUX.

Tolerance: the ranks average gradients by a reduce-scatter (fsdp) or bucketed all-reduce
(replicate) instead of one process summing them, so float sums run in another order; after 3
iterations x 2 AdamW updates the weights agree within atol 2e-5, rtol 1e-4 (observed ~1e-6)."""

import pytest
import torch

from mixgrpo_ray.algo.sharding import full_tensors, shard_module
from mixgrpo_ray.algo.update import GRPOTrainer, update_assignment
from mixgrpo_ray.models.build import build_policy

from learner_runs import OPTIM, batches, model_config
from processes import spawn_ranks

def train(rank, world_size, strategy, flux_dir, data, port=0, reduce_bucket_mb=64.0):
    """Three iterations on one rank; returns (full trainable weights, each iteration's statistics)."""
    import torch.distributed as dist

    torch.manual_seed(0)
    if world_size > 1 or strategy == "fsdp":
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    policy = build_policy(model_config(flux_dir), trainable=True)
    if strategy == "fsdp":
        assert shard_module(policy.trainable_module(), torch.device("cpu"), world_size) >= 2
    trainer = GRPOTrainer(policy, OPTIM, 1e-4, rank=rank, world_size=world_size, sharded=strategy == "fsdp",
                          reduce_bucket_mb=reduce_bucket_mb)
    norms = []
    for it, (traj, adv) in enumerate(data):
        stats = trainer.train_iteration(traj, adv, update_assignment(8, 4, world_size, seed=it))
        norms.append(dict(stats))
    state = full_tensors(policy.trainable_tensors())
    if dist.is_initialized():
        dist.barrier()  # no rank tears its group down while another still talks to it
        dist.destroy_process_group()
    return state, norms


def _rank(rank, port, world_size, strategy, flux_dir, data, bucket, path):
    state, norms = train(rank, world_size, strategy, flux_dir, data, port, bucket)
    if rank == 0:
        torch.save({"state": state, "norms": norms}, path)


def spawn_train(tmp_path, world_size, strategy, flux_dir, data, bucket=64.0):
    path = tmp_path / f"{strategy}{world_size}.pt"
    spawn_ranks(_rank, world_size, world_size, strategy, flux_dir, data, bucket, str(path))
    return torch.load(path)


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    from tiny_flux import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("flux"))


@pytest.mark.parametrize("model", ["tiny", "flux"])
def test_two_fsdp_ranks_equal_one_replicate_rank(model, request, tmp_path):
    fdir = request.getfixturevalue("flux_dir") if model == "flux" else None
    data = batches(fdir)
    ref_state, ref_stats = train(0, 1, "replicate", fdir, data)
    ref_norms = [st["grad_norm"] for st in ref_stats]
    init = full_tensors(build_policy(model_config(fdir)).trainable_tensors())
    assert any(not torch.equal(ref_state[k], init[k]) for k in init)  # training moved the weights
    assert all(n > OPTIM.max_grad_norm for n in ref_norms)  # clipping was active
    runs = [spawn_train(tmp_path, 2, "fsdp", fdir, data)]
    if model == "tiny":  # replicate over 2 ranks, gradients all-reduced in many small buckets
        runs.append(spawn_train(tmp_path, 2, "replicate", fdir, data, bucket=0.01))
    for run in runs:
        assert [st["grad_norm"] for st in run["norms"]] == pytest.approx(ref_norms, rel=1e-4)
        # every statistic is the whole update's (rank 0 reports both ranks' shares), as one rank's
        for got, want in zip(run["norms"], ref_stats):
            assert set(got) == set(want)
            for key in ("loss", "ratio_mean", "ratio_min", "ratio_max", "approx_kl", "first_ratio_mean",
                        "first_ratio_min", "first_ratio_max", "clip_fraction", "updates", "nonfinite_samples"):
                assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-7), key
        assert set(run["state"]) == set(ref_state)
        for k, v in ref_state.items():
            torch.testing.assert_close(run["state"][k], v, atol=2e-5, rtol=1e-4)
