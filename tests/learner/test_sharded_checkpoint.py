"""Sharded checkpoints (torch.distributed.checkpoint) on CPU/gloo without Ray: a checkpoint saved
by 2 fsdp ranks resumes on 1 rank (replicate and fsdp) and on 2 ranks and reproduces the next
iteration's statistics and weights; a replicate single-file checkpoint resumes on 2 fsdp ranks;
``consolidate`` and ``read_weights`` give the whole weights in one process."""

import torch

from mixgrpo_ray.algo.sharding import full_tensors, shard_module
from mixgrpo_ray.algo.update import GRPOTrainer, update_assignment
from mixgrpo_ray.common import checkpoint as ckpt
from mixgrpo_ray.common.sharded_checkpoint import consolidate
from mixgrpo_ray.learner import dcp_checkpoint
from mixgrpo_ray.models.build import build_policy

from learner_runs import OPTIM, batches, model_config
from processes import spawn_ranks

TOL = dict(atol=2e-5, rtol=1e-4)  # as tests/learner/test_sharded_learner.py: float sums in another order


def run(rank, world_size, strategy, port, data, save=None, load=None, out=None):
    """Load ``load`` (if given) else train iteration 0; save to ``save``; train iteration 1;
    rank 0 writes (stats, whole weights) to ``out``."""
    import torch.distributed as dist

    torch.manual_seed(0)
    if world_size > 1 or strategy == "fsdp":
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    policy = build_policy(model_config(None), trainable=True)
    module = policy.trainable_module()
    if strategy == "fsdp":
        shard_module(module, torch.device("cpu"), world_size)
    trainer = GRPOTrainer(policy, OPTIM, 1e-4, rank=rank, world_size=world_size, sharded=strategy == "fsdp")
    if load:
        assert dcp_checkpoint.load(load, module, trainer.optimizer) == 1
    else:
        trainer.train_iteration(*data[0], update_assignment(8, 4, world_size, seed=0))
    if save and strategy == "fsdp":
        dcp_checkpoint.save(save, module, trainer.optimizer, 1)
    elif save and rank == 0:
        ckpt.save_weights(save, policy.trainable_state_dict(), 1)
        ckpt.save_trainer_state(save, trainer.optimizer.state_dict(), 1)
    stats = trainer.train_iteration(*data[1], update_assignment(8, 4, world_size, seed=1))
    state = full_tensors(policy.trainable_tensors())
    if rank == 0 and out:
        torch.save({"stats": stats, "state": state}, out)
    if dist.is_initialized():
        dist.barrier()  # no rank tears its group down while another still talks to it
        dist.destroy_process_group()
    return stats, state


def _rank(rank, port, world_size, strategy, data, save, load, out):
    run(rank, world_size, strategy, port, data, save, load, out)


def spawned(world_size, strategy, data, save=None, load=None, out=None):
    spawn_ranks(_rank, world_size, world_size, strategy, data, save, load, out)
    return torch.load(out)


def same(a, b, local=True):
    """Same statistics (``local``: also rank 0's own loss and ratios, comparable only on the same
    number of ranks; the clipped gradient norm is global) and the same weights."""
    for key in ("loss", "grad_norm", "ratio_mean", "ratio_max") if local else ("grad_norm",):
        assert abs(a["stats"][key] - b["stats"][key]) <= 1e-5 + 1e-4 * abs(b["stats"][key]), key
    for k, v in b["state"].items():
        torch.testing.assert_close(a["state"][k], v, **TOL)


def test_checkpoint_of_two_fsdp_ranks_resumes_on_one_and_two(tmp_path):
    data = batches(None)[:2]
    saved = tmp_path / "iter_000001"
    ref = spawned(2, "fsdp", data, save=str(saved), out=str(tmp_path / "ref.pt"))
    assert (saved / "sharded" / ".metadata").is_file() and not (saved / ckpt.WEIGHTS_FILE).exists()
    # 2 -> 2 (fsdp), 2 -> 1 (fsdp), 2 -> 1 (replicate, no process group at all)
    same(spawned(2, "fsdp", data, load=str(saved), out=str(tmp_path / "a.pt")), ref)
    same(spawned(1, "fsdp", data, load=str(saved), out=str(tmp_path / "b.pt")), ref, local=False)
    stats, state = run(0, 1, "replicate", 0, data, load=str(saved))
    same({"stats": stats, "state": state}, ref, local=False)
    # one process reads the whole weights: read_weights (eval, sample) and consolidate
    whole = ckpt.read_weights(saved)
    single = consolidate(saved, tmp_path / "weights.safetensors")
    assert ckpt.find_weights(saved).name == "sharded"
    again = ckpt.read_weights(single)
    assert set(whole) == set(ref["state"]) and all(torch.equal(whole[k], again[k]) for k in whole)
    policy = build_policy(model_config(None))
    policy.load_trainable_state_dict(whole)
    assert any(not torch.equal(whole[k], v) for k, v in build_policy(model_config(None)).trainable_state_dict().items())


def test_replicate_checkpoint_resumes_on_two_fsdp_ranks(tmp_path):
    data = batches(None)[:2]
    saved = tmp_path / "iter_000001"
    saved.mkdir()
    stats, state = run(0, 1, "replicate", 0, data, save=str(saved))
    same(spawned(2, "fsdp", data, load=str(saved), out=str(tmp_path / "c.pt")), {"stats": stats, "state": state},
         local=False)


def test_consolidate_command(tmp_path, capsys):
    from mixgrpo_ray.cli import main

    policy = build_policy(model_config(None), trainable=True)
    trainer = GRPOTrainer(policy, OPTIM, 1e-4)
    dcp_checkpoint.save(tmp_path / "iter_000007", policy.trainable_module(), trainer.optimizer, 7)  # one process
    assert main(["consolidate", str(tmp_path / "iter_000007")]) == 0
    out = tmp_path / "iter_000007" / ckpt.WEIGHTS_FILE
    assert str(out) in capsys.readouterr().out
    state = ckpt.read_weights(out)
    assert all(torch.equal(state[k], v) for k, v in policy.trainable_state_dict().items())
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["version"] == "7"
    assert main(["consolidate", str(tmp_path)]) == 2
    assert "not a sharded checkpoint" in capsys.readouterr().err
