"""The embedded tiny policy: interface, FLUX packing, shipped weights, pre-training, sampling CLI."""

import json
import os
import subprocess
import sys

import pytest
import torch
from diffusers import FluxTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

from mixgrpo_ray.models.flux import common as flux_common
from mixgrpo_ray.models.policy import Policy, cond_repeat
from mixgrpo_ray.models.tiny import task
from mixgrpo_ray.eval.tiny_scores import sample_prompts
from mixgrpo_ray.models.tiny.model import ASSET_DIR, TinyConfig, TinyPolicy
from mixgrpo_ray.models.tiny.rewards import PromptFollowingReward, QualityReward
from repo_paths import ROOT



@pytest.fixture(scope="module")
def base():
    return TinyPolicy.from_pretrained()




# ------------------------------------------------------------------------------ flux_common
def test_packing_matches_the_flux_pipeline():
    x = torch.randn(2, 16, 8, 12)
    packed = flux_common.pack_latents(x, 2)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 16, 8, 12))
    assert torch.equal(flux_common.unpack_latents(packed, 16, 8, 12, 2), x)
    ids = FluxPipeline._prepare_latent_image_ids(2, 4, 6, "cpu", torch.float32)
    assert torch.equal(flux_common.image_ids(4, 6), ids)
    assert torch.equal(flux_common.text_ids(5), torch.zeros(5, 3))
    y = torch.randn(3, 3, 32, 32)
    assert torch.equal(flux_common.unpack_latents(flux_common.pack_latents(y, 8), 3, 32, 32, 8), y)
    with pytest.raises(ValueError, match="divisible"):
        flux_common.pack_latents(torch.randn(1, 3, 30, 32), 8)


def test_flux_forward_checks_sigma_and_guidance():
    policy = TinyPolicy(seed=0)
    cond = policy.encode_prompts(["a small red circle on a white background, center"])
    tokens = flux_common.pack_latents(torch.randn(1, 3, 32, 32), 8)
    args = (cond["encoder_hidden_states"], cond["pooled_projections"], policy._img_ids, policy._txt_ids)
    with pytest.raises(ValueError, match="sigma"):
        flux_common.flux_forward(policy.transformer, tokens, torch.tensor([0.5, 0.5]), *args)
    with pytest.raises(ValueError, match="no guidance"):
        flux_common.flux_forward(policy.transformer, tokens, torch.tensor([0.5]), *args, guidance=3.5)
    # conditioning rounds sigma down when asked: 0.5004 and 0.5 then give the same output
    with torch.no_grad():
        a = flux_common.flux_forward(policy.transformer, tokens, torch.tensor([0.5004]), *args, timestep_decimals=3)
        b = flux_common.flux_forward(policy.transformer, tokens, torch.tensor([0.5]), *args)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------ interface
def test_policy_interface_shapes_and_dtypes():
    policy = TinyPolicy(seed=0)
    assert isinstance(policy, Policy) and policy.name == "tiny"
    assert isinstance(policy.transformer, FluxTransformer2DModel)
    assert policy.latent_shape() == (3, 32, 32)
    prompts = task.eval_prompts()[:3]
    cond = policy.encode_prompts(prompts)
    assert cond["encoder_hidden_states"].shape == (3, 4, 64) and cond["pooled_projections"].shape == (3, 64)
    assert all(v.dtype == torch.float32 and not v.requires_grad for v in cond.values())
    cond = cond_repeat(cond, 2)
    x = policy.initial_noise(6, torch.Generator().manual_seed(0))
    sigma = torch.linspace(1.0, 0.1, 6)
    with torch.no_grad():
        v = policy.velocity(x, sigma, cond)
        x0 = policy.predict_x0(x, sigma, cond)
    assert v.dtype == torch.float32 and v.shape == x.shape and torch.isfinite(v).all()
    assert torch.allclose(x - sigma.view(-1, 1, 1, 1) * v, x0, atol=1e-5)  # x0_hat = x - sigma v
    images = policy.decode(x)
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    with pytest.raises(ValueError, match="latents"):
        policy.velocity(torch.zeros(1, 3, 16, 16), torch.ones(1), policy.encode_prompts(prompts[:1]))


def test_only_the_transformer_is_trainable():
    policy = TinyPolicy(seed=0)
    trainable = list(policy.trainable_parameters())
    assert {id(p) for p in trainable} == {id(p) for p in policy.transformer.parameters()}
    assert not any(p.requires_grad for p in policy.text_encoder.parameters())
    x = policy.initial_noise(2)
    cond = policy.encode_prompts(task.eval_prompts()[:2])
    policy.velocity(x, torch.full((2,), 0.7), cond).square().mean().backward()
    assert all(p.grad is not None for p in trainable if p.requires_grad)
    assert policy.train() is policy and policy.transformer.training
    assert not policy.text_encoder.training
    policy.train(False)
    assert not policy.transformer.training


def test_state_dict_round_trip_and_validation():
    a, b = TinyPolicy(seed=1), TinyPolicy(seed=2)
    x = a.initial_noise(2, torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.9, 0.3])
    with torch.no_grad():
        cond = a.encode_prompts(task.eval_prompts()[:2])
        va, vb = a.velocity(x, sigma, cond), b.velocity(x, sigma, cond)
        assert not torch.allclose(va, vb)
        state = a.trainable_state_dict()
        assert all(t.device.type == "cpu" and not t.requires_grad for t in state.values())
        b.load_trainable_state_dict(state)
        assert torch.equal(b.velocity(x, sigma, cond), va)
    state["proj_out.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match="proj_out.bias"):
        b.load_trainable_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        b.load_trainable_state_dict({})


def test_random_init_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = TinyPolicy(seed=5)
    assert torch.equal(torch.rand(3), expected)
    b = TinyPolicy(seed=5)
    assert all(torch.equal(a.trainable_state_dict()[k], v) for k, v in b.trainable_state_dict().items())


def test_tokenizer_handles_unknown_and_long_prompts():
    policy = TinyPolicy(seed=0)
    ids = policy.tokenize(["zebra circle", " ".join(["red"] * 40)])
    assert ids.shape == (2, policy.config.max_words)
    assert ids[0, :3].tolist() == [2, 1, policy.config.vocabulary.index("circle")]  # <bos> <unk> circle
    assert (ids[1] != 0).all()  # truncated to fit, no padding
    cond = policy.encode_prompts(["", "zebra"])
    assert all(torch.isfinite(v).all() for v in cond.values())


# ------------------------------------------------------------------------------ shipped weights
def test_shipped_weights_are_small_and_documented():
    weights = ASSET_DIR / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 10 * 1024 * 1024
    meta = json.loads((ASSET_DIR / "config.json").read_text())
    assert TinyConfig.from_dict(meta["model"]) == TinyConfig()
    assert meta["pretraining"]["command"].startswith("mixgrpo-ray pretrain-tiny")
    assert meta["pretraining"]["train_seconds"] < 30 * 60


def test_shipped_weights_load_offline():
    code = (
        "import torch; from mixgrpo_ray.models.tiny.model import TinyPolicy; p = TinyPolicy.from_pretrained(); "
        "c = p.encode_prompts(['a small red circle on a white background, top left']); "
        "v = p.velocity(p.initial_noise(1), torch.ones(1), c); assert torch.isfinite(v).all(); print('ok')"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_from_pretrained_reports_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        TinyPolicy.from_pretrained(tmp_path)


def test_base_model_is_mediocre_on_held_out_prompts(base, one_thread):
    """Base prompt-following is clearly above a random model and clearly below ground truth."""
    prompts = task.eval_prompts()
    reward = PromptFollowingReward()
    gt_images = task.render(list(task.eval_attributes()), generator=torch.Generator().manual_seed(0))
    base_images = sample_prompts(base, prompts, seed=0)
    random_images = sample_prompts(TinyPolicy(seed=0), prompts, seed=0)
    scores = {name: reward(images, prompts) for name, images in
              (("random", random_images), ("base", base_images), ("gt", gt_images))}  # fmt: skip
    mean = {k: v.mean().item() for k, v in scores.items()}
    sem = {k: v.std().item() / len(prompts) ** 0.5 for k, v in scores.items()}
    assert mean["base"] - mean["random"] > max(0.2, 5 * (sem["base"] + sem["random"])), (mean, sem)
    assert mean["gt"] - mean["base"] > max(0.2, 5 * (sem["gt"] + sem["base"])), (mean, sem)
    # the base images are cleaner than noise but not as clean as the ground truth
    quality = QualityReward()
    q_base, q_gt = quality(base_images, prompts).mean(), quality(gt_images, prompts).mean()
    assert quality(random_images, prompts).mean() + 0.2 < q_base < q_gt - 0.05


def test_velocity_is_fast_enough_for_rollouts(base, one_thread):
    import time

    cond = cond_repeat(base.encode_prompts(task.eval_prompts()[:8]), 8)
    x = base.initial_noise(64)
    sigma = torch.full((64,), 0.5)
    best = float("inf")
    with torch.no_grad():
        base.velocity(x, sigma, cond)
        for _ in range(5):
            start = time.perf_counter()
            base.velocity(x, sigma, cond)
            best = min(best, time.perf_counter() - start)
    assert best < 0.06  # ~15-20 ms on one core of the dev machine; generous for shared CPUs


# ------------------------------------------------------------------------------ pre-training
def test_pretraining_runs_reproducibly_and_the_result_loads(tmp_path, capsys):
    from mixgrpo_ray.cli import pretrain_tiny_cli as pretrain

    args = ["--steps", "3", "--batch-size", "4", "--warmup", "1", "--no-eval", "--quiet", "--seed", "7"]
    assert pretrain.main(["--out", str(tmp_path / "a"), *args]) == 0
    assert pretrain.main(["--out", str(tmp_path / "b"), *args]) == 0
    a, b = TinyPolicy.from_pretrained(tmp_path / "a"), TinyPolicy.from_pretrained(tmp_path / "b")
    fresh = TinyPolicy(seed=7)
    for k, v in a.full_state_dict().items():
        assert torch.equal(v, b.full_state_dict()[k]), k
    changed = [k for k, v in a.trainable_state_dict().items() if not torch.equal(v, fresh.trainable_state_dict()[k])]
    assert changed  # the steps did update the transformer
    text_changed = any(not torch.equal(p, q) for p, q in zip(a.text_encoder.parameters(), fresh.text_encoder.parameters()))
    assert text_changed  # and the text encoder, trained jointly
    meta = json.loads((tmp_path / "a" / "config.json").read_text())
    assert meta["pretraining"]["options"]["steps"] == 3


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--steps", "0"], "--steps"),
        (["--lr", "-1"], "--lr"),
        (["--batch-size", "x"], "invalid int"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_pretraining_rejects_bad_input_with_one_line(tmp_path, capsys, argv, message):
    from mixgrpo_ray.cli import pretrain_tiny_cli as pretrain

    assert pretrain.main(["--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------ sample grid CLI
def test_sample_grid_writes_a_png_and_loads_checkpoints(tmp_path, capsys, base):
    from PIL import Image
    from safetensors.torch import save_file

    from mixgrpo_ray.cli import sample_cli

    ckpt = tmp_path / "trainable.safetensors"
    save_file(TinyPolicy(seed=3).trainable_state_dict(), str(ckpt))
    out = tmp_path / "grid.png"
    argv = ["--out", str(out), "--num", "4", "--steps", "3", "--score"]
    assert sample_cli.main(argv) == 0
    base_png = out.read_bytes()
    assert "prompt_following:" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.width >= 2 * 32 * 4 and img.height >= 2 * 32 * 4
    assert sample_cli.main([*argv, "--checkpoint", str(ckpt)]) == 0
    assert out.read_bytes() != base_png
    assert sample_cli.main(["--out", str(out), "-p", "a large blue square on a black background, center",
                             "--steps", "2"]) == 0  # fmt: skip


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--checkpoint", "/nonexistent.safetensors"], "--checkpoint"),
        (["--steps", "0"], "--steps"),
        (["--prompts-file", "/nonexistent.txt"], "--prompts-file"),
    ],
)
def test_sample_grid_rejects_bad_input_with_one_line(tmp_path, capsys, argv, message):
    from mixgrpo_ray.cli import sample_cli

    assert sample_cli.main(["--out", str(tmp_path / "g.png"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_image_grid_layout():
    from mixgrpo_ray.common.images import image_grid

    images = torch.rand(6, 3, 32, 32)
    grid = image_grid(images, captions=["a long caption that has to wrap over several lines"] * 6,
                      title="title", columns=3, row_labels=["base", "trained"], scale=2)  # fmt: skip
    assert grid.mode == "RGB" and grid.width > 3 * 64 and grid.height > 2 * 64
    with pytest.raises(ValueError, match="captions"):
        image_grid(images, captions=["x"])
    with pytest.raises(ValueError, match="row labels"):
        image_grid(images, columns=3, row_labels=["only one"])
