"""``mixgrpo-ray bench slice``: two short runs of a FluxPipeline folder through the product (full
fine-tuning on 2 fsdp ranks, LoRA), each exported and reloaded in diffusers, and each role's
measured memory beside the plan's. Here on a tiny FLUX (its memory is noise, so the tolerance is
wide); the README's table of the real-width slice is held to the plan by the drift test below."""

import json
import os
import re

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from mixgrpo_ray.bench import flux_slice_run  # noqa: E402
from mixgrpo_ray.cli.bench_cli import main  # noqa: E402
from mixgrpo_ray.config import resolve  # noqa: E402
from mixgrpo_ray.models.flux import flux_slice  # noqa: E402
from repo_paths import ROOT  # noqa: E402
from tiny_flux import build_tiny_flux, write_pipeline_index  # noqa: E402


def test_slice_bench_trains_exports_reloads_and_measures_each_role(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = write_pipeline_index(build_tiny_flux(tmp_path / "flux"))
    out = tmp_path / "bench"
    # the full fine-tuning run only (2 fsdp ranks, collective sync): the LoRA run's export and reload
    # are tests/jobs/test_export.py's and its config is the drift test's, below
    assert main(["slice", "--model", str(folder), "--out", str(out), "--tolerance", "1000", "--only", "full"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and [r["run"] for r in report["runs"]] == ["full"]
    assert (out / "report.md").read_text() in printed
    for r in report["runs"]:
        assert r["iterations"] == 2
        assert r["sample_max_abs_diff"] <= 1e-4 < r["trained_vs_base_max_abs_diff"]  # reloads; training moved it
        cfg = resolve([str(out / "runs" / r["run"] / "config.yaml")])
        assert cfg.learner.strategy == ("fsdp" if r["run"] == "full" else "replicate")
        metrics = [json.loads(line) for line in (out / "runs" / r["run"] / "metrics.jsonl").read_text().splitlines()]
        for m in r["memory"]:
            rows = flux_slice_run.plan_rows(cfg, m["role"])
            assert m["plan_gb"] == pytest.approx(sum(v for k, v in rows if k != "runtime"))
            measured = [row[flux_slice_run.ROLES[m["role"]]] for row in metrics if "reward_mean" in row]
            assert m["measured_gb"] == max(measured) > 0
    assert (out / "export-full" / "config.json").is_file() and report["runs"][0]["learner"] == "fsdp x2"


def test_peak_memory_counts_what_the_process_holds_after_the_model_is_built():
    import torch

    from mixgrpo_ray.common.process_memory import PeakMemory

    memory = PeakMemory(torch.device("cpu"))
    held = torch.ones(50_000_000)  # 0.2 GB, written
    assert 0.19 < memory.peak_gb() < 0.4
    del held  # freed: the high-water mark stays
    assert memory.peak_gb() > 0.19
    memory.loaded()  # loading is over: the peak starts again from what is resident now
    assert memory.peak_gb() < 0.1
    held = torch.ones(25_000_000)
    assert 0.09 < memory.peak_gb() < 0.2 and held.numel() == 25_000_000


def test_bad_slice_bench_input_is_one_line_exit_2(tmp_path, capsys):
    assert main(["slice", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a FluxPipeline folder" in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "report.md").write_text("")
    assert main(["slice", "--out", str(tmp_path / "used")]) == 2
    assert "already holds a report" in capsys.readouterr().err
    assert main(["slice", "--ranks", "0", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def readme_table():
    """The README's rows of the real-width slice: (run, role) -> (plan GB, measured GB)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### FLUX at its real width on CPU"):]
    rows = {}
    for m in re.finditer(r"^\| (full|lora) \| [^|]+\| [^|]+\| (learner|rollout) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$",
                         section, re.M):
        rows[m.group(1), m.group(2)] = (float(m.group(3)), float(m.group(4)))
    return rows


def test_the_plan_stays_within_15_percent_of_the_readmes_measurements(tmp_path):
    """Drift: the plan for the README's slice runs (the slice's configs, made on the meta device)
    against the peaks `mixgrpo-ray bench slice` measured there."""
    flux_slice.build_flux_slice(tmp_path / "slice", weights=False)
    table = readme_table()
    assert set(table) == {(run, role) for run in ("full", "lora") for role in ("learner", "rollout")}
    for (run, role), (readme_plan, measured) in table.items():
        cfg = flux_slice_run.run_config(str(tmp_path / "slice"), tmp_path, run, ranks=2)
        planned = sum(v for k, v in flux_slice_run.plan_rows(cfg, role) if k not in flux_slice_run.GPU_ONLY_ROWS)
        assert readme_plan == pytest.approx(planned, abs=0.006), (run, role)  # the README shows today's plan
        assert abs(measured / planned - 1) <= 0.15, (run, role, measured, planned)
