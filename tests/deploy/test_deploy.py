"""deploy/: every file parses, and the clusters it describes can host the FLUX preset's actors."""

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from mixgrpo_ray.config import required_resources, resolve
from repo_paths import ROOT

DEPLOY = ROOT / "deploy"
#: the deploy files' clusters give every role its own node group: the flux preset disaggregated
FLUX_CONFIGS = ["flux", "flux_disaggregated", "mixgrpo", str(DEPLOY / "flux_paths.yaml")]
ROLE_RESOURCES = {"rollout_gpu", "reward_gpu", "learner_gpu"}
IMAGE_ROOT = "/home/ray/mixgrpo/"  # where deploy/Dockerfile puts the repository


def load(path):
    return yaml.safe_load((DEPLOY / path).read_text())


# --------------------------------------------------------------------------- what a config asks
def actor_demands(cfg):
    """One entry per actor of a run: its CPU, GPU and custom resources."""
    out = []

    def add(rc, count):
        for _ in range(count):
            out.append({"CPU": rc.num_cpus, "GPU": rc.num_gpus, **{k: float(v) for k, v in rc.resources.items()}})

    add(cfg.rollout, cfg.rollout.num_workers)
    add(cfg.learner, cfg.learner.num_workers)
    for rc in cfg.rewards.values():
        add(rc, rc.replicas)
    return out


def check_fits(groups, cfg):
    """``groups``: name -> {"capacity": per-node resources, "start": nodes at start, "max": most nodes}.
    Every actor must fit one node of the single group advertising its role resource, and each
    group's start and max node counts must hold all of its actors together."""
    assigned = {name: [] for name in groups}
    for demand in actor_demands(cfg):
        roles = set(demand) & ROLE_RESOURCES
        assert roles, f"actor {demand} names no role resource; the FLUX preset should place every actor"
        hosts = [n for n, g in groups.items() if roles <= set(g["capacity"])]
        assert len(hosts) == 1, f"actor {demand} matches node groups {hosts}; exactly one must advertise {roles}"
        cap = groups[hosts[0]]["capacity"]
        for key, need in demand.items():
            assert need <= cap.get(key, 0.0) + 1e-9, f"one {hosts[0]} node has {cap.get(key, 0)} {key}, an actor needs {need}"
        assigned[hosts[0]].append(demand)
    for name, actors in assigned.items():
        g = groups[name]
        for key in {k for a in actors for k in a}:
            need = sum(a.get(key, 0.0) for a in actors)
            assert need <= g["start"] * g["capacity"].get(key, 0.0) + 1e-9, f"group {name} starts with too little {key}"
            assert need <= g["max"] * g["capacity"].get(key, 0.0) + 1e-9, f"group {name} cannot grow to {need} {key}"
    # the brief's global check: what the whole cluster can offer covers required_resources()
    for key, need in required_resources(cfg).items():
        offered = sum(g["max"] * g["capacity"].get(key, 0.0) for g in groups.values())
        assert need <= offered + 1e-9, f"the cluster offers {offered} {key} at most, the run needs {need}"


# --------------------------------------------------------------------------- parsing every file
def test_every_yaml_in_deploy_parses():
    files = sorted(DEPLOY.rglob("*.yaml"))
    names = {str(p.relative_to(DEPLOY)) for p in files}
    assert {"runtime_env.yaml", "cluster.yaml", "flux_paths.yaml", "kuberay/rayjob.yaml", "kuberay/raycluster.yaml"} <= names
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text())]
        assert docs and all(isinstance(d, dict) and d for d in docs), f"{path} is not a non-empty YAML mapping"


def test_flux_paths_overlay_resolves_onto_the_flux_preset_and_points_at_shared_storage():
    cfg = resolve(FLUX_CONFIGS)
    base = resolve(FLUX_CONFIGS[:-1])  # the overlay changes paths only, not what the actors ask for
    assert required_resources(cfg) == required_resources(base)
    colocated = resolve(["flux", "mixgrpo", str(DEPLOY / "flux_paths.yaml")])  # also onto the preset as it ships
    assert colocated.model.path == cfg.model.path and colocated.run.placement == "colocated"
    overlay = load("flux_paths.yaml")
    paths = [cfg.model.path, cfg.run.output_dir]
    paths += [v for name in overlay["rewards"] for v in cfg.rewards[name].options.values() if isinstance(v, str) and "/" in v]
    paths += [cfg.data.train.split(":")[0], cfg.data.eval.split(":")[0]]
    assert all(p.startswith("/shared/") for p in paths), paths


# --------------------------------------------------------------------------- KubeRay
def ray_start_resources(params):
    """Custom resources of ``rayStartParams.resources`` as ``ray start`` sees them after the
    shell removes the quoting KubeRay's documented format carries."""
    text = params.get("resources")
    return {} if text is None else {k: float(v) for k, v in json.loads(shlex.split(text)[0]).items()}


def quantity(value):
    return float(value)


def kuberay_groups(spec):
    groups = {}
    for g in spec["workerGroupSpecs"]:
        container = g["template"]["spec"]["containers"][0]
        limits = container["resources"]["limits"]
        params = g.get("rayStartParams", {})
        cap = {"CPU": quantity(params.get("num-cpus", limits["cpu"])),
               "GPU": quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))}
        cap.update(ray_start_resources(params))
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        groups[g["groupName"]] = {"capacity": cap, "start": g["replicas"], "max": g["maxReplicas"]}
    return groups


def cluster_spec(kind):
    doc = load(f"kuberay/{kind}.yaml")
    if kind == "rayjob":
        assert doc["kind"] == "RayJob" and doc["apiVersion"] == "ray.io/v1"
        return doc["spec"]["rayClusterSpec"]
    assert doc["kind"] == "RayCluster" and doc["apiVersion"] == "ray.io/v1"
    return doc["spec"]


def rayjob_config():
    """The config the RayJob's entrypoint trains with (image paths mapped to this checkout)."""
    args = shlex.split(load("kuberay/rayjob.yaml")["spec"]["entrypoint"])
    assert args[:2] == ["mixgrpo-ray", "train"], args
    presets, overrides, rest, flags = [], [], args[2:], {}
    while rest:
        arg = rest.pop(0)
        if arg in ("--resume", "--driver-restarts"):
            flags[arg] = rest.pop(0)
        elif arg == "--config":
            value = rest.pop(0)
            presets.append(str(ROOT / value[len(IMAGE_ROOT):]) if value.startswith(IMAGE_ROOT) else value)
        else:
            assert "=" in arg, f"unexpected entrypoint argument {arg!r}"
            overrides.append(arg)
    # the job retries itself: a re-run driver (--driver-restarts) and a re-submitted job
    # (backoffLimit) both continue the same run from its latest checkpoint
    assert flags.get("--resume") == "auto" and int(flags.get("--driver-restarts", 0)) >= 1, args
    assert load("kuberay/rayjob.yaml")["spec"].get("backoffLimit", 0) >= 1
    cfg = resolve(presets, overrides)
    assert cfg.run.name and cfg.run.output_dir.startswith("/shared/"), "a retry must find the run on shared storage"
    return cfg


@pytest.mark.parametrize("kind", ["raycluster", "rayjob"])
def test_kuberay_worker_groups_host_the_flux_preset(kind):
    spec = cluster_spec(kind)
    groups = kuberay_groups(spec)
    assert set(groups) == {"rollout", "reward", "learner"}
    for role in groups:
        assert f"{role}_gpu" in groups[role]["capacity"], f"group {role} must advertise {role}_gpu"
    head = spec["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0" and not ray_start_resources(head), "no actor may land on the head"
    cfg = rayjob_config() if kind == "rayjob" else resolve(FLUX_CONFIGS)
    check_fits(groups, cfg)


def test_the_check_catches_a_group_too_small_for_the_preset():
    groups = kuberay_groups(cluster_spec("raycluster"))
    groups["reward"]["max"] = groups["reward"]["start"] = 2  # three reward models need three GPUs
    with pytest.raises(AssertionError, match="reward"):
        check_fits(groups, resolve(FLUX_CONFIGS))


def test_rayjob_runs_the_raycluster_layout():
    job, cluster = cluster_spec("rayjob"), cluster_spec("raycluster")
    assert job["workerGroupSpecs"] == cluster["workerGroupSpecs"]
    assert job["headGroupSpec"]["rayStartParams"] == cluster["headGroupSpec"]["rayStartParams"]
    assert job["rayVersion"] == cluster["rayVersion"]


@pytest.mark.parametrize("kind", ["raycluster", "rayjob"])
def test_every_pod_mounts_the_shared_volume(kind):
    spec = cluster_spec(kind)
    claim = load("kuberay/storage.yaml")
    assert claim["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in claim["spec"]["accessModes"]
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert volumes[mounts["/shared"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


# --------------------------------------------------------------------------- cluster launcher
def test_cluster_launcher_config_is_valid_for_ray():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(load("cluster.yaml"), schema)


def test_cluster_launcher_node_types_host_the_flux_preset():
    cfg = load("cluster.yaml")
    types = cfg["available_node_types"]
    assert set(types) == {"head", "rollout", "reward", "learner"} and cfg["head_node_type"] == "head"
    assert types["head"]["resources"].get("CPU") == 0 and not set(types["head"]["resources"]) & ROLE_RESOURCES
    groups = {
        name: {"capacity": {k: float(v) for k, v in t["resources"].items()}, "start": t["min_workers"], "max": t["max_workers"]}
        for name, t in types.items() if name != "head"
    }
    for role in groups:
        assert f"{role}_gpu" in groups[role]["capacity"]
    assert cfg["max_workers"] >= sum(g["max"] for g in groups.values())
    check_fits(groups, resolve(FLUX_CONFIGS))
    assert any("/shared:/shared" in opt for opt in cfg["docker"]["run_options"])


# --------------------------------------------------------------------------- runtime env, image
def uploaded_files(tree: Path, excludes):
    """The files ``ray job submit --working-dir`` would upload from ``tree`` with ``excludes``
    (Ray's own directory walk and pattern matching; the tree has no .gitignore)."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    found = []
    _dir_travel(tree, [_get_excludes(tree, excludes)], lambda p: p.is_file() and found.append(p), include_gitignore=False)
    return {str(p.relative_to(tree)) for p in found}


def test_runtime_env_excludes_outputs_and_environments_but_keeps_the_code_and_tiny_weights(tmp_path):
    env = load("runtime_env.yaml")
    assert ".venv" in env["excludes"] and "runs" in env["excludes"]
    assert "working_dir" not in env, "the working dir comes from `ray job submit --working-dir`"
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "Ray needs string env_vars"
    keep = ["mixgrpo_ray/train/training_run.py", "mixgrpo_ray/config/presets/flux.yaml", "mixgrpo_ray/models/tiny/assets/model.safetensors",
            "mixgrpo_ray/models/tiny/assets/config.json", "mixgrpo_ray/models/tiny/pairs_assets/model.safetensors",
            "mixgrpo_ray/models/tiny/pairs_assets/config.json", "rewards/configs/vit_h_14.json", "deploy/flux_paths.yaml",
            "data/prompts.txt", "pyproject.toml"]
    drop = [".venv/bin/python", ".venv/lib/site.py", "runs/run-1/metrics.jsonl",
            "runs/run-1/checkpoints/iter_000050/weights.safetensors", ".git/HEAD", ".git/objects/ab/cdef",
            "mixgrpo_ray/train/__pycache__/training_run.cpython-311.pyc", "models/flux/transformer.safetensors",
            "HPS_v2.1_compressed.pt", "mixgrpo_ray.egg-info/PKG-INFO", ".pytest_cache/v/cache"]
    for rel in keep + drop:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert uploaded_files(tmp_path, env["excludes"]) == set(keep)


def test_dockerfile_installs_every_package_the_project_ships():
    pyproject = (ROOT / "pyproject.toml").read_text()
    import tomllib

    package_dir = tomllib.loads(pyproject)["tool"]["setuptools"]["package-dir"]
    packages = set(package_dir.values())  # the folders the installed packages come from
    docker = (DEPLOY / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s", docker, flags=re.M))
    assert packages <= copied, f"deploy/Dockerfile does not copy {packages - copied}"
    assert "deploy" in copied  # the RayJob reads /home/ray/mixgrpo/deploy/flux_paths.yaml
    assert re.search(r"^FROM rayproject/ray:(\S+)-py311-gpu", docker, flags=re.M).group(1) == cluster_spec("raycluster")["rayVersion"]
    assert os.path.basename(IMAGE_ROOT.rstrip("/")) and f"WORKDIR {IMAGE_ROOT.rstrip('/')}" in docker
