"""``train --dry-run`` aimed at a cluster that is not here: the actors placed on paper as Ray
places them (whole GPUs on one node, fractions sharing a GPU, learners first and packed, the memory
plan per GPU), one line per role, and a last line saying whether the target can start the run:
exit 0 when it fits, 2 when it does not, without Ray and without writing anything."""

from __future__ import annotations

import pytest

from mixgrpo_ray.cli import train_cli
from mixgrpo_ray.config import resolve
from mixgrpo_ray.plan.gpu_packing import Actor, Target, gpu_loads, gpu_text, pack
from mixgrpo_ray.train.dry_run import planned_rows

#: the paper's run with every role on GPUs of its own (12 in all)
FLUX = ["--config", "flux", "--config", "flux_disaggregated", "--config", "mixgrpo"]
#: the flux preset as it ships: 8 hybrid workers, the rewards beside them
FLUX_COLOCATED = ["--config", "flux", "--config", "mixgrpo"]


# ------------------------------------------------------------------------------ packing
def test_whole_gpus_take_free_gpus_of_one_node():
    actors = pack([Actor("learner", 1) for _ in range(6)] + [Actor("big", 2), Actor("big", 2)], Target((4, 4)))
    assert [a.gpus for a in actors[:6]] == [[(0, 0)], [(0, 1)], [(0, 2)], [(0, 3)], [(1, 0)], [(1, 1)]]
    assert actors[6].gpus == [(1, 2), (1, 3)]  # two GPUs on one node
    assert actors[7].gpus == [] and "needs 2 free GPU(s) on one node" in actors[7].error


def test_a_whole_gpu_actor_never_spans_nodes():
    a, = pack([Actor("x", 2)], Target((1, 1)))
    assert a.error and "the most any node has left is 1" in a.error


def test_fractions_share_a_gpu_up_to_one():
    actors = pack([Actor("r", 0.33) for _ in range(4)], Target((2,)))
    assert [a.gpus for a in actors] == [[(0, 0)], [(0, 0)], [(0, 0)], [(0, 1)]]
    full = pack([Actor("l", 1), Actor("r", 0.5)], Target((1,)))
    assert full[1].error and "no GPU has 0.5 of a GPU" in full[1].error


def test_memory_per_gpu_is_the_sum_of_its_actors_plans():
    # 90% of 80 GB is 72 GB: two 30 GB halves share a GPU, a third 30 GB half goes to the next
    actors = pack([Actor("r", 0.5, 30.0), Actor("r", 0.5, 30.0), Actor("s", 0.25, 30.0)], Target((2,), 80.0))
    assert [a.gpus for a in actors] == [[(0, 0)], [(0, 0)], [(0, 1)]]
    assert gpu_loads(actors, Target((2,), 80.0)) == [[60.0, 30.0]]
    too_big, = pack([Actor("l", 1, 73.0)], Target((8,), 80.0))
    assert too_big.error == "~73.0 GB does not fit a 80 GB GPU (at most 90% of it)"
    unknown, = pack([Actor("l", 1, 500.0)], Target((1,), None))  # the GPU's memory unknown: not judged
    assert unknown.gpus == [(0, 0)]


def test_cpu_actors_are_not_placed_and_odd_gpu_counts_refused():
    cpu, odd = pack([Actor("c", 0), Actor("o", 1.5)], Target((2,)))
    assert cpu.gpus == [] and cpu.error is None
    assert "1.5 GPUs" in odd.error


def test_gpu_text_compresses_runs():
    assert gpu_text([(0, 0), (0, 1), (0, 2), (0, 5), (1, 0)]) == "node 0 GPU 0-2,5, node 1 GPU 0"
    assert Target.uniform(2, 8, 80).describe() == "2 nodes x 8 GPUs of 80 GB"
    assert Target((8, 4)).describe() == "2 nodes with 8+4 GPUs"


# ------------------------------------------------------------------------------ the run's roles
def test_flux_on_one_node_places_learners_first_and_reports_the_rest():
    cfg = resolve(["flux", "flux_disaggregated", "mixgrpo"], [])
    rows, actors = planned_rows(cfg, Target.uniform(1, 8, 80.0))
    by_role = {r["role"]: r for r in rows}
    assert list(by_role) == ["rollout", "reward/hps", "reward/pickscore", "reward/imagereward", "learner"]
    assert by_role["learner"]["placement"] == "node 0 GPU 0-7" and "error" not in by_role["learner"]
    assert by_role["rollout"]["placement"] == "none" and "1 of 1 not placed" in by_role["rollout"]["error"]
    assert by_role["learner"]["dtype"] == "bf16 autocast, fp32 master weights"
    assert sum(len(a.gpus) for a in actors) == 8


def test_colocated_flux_fits_one_8_gpu_node_with_the_rewards_beside_the_workers():
    cfg = resolve(["flux", "mixgrpo"], [])
    assert cfg.run.placement == "colocated"
    rows, actors = planned_rows(cfg, Target.uniform(1, 8, 80.0))
    by_role = {r["role"]: r for r in rows}
    assert list(by_role) == ["reward/hps", "reward/pickscore", "reward/imagereward", "hybrid"]
    assert by_role["hybrid"]["placement"] == "node 0 GPU 0-7" and by_role["hybrid"]["count"] == 8
    assert not any(r.get("error") for r in rows)
    reward_gpus = {a.gpus[0] for a in actors if a.role.startswith("reward/")}
    assert len(reward_gpus) == 3 and reward_gpus <= {(0, g) for g in range(8)}  # 0.1 beside a worker's 0.9
    loads = [m for node in gpu_loads(actors, Target.uniform(1, 8, 80.0)) for m in node]
    assert max(loads) <= 0.9 * 80 and len({g for a in actors for g in a.gpus}) == 8


# ------------------------------------------------------------------------------ the command
@pytest.fixture
def no_ray(monkeypatch, tmp_path):
    """A dry run with a target must not start Ray, resolve prompts or write a run directory."""
    def refuse(*_a, **_k):
        raise AssertionError("a dry run with a target started Ray")

    monkeypatch.setattr(train_cli, "connect_ray", refuse)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_flux_dry_run_on_one_8_gpu_node_says_it_does_not_fit(no_ray, capsys):
    assert train_cli.main(["--dry-run", *FLUX, "--gpus-per-node", "8"]) == 2
    cap = capsys.readouterr()
    lines = cap.out.strip().splitlines()
    assert [ln.split()[0] for ln in lines[:-1]] == ["rollout", "reward/hps", "reward/pickscore", "reward/imagereward",
                                                   "learner"]
    assert all("memory ~" in ln and "device cuda" in ln for ln in lines[:-1])
    assert lines[-1] == ("The target (1 node x 8 GPUs of 80 GB): the run does NOT fit: it asks for 12 GPUs in total "
                         "and the target has 8; 2 such nodes would hold it (--nodes), or use fewer GPU actors")
    assert cap.err.strip() == f"mixgrpo-ray train: error: {lines[-1]}"
    assert list(no_ray.iterdir()) == []


def test_colocated_flux_dry_run_on_one_8_gpu_node_fits(no_ray, capsys):
    assert train_cli.main(["--dry-run", *FLUX_COLOCATED, "--gpus-per-node", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines[:-1]] == ["reward/hps", "reward/pickscore", "reward/imagereward", "hybrid"]
    assert "sampling on the copy" in lines[-2]
    assert lines[-1].startswith("The target (1 node x 8 GPUs of 80 GB): the run fits: 8 of 8 GPUs used")
    assert list(no_ray.iterdir()) == []


def test_flux_dry_run_on_two_nodes_fits(no_ray, capsys):
    assert train_cli.main(["--dry-run", *FLUX, "--gpus-per-node", "8", "--nodes", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("The target (2 nodes x 8 GPUs of 80 GB): the run fits: 12 of 16 GPUs used")
    assert "ERROR" not in "\n".join(out)


def test_the_memory_plan_decides_on_the_target(no_ray, capsys):
    # full fine-tuning replicated on every rank does not fit an 80 GB GPU; the plan says so per GPU
    args = ["--dry-run", *FLUX, "--nodes", "2", "learner.strategy=replicate", "learner.gpu_memory_gb=0"]
    assert train_cli.main(args) == 2
    out = capsys.readouterr().out
    assert "learner" in out and "does not fit a 80 GB GPU (at most 90% of it)" in out
    assert "a role does not fit (see ERROR above)" in out.splitlines()[-1]


def test_fractional_rewards_on_one_node_fit(no_ray, capsys):
    # the paper's 8 GPUs: 6 learners, one rollout GPU, the three rewards sharing one GPU
    share = [f"rewards.{r}.num_gpus=0.33" for r in ("hps", "pickscore", "imagereward")]
    args = ["--dry-run", *FLUX, "--gpus-per-node", "8", "learner.num_workers=6", *share]
    assert train_cli.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("The target (1 node x 8 GPUs of 80 GB): the run fits: 8 of 8 GPUs used")
    rewards = [ln for ln in out if ln.startswith("reward/")]
    assert len(rewards) == 3 and all("node 0 GPU 7" in ln for ln in rewards)


@pytest.mark.parametrize("argv,message", [
    (["--gpus-per-node", "8"], "--gpus-per-node: the target flags describe the cluster a dry run is aimed at; add --dry-run"),
    (["--dry-run", "--nodes", "0"], "--gpus-per-node and --nodes must be >= 1 and --gpu-memory-gb > 0"),
    (["--dry-run", "--gpu-memory-gb", "-1"], "--gpus-per-node and --nodes must be >= 1 and --gpu-memory-gb > 0"),
])
def test_bad_target_flags_are_one_line(no_ray, capsys, argv, message):
    assert train_cli.main([*argv, *FLUX]) == 2
    cap = capsys.readouterr()
    assert cap.err.strip() == f"mixgrpo-ray train: error: {message}" and cap.out == ""
    assert list(no_ray.iterdir()) == []


def test_dry_run_on_this_machine_without_gpus_shows_the_plan_and_says_no(monkeypatch, tmp_path, capsys):
    """No target flags and no cluster: the local Ray (no GPUs here) is the target; the roles are
    still listed with their devices and memory, and the last line says why it cannot start."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert train_cli.main(["--dry-run", *FLUX, "ray.dashboard=false"]) == 2
    cap = capsys.readouterr()
    lines = cap.out.strip().splitlines()
    assert [ln.split()[0] for ln in lines[-6:-1]] == ["rollout", "reward/hps", "reward/pickscore", "reward/imagereward",
                                                     "learner"]
    assert all("memory ~" in ln and "ERROR: " in ln for ln in lines[-6:-1])
    assert lines[-1].startswith("This Ray cluster (1 node x 0 GPUs): the run does NOT fit: it asks for 12 GPUs "
                                "in total and this Ray cluster has 0")
    assert cap.err.strip().splitlines()[-1] == f"mixgrpo-ray train: error: {lines[-1]}"
    assert list(tmp_path.iterdir()) == []
