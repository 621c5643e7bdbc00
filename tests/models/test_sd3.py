"""model.kind=sd3 on a tiny random StableDiffusion3Pipeline folder: the product samples the
pipeline's own image (CLIP-L + CLIP-G + T5 conditioning, the pipeline's schedule, true
classifier-free guidance), trains 2 iterations through ``mixgrpo-ray train`` with LoRA and with
full fine-tuning (disaggregated and colocated; ratio 1 before the first update with guidance on,
both passes counted), and its
export reloads in diffusers' StableDiffusion3Pipeline with the same image."""

import json
import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from mixgrpo_ray.algo.rollout import sample_images  # noqa: E402
from mixgrpo_ray.config import resolve  # noqa: E402
from mixgrpo_ray.models.build import build_policy  # noqa: E402
from tiny_sd3 import IMAGE_SIZE, build_tiny_sd3  # noqa: E402

PROMPTS = ["a red cat", "the dog on the mat"]
STEPS, SEQ = 6, 16


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    return build_tiny_sd3(tmp_path_factory.mktemp("sd3") / "pipe")


def overrides(folder, lora=False):
    return [f"model.path={folder}", f"model.height={IMAGE_SIZE}", f"model.width={IMAGE_SIZE}",
            f"model.max_sequence_length={SEQ}", "model.gradient_checkpointing=false",
            f"model.lora_rank={4 if lora else 0}", f"model.lora_alpha={8 if lora else 0}",
            f"sampling.num_steps={STEPS}", "window.size=2"]


def pipeline_images(folder, noise, exported=None, lora=False, cfg_scale=4.5):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    extra = {} if exported is None or lora else {"transformer": SD3Transformer2DModel.from_pretrained(str(exported))}
    pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), torch_dtype=torch.float32, **extra)
    if lora:
        pipe.load_lora_weights(str(exported))
    with torch.no_grad():
        return pipe(PROMPTS, height=IMAGE_SIZE, width=IMAGE_SIZE, num_inference_steps=STEPS, guidance_scale=cfg_scale,
                    latents=noise, max_sequence_length=SEQ, output_type="pt").images.float()


def ours(policy, cfg_scale=4.5):
    return sample_images(policy, PROMPTS, [0, 1], num_steps=STEPS, cfg_scale=cfg_scale, float_images=True)


def noise_of(policy):
    return torch.cat([policy.initial_noise(1, torch.Generator().manual_seed(s)) for s in (0, 1)])


def test_product_samples_the_pipelines_image_with_guidance_and_its_schedule(sd3_dir):
    from mixgrpo_ray.core.pipeline_schedules import pipeline_sigmas

    cfg = resolve(["sd35"], overrides(sd3_dir))
    policy = build_policy(cfg.model, "cpu", trainable=False)
    assert policy.latent_shape() == (4, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    sched = json.loads((sd3_dir / "scheduler" / "scheduler_config.json").read_text())
    torch.testing.assert_close(policy.sigmas(STEPS, 3.0), pipeline_sigmas("sd3", sched, STEPS, 16))
    for scale in (4.5, 1.0):
        torch.testing.assert_close(ours(policy, scale), pipeline_images(sd3_dir, noise_of(policy), cfg_scale=scale),
                                   rtol=0, atol=1e-5)
    assert (ours(policy, 4.5) - ours(policy, 1.0)).abs().max() > 1e-3  # guidance matters


def test_learner_holds_only_the_transformer_and_lora_targets_the_joint_attention(sd3_dir):
    cfg = resolve(["sd35_lora"], overrides(sd3_dir, lora=True))
    learner = build_policy(cfg.model, "cpu", trainable=True)
    assert learner.vae is None and learner.prompts is None
    names = {n.rsplit(".lora_", 1)[0] for n, p in learner.transformer.named_parameters() if ".lora_A." in n}
    per_block = {n.split(".attn.", 1)[1] for n in names}
    assert per_block == {"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}
    assert len(names) == 8 * 2 - 1  # 2 joint blocks; the last one's text stream has no output projection


def test_presets_and_bad_tail_are_checked():
    from mixgrpo_ray.config import ConfigError

    cfg = resolve(["sd35_lora"], [])
    assert (cfg.model.kind, cfg.model.lora_rank, cfg.learner.strategy, cfg.sampling.cfg_scale) == ("sd3", 32, "replicate", 4.5)
    assert resolve(["sd35"], []).model.lora_rank == 0
    with pytest.raises(ConfigError, match="use sampling.tail=euler"):
        resolve(["sd35", "mixgrpo_flash"], [])


def test_dry_run_on_paper_shows_the_sd3_roles_and_memory(capsys):
    from mixgrpo_ray.cli.train_cli import main as train_main
    from mixgrpo_ray.plan import colocated_plan, memory_plan

    cfg = resolve(["sd35_lora", "mixgrpo"], [])
    rows = colocated_plan.hybrid_rows(cfg, memory_plan.model_size(cfg), "module")
    assert train_main(["--dry-run", "--config", "sd35_lora", "--config", "mixgrpo", "--gpus-per-node", "8"]) == 0
    out = capsys.readouterr().out
    hybrid = next(line for line in out.splitlines() if line.startswith("hybrid "))
    assert "x8" in hybrid and "fp32 LoRA adapters" in hybrid and f"~{sum(v for _, v in rows):.1f} GB" in hybrid
    assert "reward/pickscore" in out and "the run fits" in out


@pytest.mark.parametrize("lora", [True, False], ids=["lora-disaggregated", "full-colocated"])
def test_two_iterations_export_and_reload_in_diffusers(sd3_dir, tmp_path, monkeypatch, lora):
    from mixgrpo_ray.cli import main as cli_main
    from mixgrpo_ray.cli.train_cli import main as train_main
    from mixgrpo_ray.models.flux.flux_policy import load_trained_weights
    from mixgrpo_ray.train.run_dir import RunDir

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["--config", "sd35_lora" if lora else "sd35", "--config", "mixgrpo", *overrides(sd3_dir, lora),
            f"data.train={prompts}", f"data.eval={prompts}", "data.prompts_per_iteration=2", "data.eval_prompts=2",
            "grpo.group_size=3", "optim.samples_per_update=3", "optim.lr=1e-3", f"run.placement={'disaggregated' if lora else 'colocated'}",
            "learner.strategy=replicate", "learner.num_workers=1", "rollout.num_workers=1",
            "rollout.num_cpus=0.5", "rollout.num_gpus=0", "rollout.resources=null", "rollout.prompts_per_call=0",
            "rollout.torch_threads=1", "learner.num_cpus=0.5", "learner.num_gpus=0", "learner.resources=null",
            "learner.torch_threads=1", "rewards.pickscore=null", "rewards.quality.kind=quality",
            "rewards.quality.num_cpus=0.25", "run.iterations=2", "run.checkpoint_every=0", "run.grid_every=0",
            "run.grid_prompts=0", "run.progress=false", f"run.output_dir={tmp_path / 'runs'}", "run.name=sd3",
            "ray.num_cpus=4"]
    assert train_main(args) == 0
    rows = [r for r in RunDir(tmp_path / "runs" / "sd3").read_metrics() if "reward_mean" in r]
    assert [r["iteration"] for r in rows] == [1, 2]
    assert abs(rows[0]["train/first_ratio_mean"] - 1) < 1e-5  # guided: the learner re-evaluates the same velocity
    assert rows[0]["nfe/rollout"] == 2 * STEPS and rows[0]["nfe/policy"] == 2 * 2  # both passes, window of 2
    ckpt = tmp_path / "runs" / "sd3" / "checkpoints" / "iter_000002"
    out = tmp_path / "export"
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert "StableDiffusion3Pipeline" in (out / "README.md").read_text()
    cfg = resolve([str(tmp_path / "runs" / "sd3" / "config.yaml")])
    trained = load_trained_weights(build_policy(cfg.model, "cpu", trainable=False), ckpt)
    base = build_policy(cfg.model, "cpu", trainable=False)
    assert (ours(trained) - ours(base)).abs().max() > 1e-4  # training moved the model
    torch.testing.assert_close(pipeline_images(sd3_dir, noise_of(trained), out, lora), ours(trained), rtol=0, atol=1e-4)
