"""run.placement=colocated on a local Ray (gloo): 2 hybrid workers give the same per-iteration
rewards, loss and gradient norm as 2 rollout actors + 2 learner ranks with the same seed, under
replicate and under fsdp, sampling on the training module and on a copy; evaluations and grids
too (3 held-out prompts in calls of one image: the workers' shares are uneven, so under fsdp the
worker with fewer images joins the other's forwards). A colocated run that loses a worker
heals and equals an uninterrupted one. The workers are ``mixgrpo/hybrid/<i>`` and keep their trajectories: only rows
the update plan gives the other rank travel."""

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")

from mixgrpo_ray.config import resolve  # noqa: E402
from mixgrpo_ray.train.run_dir import RunDir  # noqa: E402
from mixgrpo_ray.train.training_run import run  # noqa: E402

BASE = [
    "model.path=random", "data.prompts_per_iteration=2", "data.eval_prompts=3", "data.eval_batch_size=1",
    "grpo.group_size=4", "optim.samples_per_update=4", "optim.lr=1e-3", "sampling.num_steps=8", "window.size=2",
    "window.initial_start=0", "window.strategy=progressive", "window.shift_interval=1",
    "rollout.num_workers=2", "rollout.num_cpus=0.25", "learner.num_workers=2", "learner.num_cpus=0.5",
    "rewards.prompt_following.num_cpus=0.25", "rewards.quality.num_cpus=0.25",
    "run.iterations=5", "run.checkpoint_every=0", "run.grid_every=5", "run.grid_prompts=2", "run.progress=false",
]
COLOCATED = ["run.placement=colocated"]
FSDP = ["learner.strategy=fsdp"]
#: what must agree, iteration by iteration, to 1e-6
KEYS = ("reward_mean", "train/loss", "train/grad_norm", "advantage_abs_mean", "weight_version")
SAMPLES = 2 * 4  # per iteration

_RUNS: dict = {}


def _metrics(tmp_path_factory, extra: list[str]) -> list[dict]:
    """metrics.jsonl of a 5-iteration run with ``extra`` (each config run once per module)."""
    key = tuple(extra)
    if key not in _RUNS:
        out = tmp_path_factory.mktemp("colocated")
        assert run(resolve(None, BASE + extra + [f"run.output_dir={out}", "run.name=r"])) == 0
        _RUNS[key] = (RunDir(out / "r").read_metrics(), out / "r")
    return _RUNS[key][0]


def _same(a: list[dict], b: list[dict]) -> None:
    it_a = [r for r in a if "reward_mean" in r]
    it_b = [r for r in b if "reward_mean" in r]
    assert len(it_a) == len(it_b) == 5
    for ra, rb in zip(it_a, it_b):
        for key in KEYS:
            assert rb[key] == pytest.approx(ra[key], abs=1e-6, rel=0), (ra["iteration"], key)
    evals_a = [{k: v for k, v in r.items() if k.startswith("eval/")} for r in a if "eval/images" in r]
    evals_b = [{k: v for k, v in r.items() if k.startswith("eval/")} for r in b if "eval/images" in r]
    assert evals_a and len(evals_a) == len(evals_b)
    for ea, eb in zip(evals_a, evals_b):
        assert eb == pytest.approx(ea, abs=1e-6, rel=0)


def _moved(rows: list[dict]) -> list[int]:
    return [r["train/moved_samples"] for r in rows if "reward_mean" in r]


def test_colocated_replicate_equals_two_rollout_actors_and_two_learners(local_ray, tmp_path_factory):
    dis = _metrics(tmp_path_factory, [])
    colo = _metrics(tmp_path_factory, COLOCATED)
    _same(dis, colo)
    moved = _moved(colo)
    # the update plan draws 4 of the 8 samples per rank at random: some were drawn elsewhere, and
    # the rest never left the worker that sampled them (disaggregated, all 8 travel)
    assert all(0 <= m <= SAMPLES for m in moved) and sum(moved) < 5 * SAMPLES
    assert not any("train/moved_samples" in r for r in dis)
    png = list((_RUNS[tuple(COLOCATED)][1] / "grids").glob("*.png"))
    assert png, "the colocated run wrote no grid"


@pytest.mark.parametrize("weights", ["module", "copy"])
def test_colocated_fsdp_equals_disaggregated_sampling_either_way(local_ray, tmp_path_factory, weights):
    dis = _metrics(tmp_path_factory, FSDP)
    colo = _metrics(tmp_path_factory, COLOCATED + FSDP + [f"rollout.colocated_weights={weights}"])
    _same(dis, colo)
    copied = [r["sync/bytes"] for r in colo if "reward_mean" in r]
    # the copy way refreshes a whole copy after every update; the module way moves no weights
    assert all(b > 0 for b in copied) if weights == "copy" else all(b == 0 for b in copied)


def test_a_lost_hybrid_worker_is_healed_and_the_run_equals_an_uninterrupted_one(local_ray, tmp_path_factory):
    """The workers are ``mixgrpo/hybrid/<i>`` (no rollout or learner actors). A worker whose
    process dies is a lost learner rank: its sampling call is not moved to the other worker; the
    run re-forms both workers from its last checkpoint (the path ``--resume`` takes: new actors load
    the sharded state) and redoes the iterations since, giving an uninterrupted run's metrics."""
    import signal
    import threading
    import time

    from mixgrpo_ray.common import checkpoint as ckpt

    extra = COLOCATED + FSDP + ["rollout.colocated_weights=copy"]
    whole = _metrics(tmp_path_factory, extra)
    out = tmp_path_factory.mktemp("healed")
    part = resolve(None, BASE + extra + ["run.checkpoint_every=3", f"run.output_dir={out}", "run.name=part"])
    seen: dict = {}

    def kill_after_the_checkpoint():
        while not (out / "part" / "checkpoints" / ckpt.checkpoint_name(3)).is_dir():
            time.sleep(0.01)
        seen["hybrid"] = [ray.get_actor(f"mixgrpo/hybrid/{i}", namespace="mixgrpo") is not None for i in range(2)]
        for gone in ("mixgrpo/rollout/0", "mixgrpo/learner/0"):
            try:
                ray.get_actor(gone, namespace="mixgrpo")
                seen[gone] = True
            except ValueError:
                seen[gone] = False
        worker = ray.get_actor("mixgrpo/hybrid/1", namespace="mixgrpo")
        os.kill(ray.get(worker.__ray_call__.remote(lambda self: os.getpid())), signal.SIGKILL)
        seen["killed"] = True

    threading.Thread(target=kill_after_the_checkpoint, daemon=True).start()
    assert run(part) == 0
    assert seen == {"hybrid": [True, True], "mixgrpo/rollout/0": False, "mixgrpo/learner/0": False, "killed": True}
    healed = RunDir(out / "part").read_metrics()
    assert [r["iteration"] for r in healed if "reward_mean" in r] == [1, 2, 3, 4, 5]
    assert sum(r["faults/learner_restart"] for r in healed if "reward_mean" in r) == 1
    _same(whole, healed)
