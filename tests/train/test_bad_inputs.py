"""Every class of bad input to ``mixgrpo-ray train``: one line on stderr naming the problem,
exit code 2, and no run directory created."""

import json
import os
import subprocess
import sys

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from mixgrpo_ray.cli.train_cli import main  # noqa: E402
from repo_paths import ROOT  # noqa: E402



def refused(capsys, tmp_path, argv, expect):
    out_dir = tmp_path / "runs"
    code = main(argv + [f"run.output_dir={out_dir}", "run.progress=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and expect in err, err
    assert not out_dir.exists() or not any(out_dir.iterdir())
    return err


@pytest.mark.parametrize("argv, expect", [
    (["run.iterationz=3"], "run.iterationz"),  # unknown key
    (["run.iterations=many"], "run.iterations"),  # wrong type
    (["grpo.group_size=1"], "grpo.group_size"),  # out of range
    (["window.size=30"], "window.size"),  # impossible combination
    (["--config", "no_such_preset"], "unknown preset"),
    (["model.path=/nonexistent/tiny.safetensors"], "model.path"),
    (["data.train=/nonexistent/prompts.txt"], "not found"),
])
def test_bad_config_and_paths(capsys, tmp_path, argv, expect):
    refused(capsys, tmp_path, argv, expect)


@pytest.mark.parametrize("argv, expect", [
    (["run.placement=colocated", "rollout.num_workers=1", "run.pipeline=async", "learner.max_staleness=1"],
     "run.placement=colocated samples and trains on the same workers in turn, so run.pipeline=async"),
    (["run.placement=colocated", "learner.num_workers=1", "rollout.num_workers=2"],
     "hybrid workers, but rollout.num_workers=2; set rollout.num_workers=1"),
    (["run.placement=colocated", "learner.num_workers=2", "rollout.num_workers=2", "optim.samples_per_update=2",
      "data.prompts_per_iteration=3", "rollout.prompts_per_call=1"], "makes 3; use a multiple of 2 prompts"),
    (["run.placement=colocated", "learner.num_workers=2", "rollout.num_workers=2", "optim.samples_per_update=2",
      "data.prompts_per_iteration=1", "grpo.group_size=4"], "makes 1; use a multiple of 2"),
    (["rollout.colocated_weights=copy"], "rollout.colocated_weights=copy applies to run.placement=colocated only"),
    (["run.placement=together"], "run.placement must be one of disaggregated, colocated"),
])
def test_colocation_it_cannot_honour_is_refused(capsys, tmp_path, argv, expect):
    refused(capsys, tmp_path, argv, expect)


def _parquet(path, column):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: ["a red circle"]}), path)


@pytest.mark.parametrize("name, write, expect", [
    ("empty.txt", lambda p: p.write_text("\n\n"), "no prompts"),
    ("latin1.txt", lambda p: p.write_bytes("caf\xe9 on a table\n".encode("latin-1")), "not UTF-8"),
    ("bad.json", lambda p: p.write_text('["a", '), "malformed JSON"),
    ("bad.jsonl", lambda p: p.write_text('{"prompt": "a"}\n{oops\n'), "bad.jsonl"),
    ("bad.parquet", lambda p: p.write_bytes(b"PAR1 not really"), "Parquet"),
    ("nocol.parquet", lambda p: _parquet(p, "caption_xyz"), "column"),
])
def test_bad_prompt_files(capsys, tmp_path, name, write, expect):
    path = tmp_path / name
    write(path)
    refused(capsys, tmp_path, [f"data.train={path}"], expect)


def test_bad_config_file_and_resume_dir(capsys, tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_bytes(b"run:\n  name: \xff\xfe\n")
    refused(capsys, tmp_path, ["--config", str(cfg)], "UTF-8")
    (tmp_path / "notarun").mkdir()
    refused(capsys, tmp_path, ["--resume", str(tmp_path / "notarun")], "not a run directory")
    refused(capsys, tmp_path, ["--resume", "auto"], "run.name")


def run_cli(tmp_path, *args):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "mixgrpo_ray.cli.train_cli", *args, f"run.output_dir={tmp_path / 'runs'}",
                           "run.progress=false", "ray.dashboard=false"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_cluster_too_small_names_fitting_overrides(tmp_path):
    proc = run_cli(tmp_path, "ray.num_cpus=2")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    line = [ln for ln in err if "error:" in ln]
    assert len(line) == 1 and "asks for 4 CPU in total but the Ray cluster has 2" in line[0]
    assert "rollout.num_cpus=0.5 learner.num_cpus=0.5 rewards.prompt_following.num_cpus=0.25" in line[0]
    assert not (tmp_path / "runs").exists()


def test_reward_folder_that_does_not_load(tmp_path):
    proc = run_cli(tmp_path, "rewards.clip.kind=clip", f"rewards.clip.options={json.dumps({'model': str(tmp_path / 'nope')})}",
                   "rewards.clip.weight=0", "rewards.clip.num_cpus=0.25", "rollout.num_workers=1",
                   "model.path=random")
    line = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(line) == 1 and "could not start its actors" in line[0] and "nope" in line[0], line
    assert not (tmp_path / "runs").exists()
