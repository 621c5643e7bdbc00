"""``mixgrpo-ray export``: a tiny-FLUX run's checkpoint loads in diffusers' FluxPipeline and
samples the same image as the policy from the same noise; LoRA adapters load with
``load_lora_weights``; the tiny model's folder loads with ``TinyPolicy.from_pretrained``."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from mixgrpo_ray.algo.rollout import sample_images  # noqa: E402
from mixgrpo_ray.cli import main as cli_main  # noqa: E402
from mixgrpo_ray.config import resolve  # noqa: E402
from mixgrpo_ray.models.flux.flux_policy import FluxPolicy, load_trained_weights  # noqa: E402
from mixgrpo_ray.models.tiny.model import TinyPolicy  # noqa: E402
from tiny_flux import IMAGE_SIZE, build_tiny_flux, write_pipeline_index  # noqa: E402

PROMPTS = ["a red cat", "the dog on the mat"]
SEEDS = [0, 1]
STEPS = 8
SEQ = 16


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return write_pipeline_index(build_tiny_flux(tmp_path_factory.mktemp("flux")))


def flux_overrides(pipe_dir, lora_rank=0, lora_alpha=0.0):
    return [f"model.path={pipe_dir}", f"model.height={IMAGE_SIZE}", f"model.width={IMAGE_SIZE}",
            f"model.max_sequence_length={SEQ}", f"model.lora_rank={lora_rank}", f"model.lora_alpha={lora_alpha}",
            "model.gradient_checkpointing=false", f"sampling.num_steps={STEPS}", "window.size=2",
            "learner.strategy=replicate", "learner.num_workers=1", "rollout.num_workers=1"]  # one CPU worker, full or LoRA


def policy_images(policy):
    return sample_images(policy, PROMPTS, SEEDS, num_steps=STEPS, shift=3.0, float_images=True)


def pipeline_images(pipe, policy):
    noise = torch.cat([policy.initial_noise(1, torch.Generator().manual_seed(s)) for s in SEEDS])
    with torch.no_grad():
        return pipe(PROMPTS, height=IMAGE_SIZE, width=IMAGE_SIZE, num_inference_steps=STEPS, guidance_scale=3.5,
                    latents=noise, max_sequence_length=SEQ, output_type="pt").images.float()


def fake_run(tmp_path, cfg, state):
    """A run directory holding ``cfg`` and one checkpoint with the trainable weights ``state``."""
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "iter_000003"
    ckpt.mkdir(parents=True)
    (run / "config.yaml").write_text(cfg.to_yaml())
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt / "weights.safetensors"))
    (ckpt / "state.json").write_text(json.dumps({"iteration": 3}))
    return ckpt


def perturb_(params, seed, std):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * std)


def test_export_of_a_tiny_flux_run_samples_the_same_image_in_fluxpipeline(pipe_dir, tmp_path, monkeypatch, capsys):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from mixgrpo_ray.cli.train_cli import main as train_main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["--config", "flux", "--config", "mixgrpo_flash", *flux_overrides(pipe_dir),
            f"data.train={prompts}", f"data.eval={prompts}", "data.prompts_per_iteration=2", "data.eval_prompts=2",
            "grpo.group_size=3", "optim.samples_per_update=3", "optim.lr=1e-3",
            "rollout.num_cpus=0.5", "rollout.num_gpus=0", "rollout.resources=null",
            "learner.num_cpus=0.5", "learner.num_gpus=0", "learner.resources=null",
            "rewards.hps=null", "rewards.imagereward=null", "rewards.pickscore=null",
            "rewards.quality.kind=quality", "rewards.quality.num_cpus=0.25",
            "run.iterations=2", "run.checkpoint_every=0", "run.grid_every=0", "run.grid_prompts=0",
            "run.progress=false", f"run.output_dir={tmp_path / 'runs'}", "run.name=flux", "ray.num_cpus=4"]
    assert train_main(args) == 0
    ckpt = tmp_path / "runs" / "flux" / "checkpoints" / "iter_000002"
    out = tmp_path / "export"
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert "FluxTransformer2DModel" in capsys.readouterr().out
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    card = (out / "README.md").read_text()
    assert str(pipe_dir) in card and "quality" in card and "Held-out rewards" in card
    assert "algorithm: mixgrpo_flash " in card

    cfg = resolve([str(tmp_path / "runs" / "flux" / "config.yaml")])
    policy = load_trained_weights(FluxPolicy.from_model_config(cfg.model, trainable=False), ckpt)
    base = FluxPolicy.from_model_config(cfg.model, trainable=False)
    trained_images = policy_images(policy)
    assert (trained_images - policy_images(base)).abs().max() > 1e-4  # training changed the model

    transformer = FluxTransformer2DModel.from_pretrained(str(out))
    pipe = FluxPipeline.from_pretrained(str(pipe_dir), transformer=transformer)
    torch.testing.assert_close(pipeline_images(pipe, policy), trained_images, rtol=0, atol=1e-4)


def test_lora_export_loads_with_load_lora_weights(pipe_dir, tmp_path):
    from diffusers import FluxPipeline

    cfg = resolve(["flux"], flux_overrides(pipe_dir, lora_rank=4, lora_alpha=8))  # scale 2: metadata matters
    learner = FluxPolicy.from_model_config(cfg.model, trainable=True)
    perturb_(learner.trainable_parameters(), seed=5, std=0.3)
    ckpt = fake_run(tmp_path, cfg, learner.trainable_state_dict())
    out = tmp_path / "lora"
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--no-model-card"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["pytorch_lora_weights.safetensors"]

    policy = load_trained_weights(FluxPolicy.from_model_config(cfg.model, trainable=False), ckpt)
    pipe = FluxPipeline.from_pretrained(str(pipe_dir))
    before = pipeline_images(pipe, policy)
    pipe.load_lora_weights(str(out))
    after = pipeline_images(pipe, policy)
    expected = policy_images(policy)
    assert (before - expected).abs().max() > 1e-3
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-4)


def test_tiny_export_loads_with_from_pretrained(tmp_path):
    cfg = resolve(["tiny"])
    policy = TinyPolicy.from_pretrained()
    perturb_(policy.trainable_parameters(), seed=3, std=0.02)
    ckpt = fake_run(tmp_path, cfg, policy.trainable_state_dict())
    out = tmp_path / "tiny"
    assert cli_main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(out)]) == 0
    loaded = TinyPolicy.from_pretrained(out)
    for k, v in policy.full_state_dict().items():
        assert torch.equal(loaded.full_state_dict()[k], v), k
    kw = dict(num_steps=6, shift=3.0)
    assert torch.equal(sample_images(loaded, PROMPTS, SEEDS, **kw), sample_images(policy, PROMPTS, SEEDS, **kw))
    assert "TinyPolicy.from_pretrained" in (out / "README.md").read_text()
    assert ckpt.name in (out / "README.md").read_text()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["export", "--checkpoint", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixgrpo-ray export: error:") and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())

    policy = TinyPolicy.from_pretrained()
    ckpt = fake_run(tmp_path, resolve(["tiny"]), policy.trainable_state_dict())
    (out / "x").mkdir(parents=True)
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["x"]
    # a config that contradicts the checkpoint (tiny weights, FLUX LoRA config)
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o2"), "model.kind=flux",
                     "model.lora_rank=4"]) == 2
    assert "full weights" in capsys.readouterr().err and not (tmp_path / "o2").exists()
