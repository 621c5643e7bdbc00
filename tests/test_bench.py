"""The side-by-side benchmark: NFE accounting exact, cost ordering as docs/algorithm.md §11 expects (NFE: eqs. (21)–(22))."""

import torch

from mixgrpo_ray.run.bench import format_table, run_benchmark
from mixgrpo_ray.models.tiny.model import TinyPolicy


def test_benchmark_ratios_and_nfe():
    torch.set_num_threads(1)
    prompts = ["a small red circle on a white background, top left", "a large blue square on a black background, center"]
    res = run_benchmark(TinyPolicy(seed=0), prompts, group=6, rounds=4, progress=False)
    assert res["dancegrpo"]["ratio"] == 1.0
    assert res["dancegrpo"]["nfe_rollout"] == 25 and res["dancegrpo"]["nfe_policy"] == 14
    assert res["mixgrpo"]["nfe_rollout"] == 25 and res["mixgrpo"]["nfe_policy"] == 4
    assert res["mixgrpo_flash_star"]["nfe_rollout"] == 7
    # Flash averages L + n over the window starts it visited (0, 5, 10, 15): 11, 15, 19, 23 + ... per start
    assert 11 <= res["mixgrpo_flash"]["nfe_rollout"] < 25
    # fewer trained steps and cheaper tails must cost less, measured side by side
    assert res["mixgrpo"]["ratio"] < 0.9
    assert res["mixgrpo_flash_star"]["ratio"] < res["mixgrpo"]["ratio"]
    assert "mixgrpo_flash_star" in format_table(res)
