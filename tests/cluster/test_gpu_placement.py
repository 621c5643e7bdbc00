"""What a first GPU run would meet, checked on CPU with torch's CUDA queries and Ray's GPU ids
faked: device choice per actor, the NCCL process-group setup, reward-model placement, the config
refusals, evaluation in bounded batches and the dependency floors."""

import os
import tomllib
from importlib import metadata

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")

from mixgrpo_ray.actors.rollout_workers import RolloutWorker, RolloutWorkers  # noqa: E402
from mixgrpo_ray.algo.rollout import sample_images  # noqa: E402
from mixgrpo_ray.cluster import devices  # noqa: E402
from mixgrpo_ray.config import ConfigError, resolve  # noqa: E402
from mixgrpo_ray.models.build import NoCudaError, eval_batch_size, pick_device  # noqa: E402
from mixgrpo_ray.models.tiny.model import TinyPolicy  # noqa: E402
from mixgrpo_ray.rewards import server as reward_server  # noqa: E402
from mixgrpo_ray.train.dry_run import PlacementProbe  # noqa: E402
from repo_paths import ROOT  # noqa: E402



@pytest.fixture
def fake_gpus(monkeypatch):
    """torch believes CUDA works; ``set_device`` calls are recorded; Ray assigns GPU ids set by
    the test (``fake_gpus.ids``)."""

    class Fake:
        ids: list = []
        current: list = []

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: Fake.current.append(str(torch.device(d))))
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: list(Fake.ids))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return Fake


# ------------------------------------------------------------------ 2. no silent CPU fallback
def test_a_gpu_actor_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(NoCudaError, match="install a CUDA build of torch"):
        pick_device(1)
    with pytest.raises(NoCudaError, match="num_gpus=0.5"):
        pick_device(0.5)
    assert pick_device(0) == torch.device("cpu")


# ------------------------------------------------------------------ 4. the GPU Ray assigned
@pytest.mark.parametrize("ids,visible,index", [
    (["3"], None, 3),  # Ray did not narrow CUDA_VISIBLE_DEVICES (NOSET): physical index
    (["3"], "3", 0),  # Ray narrowed it: the only visible GPU
    (["5"], "1,3,5,7", 2),  # an inherited wider list
    (["GPU-abc"], "GPU-xyz,GPU-abc", 1),  # UUIDs
    ([], None, None),
])
def test_local_gpu_index(ids, visible, index):
    assert devices.local_gpu_index(ids, visible) == index


def test_a_gpu_hidden_by_cuda_visible_devices_is_an_error():
    with pytest.raises(RuntimeError, match="hides it"):
        devices.local_gpu_index(["4"], "0,1")


def test_actor_device_follows_ray_gpu_ids(fake_gpus, monkeypatch):
    fake_gpus.ids = ["2"]
    monkeypatch.setenv("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", "1")
    assert devices.actor_device(1) == torch.device("cuda:2")
    assert fake_gpus.current == ["cuda:2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert devices.actor_device(1) == torch.device("cuda:0")
    # an actor given no GPU computes on CPU although (Ray 2.60) it sees the node's GPUs
    fake_gpus.ids = ["0", "1"]
    assert devices.actor_device(0) == torch.device("cpu")


def test_nccl_sets_the_device_before_joining_and_binds_it(fake_gpus, monkeypatch):
    calls = []
    monkeypatch.setattr(devices.dist, "init_process_group",
                        lambda **kw: calls.append(("init", fake_gpus.current[-1], kw)))
    backend = devices.join_process_group("auto", torch.device("cuda:1"), "10.0.0.1", 1234, 1, 2)
    assert backend == "nccl"
    (what, current, kw), = calls
    assert current == "cuda:1" and kw["device_id"] == torch.device("cuda:1") and kw["backend"] == "nccl"
    assert kw["rank"] == 1 and kw["world_size"] == 2 and kw["init_method"] == "tcp://10.0.0.1:1234"
    assert kw["timeout"].total_seconds() == 600.0
    calls.clear()
    assert devices.join_process_group("auto", torch.device("cpu"), "h", 1, 0, 2) == "gloo"
    assert "device_id" not in calls[0][2]
    with pytest.raises(RuntimeError, match="needs a GPU per learner"):
        devices.join_process_group("nccl", torch.device("cpu"), "h", 1, 0, 2)


# ------------------------------------------------------------------ 3. reward models follow num_gpus
def test_reward_without_gpus_stays_on_cpu_although_cuda_is_visible(fake_gpus, tmp_path):
    from tiny_clip import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")
    fake_gpus.ids = ["0"]  # Ray 2.60: a num_gpus=0 actor still sees the node's GPUs
    server = reward_server.RewardServer("clip", "clip", {"model": str(clip)}, 4, 1, 0, num_gpus=0)
    assert server.device == torch.device("cpu") and server.model.embedder.device == torch.device("cpu")
    assert server.info()["device"] == "cpu"


@pytest.mark.parametrize("kind", ["imagereward", "hps", "pickscore", "clip", "unifiedreward"])
def test_reward_with_a_gpu_gets_the_one_ray_assigned(fake_gpus, monkeypatch, kind):
    built = {}
    monkeypatch.setattr(reward_server, "build_reward", lambda k, **options: built.update(options) or object())
    monkeypatch.setattr(reward_server.ray_metrics, "RewardMetrics", lambda *a: None)
    fake_gpus.ids = ["6"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    reward_server.RewardServer("r", kind, {"device": "cuda", "x": 1}, 4, 1, 0, num_gpus=0.5)
    assert built == {"device": "cuda:2", "x": 1} and fake_gpus.current == ["cuda:2"]


def test_rewards_without_a_device_option_get_none():
    assert reward_server.placed_options("quality", {"stray_scale": 0.1}, torch.device("cuda:1")) == {"stray_scale": 0.1}


# ------------------------------------------------------------------ config refusals (4, 5, 3)
@pytest.mark.parametrize("overrides,needle", [
    (["learner.backend=nccl"], "learner.backend=nccl needs learner.num_gpus > 0"),
    (["model.kind=flux", "model.dtype=fp16"], "model.dtype=fp16 is not supported for FLUX"),
    (["rewards.quality.options={device: cuda}"], "rewards.quality.options.device=cuda needs rewards.quality.num_gpus > 0"),
    (["rewards.quality.num_gpus=1", "rewards.quality.options={device: cpu}"], "reserves GPUs it would not use"),
])
def test_gpu_config_refusals(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        resolve(["tiny"], overrides)
    resolve(["tiny"], ["learner.backend=nccl", "learner.num_gpus=1"])  # a GPU learner may use NCCL
    resolve(["tiny"], ["model.kind=flux", "model.dtype=bf16"])


# ------------------------------------------------------------------ 1. evaluation in bounded batches
class CountingPolicy:
    """A policy wrapper that records the batch size of every velocity call."""

    def __init__(self, policy):
        self.inner, self.batches = policy, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def velocity(self, x, sigma, cond):
        self.batches.append(x.shape[0])
        return self.inner.velocity(x, sigma, cond)


def test_sample_images_never_passes_more_than_the_batch():
    policy = CountingPolicy(TinyPolicy.from_pretrained())
    prompts = ["a small red circle on a white background, top left"] * 7
    seeds = list(range(7))
    chunked = sample_images(policy, prompts, seeds, num_steps=4, batch_size=3)
    assert max(policy.batches) == 3 and sum(policy.batches) == 7 * 4
    assert torch.equal(chunked, sample_images(policy.inner, prompts, seeds, num_steps=4))


def test_rollout_actor_evaluates_and_draws_grids_in_batches():
    cfg = resolve(["tiny"], ["sampling.num_steps=4", "window.size=1", "window.initial_start=0"])
    worker = RolloutWorker(0, cfg.model, cfg.sampling, cfg.grpo, cfg.rollout, 0, 2)
    worker.policy = CountingPolicy(worker.policy)
    worker.sample_eval(["a blue square"] * 5, list(range(5)), 0, [])
    worker.grid_png(["a blue square"] * 3, 0, 0, [])
    assert max(worker.policy.batches) == 2


class _FakeActor:
    def __init__(self, index, log):
        outer = self

        class Method:  # a Ray actor method handle: .options(num_returns=...).remote(...)
            def options(self, num_returns=1):
                self.num_returns = num_returns
                return self

            def remote(self, prompts, seeds, version=0, weights=(), inputs=(None,)):
                log.append((index, len(prompts)))
                assert self.num_returns == len(inputs)
                out = (index, list(prompts), list(seeds))
                return out if self.num_returns == 1 else tuple(out for _ in inputs)

        self.sample_eval = Method()
        self.index = outer


def test_driver_splits_flux_evaluation_into_calls_of_the_model_batch():
    cfg = resolve(["flux"], [])  # all 400 HPDv2 test prompts, one rollout actor
    assert cfg.data.eval_batch_size == 0 and eval_batch_size(cfg.model, 0) == 8
    log = []
    workers = RolloutWorkers.__new__(RolloutWorkers)
    workers.actors, workers.eval_batch_size = [_FakeActor(0, log)], eval_batch_size(cfg.model, cfg.data.eval_batch_size)
    workers.live, workers.version, workers.weights, workers.inputs = [0], 0, [], (None,)
    prompts = [f"p{i}" for i in range(400)]
    calls = workers.sample_eval(prompts, list(range(400)))
    assert max(n for _, n in log) == 8 and len(calls) == 50
    assert [p for ps, _ in calls for p in ps] == prompts  # in order
    # two actors: each takes half, in calls of at most data.eval_batch_size
    log.clear()
    workers.actors, workers.eval_batch_size = [_FakeActor(0, log), _FakeActor(1, log)], 3
    workers.live = [0, 1]
    workers.sample_eval(prompts[:10], list(range(10)))
    assert log == [(0, 3), (0, 2), (1, 3), (1, 2)]
    assert eval_batch_size(cfg.model, 5) == 5 and eval_batch_size(resolve(["tiny"], []).model, 0) == 256


# ------------------------------------------------------------------ dry-run probe on a faked GPU node
def test_placement_probe_reports_the_assigned_gpu(fake_gpus, monkeypatch):
    class Props:
        name, total_memory = "Fake H100", 80 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props)
    fake_gpus.ids = ["3"]
    report = PlacementProbe().report(1)
    assert report["device"] == "cuda:3" and report["gpu_ids"] == ["3"] and report["gpu_name"] == "Fake H100"
    assert report["gpu_memory_gib"] == 80


def test_placement_probe_reports_a_cpu_torch_on_a_gpu_actor(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: ["0"])
    report = PlacementProbe().report(1)
    assert report["device"] is None and "CUDA build" in report["error"]


# ------------------------------------------------------------------ 7. dependency floors
#: what the code needs of each library, and why (docs/models-and-rewards.md "Real models" states the tested range)
FLOORS = {
    "transformers": ("4.56", "from_pretrained(dtype=...) in models/flux/loading.py and the rewards"),
    "torch": ("2.4", "init_process_group(device_id=...) for NCCL learners"),
    "pydantic": ("2.0", "the config sections are pydantic v2 models"),
    "diffusers": ("0.32", "FluxTransformer2DModel / AutoencoderKL as loaded in models/flux"),
}


def _floor(requirement: str) -> tuple[str, str]:
    name, _, version = requirement.partition(">=")
    return name.split("[")[0].strip(), version.strip()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("+")[0].split(".")[:3] if p.isdigit())


def test_dependency_floors_cover_what_the_code_uses():
    deps = dict(_floor(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    for name, (need, why) in FLOORS.items():
        assert name in deps, f"{name} is used ({why}) but not a dependency"
        assert _version(deps[name]) >= _version(need), f"{name}>={deps[name]} is too low: {why} needs {need}"
    for name, floor in deps.items():  # the environment the tests run in satisfies the floors
        assert _version(metadata.version(name)) >= _version(floor), name


# ------------------------------------------------------------------ 6. mixed evaluation shares components
@pytest.mark.parametrize("lora_rank", [0, 4])
def test_mixed_evaluation_loads_one_text_encoder_and_vae(tmp_path, monkeypatch, lora_rank):
    import transformers
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from safetensors.torch import save_file

    from mixgrpo_ray.models.flux.flux_policy import FluxPolicy
    from mixgrpo_ray.eval.heldout_eval import evaluate
    from tiny_clip import save_tiny_clip
    from tiny_flux import IMAGE_SIZE, build_tiny_flux

    flux, clip = build_tiny_flux(tmp_path / "flux"), save_tiny_clip(tmp_path / "clip")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\nthe dog on the mat\na photo of a dog\n")
    overrides = [
        f"model.path={flux}", f"model.height={IMAGE_SIZE}", f"model.width={IMAGE_SIZE}", "model.max_sequence_length=8",
        f"model.lora_rank={lora_rank}", "learner.strategy=replicate", "learner.num_workers=1", "rollout.num_workers=1",
        f"data.eval={prompts}", "sampling.num_steps=4", "window.size=1",
        "rewards.hps=null", "rewards.pickscore=null", "rewards.imagereward=null", "rewards.clip.kind=clip",
        f"rewards.clip.options={{model: {clip}}}", "run.grid_prompts=0", "run.progress=false",
    ]
    cfg = resolve(["flux"], overrides)
    policy = FluxPolicy.from_model_config(cfg.model, trainable=True)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.05)
    ckpt = tmp_path / "iter_000001"
    ckpt.mkdir()
    save_file({k: v.contiguous() for k, v in policy.trainable_state_dict().items()}, str(ckpt / "weights.safetensors"))

    loads = {"t5": 0, "vae": 0, "transformer": 0}
    for key, cls in (("t5", transformers.T5EncoderModel), ("vae", AutoencoderKL), ("transformer", FluxTransformer2DModel)):
        original = cls.from_pretrained.__func__

        def counting(klass, *a, _key=key, _original=original, **kw):
            loads[_key] += 1
            return _original(klass, *a, **kw)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(counting))
    evaluate(presets=["flux"], overrides=overrides, checkpoint=str(ckpt), mix_fraction=0.5,
             batch_size=2, out=str(tmp_path / "eval"))
    # one text encoder and VAE for the checkpoint and the base; a second transformer only without LoRA
    assert loads == {"t5": 1, "vae": 1, "transformer": 1 if lora_rank else 2}


# ------------------------------------------------------------------ train --dry-run on the CPU cluster
def test_train_dry_run_probes_every_role_without_loading_models(tmp_path, capsys, monkeypatch):
    from mixgrpo_ray.cli.train_cli import main as train_main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cpu = [f"{role}.{key}" for role in ("rollout", "learner", "rewards.hps", "rewards.pickscore", "rewards.imagereward")
           for key in ("num_gpus=0", "resources=null", "num_cpus=0.25")]
    args = ["--dry-run", "--config", "flux", "--config", "flux_disaggregated", "--config", "flux_lora",
            f"model.path={tmp_path / 'no-such-model'}", "learner.num_workers=1", "optim.samples_per_update=3",
            *cpu, "rollout.num_workers=2", "ray.num_cpus=2", "ray.dashboard=false"]
    assert train_main(args) == 0  # the model folder does not exist: nothing was loaded
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " x" in ln and "device" in ln]
    roles = [ln.split()[0] for ln in lines]
    assert roles == ["rollout", "reward/hps", "reward/pickscore", "reward/imagereward", "learner"]
    assert lines[0].split()[1] == "x2" and all("device cpu" in ln and "gpu ids -" in ln for ln in lines)
    assert "dtype fp32 (frozen transformer), fp32 LoRA adapters" in lines[-1]
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ dry-run memory = the plan's
def test_dry_run_memory_is_the_plans(tmp_path):
    """``train --dry-run`` reports, per role, the total of ``mixgrpo-ray plan``'s rows for that
    role (one memory model), and refuses a role the plan says does not fit the probe's GPU."""
    from mixgrpo_ray.plan import memory_plan as plan
    from mixgrpo_ray.train.dry_run import format_rows, role_row, roles
    from tiny_flux import build_tiny_flux

    flux = build_tiny_flux(tmp_path / "flux")
    cfg = resolve(["flux", "flux_disaggregated"], [f"model.path={flux}"])
    size = plan.model_size(cfg)
    by_role = {p.role: p for p in roles(cfg)}
    report = {"device": "cuda:0", "gpu_ids": ["0"], "cuda_visible_devices": "0", "gpu_name": "Fake", "gpu_memory_gib": 80}
    rollout = role_row(cfg, by_role["rollout"], report, size)
    want = sum(v for _, v in plan.rollout_rows(cfg, size))
    assert rollout["memory"] == f"~{want:.1f} GB (mixgrpo-ray plan)" and "error" not in rollout
    learner_rows = plan.learner_rows(cfg, size, cfg.learner.num_workers, cfg.learner.strategy)
    assert not any("text_encoder" in k or "vae" in k for k, _ in learner_rows)  # learners hold what they train
    learner = role_row(cfg, by_role["learner"], {**report, "gpu_memory_gib": 1.0}, size)  # runtime alone is 3 GB
    assert learner["memory"] == f"~{sum(v for _, v in learner_rows):.1f} GB (mixgrpo-ray plan)"
    assert "does not fit the 1 GiB of Fake on cuda:0 (at most 90% of it); use learner.strategy=fsdp" in learner["error"]
    hps = role_row(cfg, by_role["reward/hps"], report, size)
    assert hps["memory"] == f"~{4 * plan.REWARD_PARAMS['hps'] / 1e9 + plan.RUNTIME_GB:.1f} GB (fp32 weights + runtime)"
    assert "ERROR: " in format_rows([rollout, learner]).splitlines()[1] and "ERROR" not in format_rows([rollout])
    # the same numbers the plan prints
    from mixgrpo_ray.plan.plan_report import plan_report

    text, _ = plan_report(cfg, 80, 8, 1)
    assert f"{sum(v for _, v in learner_rows):9.2f}" in text
    # colocated: one hybrid role, whose memory is the plan's hybrid worker
    from mixgrpo_ray.plan.colocated_plan import hybrid_rows, sampling_weights

    colo = resolve(["flux"], [f"model.path={flux}"])
    hybrid_probe = {p.role: p for p in roles(colo)}["hybrid"]
    way = sampling_weights(colo, size)
    want = sum(v for _, v in hybrid_rows(colo, size, way))
    row = role_row(colo, hybrid_probe, report, size)
    assert row["memory"] == f"~{want:.1f} GB (sampling on the {way}; mixgrpo-ray plan)" and "error" not in row
    text, _ = plan_report(colo, 80, 8, 1)
    assert f"{want:9.2f}" in text


def test_a_rank_that_cannot_reach_rank_0_fails_within_the_timeout():
    """Real rendezvous (gloo): rank 1 of 2 with nobody hosting the address gives up after
    ``timeout_s`` with one line naming the address and the config key, not a hang."""
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"rank 1 of 2 could not join the process group at 127.0.0.1:{port} "
                                           r"within learner.init_timeout_s=2s"):
        devices.join_process_group("gloo", torch.device("cpu"), "127.0.0.1", port, 1, 2, timeout_s=2.0)
    assert time.monotonic() - t0 < 30
    assert not devices.dist.is_initialized()
