"""The Grafana dashboard in deploy/grafana: every panel's query names a metric the run exports
(derived from mixgrpo_ray/cluster/metrics.py and seen on a real short run's metrics endpoint), and,
with a real Prometheus server (Debian's ``prometheus``), a ``mixgrpo_*`` series of that run can be
queried through Prometheus's HTTP API."""

import ast
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from processes import free_port
from repo_paths import HELPERS, ROOT

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

DASHBOARD = ROOT / "deploy" / "grafana" / "mixgrpo_dashboard.json"
METRICS_SOURCE = ROOT / "mixgrpo_ray" / "cluster" / "metrics.py"
#: what Ray's Prometheus exporter appends to each kind of metric
SUFFIXES = {"Gauge": ("",), "Counter": ("_total",), "Histogram": ("_bucket", "_sum", "_count")}


def defined_metrics() -> dict[str, str]:
    """``mixgrpo_*`` name -> kind of every metric cluster/metrics.py defines (read from its source:
    ``_m.Counter/Gauge/Histogram("name", ...)`` calls, and the driver's ``GAUGES`` table)."""
    tree = ast.parse(METRICS_SOURCE.read_text())
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SUFFIXES:
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                out[first.value] = node.func.attr
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "GAUGES" for t in node.targets):
            out.update({f"mixgrpo_{k.value}": "Gauge" for k in node.value.keys})
    return out


def exported_names() -> set[str]:
    """The series names Prometheus sees: ``ray_`` + name + the kind's suffix."""
    return {f"ray_{name}{suffix}" for name, kind in defined_metrics().items() for suffix in SUFFIXES[kind]}


def panel_queries() -> dict[str, list[str]]:
    dash = json.loads(DASHBOARD.read_text())
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dash["panels"] if p["type"] != "row"}


def names_in(expr: str) -> set[str]:
    return set(re.findall(r"\bray_mixgrpo_\w+", expr))


def test_every_panel_queries_metrics_that_metrics_py_defines():
    exported = exported_names()
    assert {"ray_mixgrpo_reward", "ray_mixgrpo_iterations_total", "ray_mixgrpo_phase_seconds_bucket"} <= exported
    queries = panel_queries()
    assert len(queries) >= 10
    for title, exprs in queries.items():
        assert exprs, f"panel {title!r} has no query"
        for expr in exprs:
            assert names_in(expr), f"panel {title!r}: {expr!r} names no mixgrpo metric"
            assert names_in(expr) <= exported, f"panel {title!r}: {sorted(names_in(expr) - exported)} not exported"


def test_the_dashboard_covers_what_the_issue_lists():
    used = {n for exprs in panel_queries().values() for e in exprs for n in names_in(e)}
    for name in ("reward", "reward_mean", "advantage_abs_mean", "ratio_mean", "clip_fraction", "approx_kl",
                 "window_start", "phase_seconds_sum", "images_per_second", "weight_version",
                 "rollout_weight_version", "reward_failures_total"):
        assert f"ray_mixgrpo_{name}" in used, name
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "mixgrpo-ray" and dash["templating"]["list"][0]["type"] == "datasource"


@pytest.fixture(scope="module")
def metrics_run(tmp_path_factory):
    """A 2-iteration tiny run on a local Ray whose metrics endpoint is on a free port; a reward that
    fails on some prompts (``custom_rewards:Judge``) makes the failure counter exist too."""
    import ray

    from mixgrpo_ray.config import resolve
    from mixgrpo_ray.train.training_run import run

    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    tmp = tmp_path_factory.mktemp("metrics")
    port = free_port()
    old_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HELPERS), old_path) if p)
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="mixgrpo", _metrics_export_port=port,
             _system_config={"metrics_report_interval_ms": 500})
    try:
        cfg = resolve(None, [
            "data.prompts_per_iteration=2", "grpo.group_size=2", "optim.samples_per_update=2", "data.eval_prompts=4",
            "sampling.num_steps=6", "window.size=2", "window.initial_start=0",
            "rollout.num_cpus=0.5", "learner.num_cpus=0.5", "rewards.prompt_following.num_cpus=0.25",
            "rewards.quality.num_cpus=0.25", "rewards.judge.kind=python", "rewards.judge.target=custom_rewards:Judge",
            "rewards.judge.weight=0", "rewards.judge.num_cpus=0.25", "rewards.judge.options={fail_word: a}",
            "run.iterations=2", "run.checkpoint_every=0", "run.grid_every=0", "run.grid_prompts=0",
            "run.progress=false", "run.log_rollouts=false", f"run.output_dir={tmp}", "run.name=m",
        ])
        assert run(cfg) == 0
        url = f"http://127.0.0.1:{port}/metrics"
        seen: set[str] = set()
        deadline = time.time() + 30
        while time.time() < deadline:  # the workers report every 0.5 s
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            seen = set(re.findall(r"^(ray_mixgrpo_\w+?)(?:\{| )", text, re.M))
            # every process reports on its own schedule: wait until every metric a panel queries is there
            wanted = {n for exprs in panel_queries().values() for e in exprs for n in names_in(e)}
            if {"ray_mixgrpo_iterations_total", "ray_mixgrpo_reward_failures_total"} | wanted <= seen:
                break
            time.sleep(0.5)
        yield {"port": port, "seen": seen}
    finally:
        ray.shutdown()
        if old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_path


def test_every_panel_metric_is_on_a_real_runs_endpoint(metrics_run):
    seen = metrics_run["seen"]
    assert seen <= exported_names(), f"the run exports metrics metrics.py does not define: {sorted(seen - exported_names())}"
    for title, exprs in panel_queries().items():
        for expr in exprs:
            missing = names_in(expr) - seen
            assert not missing, f"panel {title!r} queries {sorted(missing)}, absent from a real run's endpoint"


def test_a_mixgrpo_series_through_prometheus_http_api(metrics_run, tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (Debian: apt-get install prometheus)")
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: ray\n    static_configs: [{{targets: ['127.0.0.1:{metrics_run['port']}']}}]\n"
    )
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{web}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        def query(q: str) -> list:
            url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            body = json.loads(urllib.request.urlopen(url, timeout=5).read())
            assert body["status"] == "success"
            return body["data"]["result"]

        result, deadline = [], time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            try:
                result = query("ray_mixgrpo_iterations_total")
            except OSError:
                result = []
            if result:
                break
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert result and float(result[0]["value"][1]) == 2.0
        rewards = {r["metric"]["reward"] for r in query("ray_mixgrpo_reward")}
        assert {"prompt_following", "quality"} <= rewards
        # a dashboard query runs as written
        assert query("sum by (phase) (ray_mixgrpo_phase_seconds_count)")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
