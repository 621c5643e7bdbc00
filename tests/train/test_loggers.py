"""``run.loggers``: a short run's TensorBoard event file read back with TensorBoard's own reader;
W&B offline and MLflow (where installed) on the same rows and grids; a missing package is one line."""

import io
import os

import time

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from mixgrpo_ray.config import resolve  # noqa: E402
from mixgrpo_ray.train import loggers as L  # noqa: E402
from mixgrpo_ray.train.run_dir import RunDir  # noqa: E402

ROWS = [{"iteration": 0, "eval/reward/quality": 0.5, "eval/reward/quality_se": 0.01, "eval/images": 4},
        {"iteration": 1, "reward_mean": 0.25, "reward/quality": 0.25, "rollout_versions": [0], "window_start": 2},
        {"iteration": 2, "reward_mean": 0.75, "final": True}]


def png(colour=(255, 0, 0)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 4), colour).save(buf, format="PNG")
    return buf.getvalue()


def log_through_run_dir(tmp_path, loggers):
    """Write ROWS and two grids through a RunDir whose loggers are ``loggers``."""
    cfg = resolve(None, [f"run.loggers=[{', '.join(loggers)}]", "run.project=mixgrpo-test"])
    run = RunDir.create(str(tmp_path), "logs")
    run.loggers = L.Loggers(cfg, run.path)
    for row in ROWS:
        run.append_metrics(row)
    run.write_grid("iter_000000.png", png())
    run.write_grid("iter_000002.png", png((0, 0, 255)))
    run.loggers.close()
    assert len(run.read_metrics()) == 3  # metrics.jsonl is written whatever the loggers
    return run.path


def test_scalars_skip_flags_lists_and_iteration():
    assert L.scalars(ROWS[1]) == {"reward_mean": 0.25, "reward/quality": 0.25, "window_start": 2.0}
    assert L.scalars(ROWS[2]) == {"reward_mean": 0.75} and L.grid_step("iter_000050.png") == 50


def test_missing_logger_package_is_one_line_before_anything_starts(tmp_path, monkeypatch, capsys):
    from mixgrpo_ray.cli.train_cli import main as train_main

    monkeypatch.setitem(L.PACKAGES, "wandb", ("no_such_package_xyz", "wandb"))
    assert train_main(["run.loggers=[jsonl, wandb]", f"run.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'no_such_package_xyz' package is not installed" in err
    assert "mixgrpo-ray[wandb]" in err and not list(tmp_path.iterdir())  # no run directory


def test_wandb_is_offline_without_an_api_key(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'mixgrpo-ray[wandb]')")
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert L.wandb_mode("auto") == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password secret\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert L.wandb_mode("auto") == "online" and L.wandb_mode("offline") == "offline"
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))

    run = log_through_run_dir(tmp_path, ["jsonl", "wandb"])
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    deadline = time.monotonic() + 60  # W&B's service process may still be writing the file after finish()
    while True:
        data = b"".join(p.read_bytes() for p in offline[0].glob("*.wandb"))
        if b"grids/held_out" in data or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert b"reward_mean" in data and b"eval/reward/quality" in data and b"grids/held_out" in data


def test_mlflow_logs_into_the_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'mixgrpo-ray[mlflow]')")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = log_through_run_dir(tmp_path, ["mlflow"])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    assert list((run / "mlruns").rglob("*.png"))  # the grids, as artifacts
    (exp,) = [e for e in client.search_experiments() if e.name == "mixgrpo-test"]
    (r,) = client.search_runs([exp.experiment_id])
    history = client.get_metric_history(r.info.run_id, "reward_mean")
    assert [(m.step, m.value) for m in history] == [(1, 0.25), (2, 0.75)]
    assert r.data.params["run.project"] == "mixgrpo-test"


def test_short_run_with_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'mixgrpo-ray[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mixgrpo_ray.cli.train_cli import main as train_main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = [
        "data.prompts_per_iteration=2", "grpo.group_size=2", "optim.samples_per_update=2", "data.eval_prompts=2",
        "sampling.num_steps=6", "window.size=2", "window.initial_start=0",
        "rollout.num_cpus=0.5", "learner.num_cpus=0.5", "rewards.prompt_following.num_cpus=0.25",
        "rewards.quality.num_cpus=0.25", "run.iterations=2", "run.checkpoint_every=0", "run.grid_every=1",
        "run.grid_prompts=2", "run.progress=false", "run.log_rollouts=false", "run.loggers=[jsonl, tensorboard]",
        f"run.output_dir={tmp_path}", "run.name=tb", "ray.num_cpus=2", "ray.dashboard=false",
    ]
    assert train_main(args) == 0
    events = list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"reward_mean", "reward/quality", "time/rollout_s", "eval/reward/prompt_following"} <= set(tags["scalars"])
    metrics = RunDir(tmp_path / "tb").read_metrics()
    expected = [(r["iteration"], r["reward_mean"]) for r in metrics if "reward_mean" in r]
    got = [(e.step, e.value) for e in acc.Scalars("reward_mean")]
    assert [s for s, _ in got] == [1, 2] and all(abs(a[1] - b[1]) < 1e-6 for a, b in zip(got, expected))
    assert [e.step for e in acc.Scalars("eval/reward/prompt_following")] == [0, 2]  # before and after
    images = acc.Images("grids/held_out")
    assert [e.step for e in images] == [0, 1, 2] and images[0].width > 0 and images[0].encoded_image_string
