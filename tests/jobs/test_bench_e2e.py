"""The end-to-end benchmark at a very small size: its table's structure, model-evaluation counts
equal to docs/algorithm.md's formulas, and the plain loop doing the pipeline's math exactly."""

import json
import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")

from mixgrpo_ray.config import resolve  # noqa: E402

SMALL = ["data.eval_prompts=3", "data.eval_seeds=1", "data.prompts_per_iteration=2", "grpo.group_size=4",
         "optim.samples_per_update=8", "rewards.prompt_following.num_cpus=0.25", "rewards.quality.num_cpus=0.25",
         "rollout.num_cpus=0.25", "learner.num_cpus=0.25"]


LOCAL_RAY = {"num_cpus": 8}  # the local Ray of every benchmarked run (tests/conftest.py)


def test_benchmark_table_and_nfe_counts(local_ray, tmp_path):
    from mixgrpo_ray.bench.e2e import run_benchmark
    from mixgrpo_ray.bench.e2e_report import format_table, write_report

    # (dancegrpo_4 and mixgrpo_flash_star differ from these only in config; their NFE is
    # tests/jobs/test_bench.py's, in-process)
    names = ["dancegrpo", "mixgrpo", "mixgrpo_async", "mixgrpo_colocated"]
    res = run_benchmark(names, tmp_path / "runs", iterations=2, block=1, eval_every=2, overrides=SMALL,
                        log=lambda s: None)
    assert list(res) == names
    T, w = 25, 4
    assert res["dancegrpo"]["nfe_rollout"] == T and res["dancegrpo"]["nfe_policy"] == int(0.6 * (T - 1))  # 14
    assert res["mixgrpo"]["nfe_rollout"] == T and res["mixgrpo"]["nfe_policy"] == w
    for name, r in res.items():
        assert r["median_s"] > 0 and r["pipeline_over_plain"] > 0
        assert set(r["phase_s"]) == {"rollout", "reward", "train", "sync"}
        assert set(r["heldout"]) == {"prompt_following", "quality"}
        if name != "mixgrpo_async":
            assert r["iterations"] == 2 and [p["iteration"] for p in r["heldout_curve"]] == [0, 2]
    # the async run goes on until it trained as long as the synchronous one (at most 2 more here)
    asyn, sync_s = res["mixgrpo_async"], res["mixgrpo"]["heldout_curve"][-1]["train_s"]
    assert 2 <= asyn["iterations"] <= 4
    assert asyn["iterations"] == 4 or asyn["heldout_curve"][-1]["train_s"] >= sync_s
    assert [p["iteration"] for p in asyn["heldout_curve"]] == list(range(0, asyn["iterations"] + 1, 2)) + (
        [asyn["iterations"]] if asyn["iterations"] % 2 else [])
    assert res["mixgrpo_async"]["nfe_rollout"] == T and res["mixgrpo_async"]["nfe_policy"] == w
    assert set(res["mixgrpo_async"]["time_to_sync_final"]) == {"reward", "target", "sync_s", "async_s", "speedup"}
    assert res["dancegrpo"]["ratio"] == 1.0
    # colocated beside disaggregated, side by side: same NFE, its own s/iteration ratio and idle share
    colo = res["mixgrpo_colocated"]
    assert colo["placement"] == "colocated" and res["mixgrpo"]["placement"] == "disaggregated"
    assert colo["nfe_rollout"] == T and colo["nfe_policy"] == w
    assert colo["over_disaggregated"] == pytest.approx(colo["median_s"] / res["mixgrpo"]["median_s"])
    assert 0 <= colo["idle_share"]["hybrid"] < res["mixgrpo"]["idle_share"]["rollout"] + 1e-9
    table = format_table(res)
    assert "`mixgrpo_colocated` (2 hybrid workers) takes" in table
    assert table.split("\n\n")[0].count("\n") == len(names) + 1 and "pipeline / plain" in table
    assert "mixgrpo_async` reaches" in table
    files = write_report(res, tmp_path, "header")
    assert json.loads(files["json"].read_text())["mixgrpo"]["nfe_policy"] == w
    assert files["png"].stat().st_size > 1000


def test_plain_loop_does_the_pipelines_math(local_ray, tmp_path):
    """With one rollout actor the pipeline and the plain loop give the same metrics."""
    from mixgrpo_ray.train.driver import Driver
    from mixgrpo_ray.bench.plain_loop import PlainLoop
    from mixgrpo_ray.train.run_dir import RunDir

    cfg = resolve(["tiny", "mixgrpo_flash"], SMALL + ["rollout.num_workers=1", "run.log_rollouts=false"])
    driver = Driver(cfg, RunDir.create(str(tmp_path), "pipe"))
    try:
        driver.broadcast(bump=False)
        pipe = [driver.run_iteration() for _ in range(2)]
    finally:
        driver.shutdown()
    plain = PlainLoop(cfg)
    rows = [plain.run_iteration() for _ in range(2)]
    for a, b in zip(pipe, rows):
        for key in ("reward/prompt_following", "reward/quality", "train/loss", "train/ratio_mean", "nfe/rollout",
                    "window_start", "advantage_abs_mean"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), key
