"""The side-by-side benchmark: NFE accounting exact, cost ordering as docs/algorithm.md §11 expects (NFE: eqs. (21)–(22))."""

import torch

from mixgrpo_ray.bench.phases import format_table, run_benchmark
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


def test_sync_bench_both_transports_and_publish_memory(tmp_path):
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from mixgrpo_ray.bench.sync_throughput import format_sync_table, run_sync_bench
    from tiny_flux import build_tiny_flux

    folder = build_tiny_flux(tmp_path / "flux")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run_sync_bench(size_gb=0.2, bucket_mb=64.0)  # buckets above glibc's 32 MB mmap threshold
        # a FluxPipeline folder's transformer, published in bf16 (2 bytes per parameter)
        flux = run_sync_bench(bucket_mb=0.01, model=str(folder))
    finally:
        ray.shutdown()
    from diffusers import FluxTransformer2DModel

    params = sum(p.numel() for p in FluxTransformer2DModel.from_pretrained(str(folder / "transformer")).parameters())
    for name, r in flux.items():
        assert r["delivered"] and r["sync/bytes"] == 2 * params, name
    assert set(res) == {"object_store", "collective"}
    for name, r in res.items():
        assert r["delivered"] and r["sync/bytes"] >= 0.19e9 and r["sync/gbps"] > 0, name
        # a publish holds at most 1.5 buckets beyond the shard (+1 bucket: allocator and Ray slack)
        assert r["beyond_buckets"] <= 2.5, (name, r["beyond_buckets"])
    assert res["object_store"]["peak_host_bytes"] >= 0.9 * res["object_store"]["shard_bytes"]
    assert "collective" in format_sync_table(res)


def test_phases_refuses_a_sync_model_that_is_not_a_flux_folder(tmp_path, capsys):
    from mixgrpo_ray.cli import main

    assert main(["bench", "phases", "--sync-model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a FluxPipeline folder" in err[0] and "flux_slice" in err[0]
