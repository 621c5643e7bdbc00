"""model.kind=qwen_image on a tiny random QwenImagePipeline folder: the product samples the
pipeline's own image (Qwen2.5-VL conditioning padded with a mask, the pipeline's dynamic-shift
schedule, its norm-rescaled true classifier-free guidance), trains 2 iterations through
``mixgrpo-ray train`` with LoRA and with full fine-tuning (disaggregated and colocated; ratio 1
before the first update with guidance on, both passes counted), and its export reloads in
diffusers' QwenImagePipeline with the same image."""

import json
import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from mixgrpo_ray.algo.rollout import sample_images  # noqa: E402
from mixgrpo_ray.config import resolve  # noqa: E402
from mixgrpo_ray.models.build import build_policy  # noqa: E402
from tiny_qwen_image import IMAGE_SIZE, build_tiny_qwen_image  # noqa: E402

PROMPTS = ["a red cat", "the dog on the mat"]
NEGATIVE = " "
STEPS = 6
SEQ = 160  # the tiny byte-level tokenizer spells the chat template out: the prompt starts ~100 tokens in


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_tiny_qwen_image(tmp_path_factory.mktemp("qwen_image") / "pipe")


def overrides(folder, lora=False, seq=SEQ):
    return [f"model.path={folder}", f"model.height={IMAGE_SIZE}", f"model.width={IMAGE_SIZE}",
            f"model.max_sequence_length={seq}", "model.gradient_checkpointing=false",
            f"model.lora_rank={4 if lora else 0}", f"model.lora_alpha={8 if lora else 0}",
            f"sampling.num_steps={STEPS}", "window.size=2", "sampling.cfg_scale=4.0"]


def pipeline_images(folder, noise, exported=None, lora=False, cfg_scale=4.0, prompts=PROMPTS):
    from diffusers import QwenImagePipeline, QwenImageTransformer2DModel

    extra = {} if exported is None or lora else {"transformer": QwenImageTransformer2DModel.from_pretrained(str(exported))}
    pipe = QwenImagePipeline.from_pretrained(str(folder), torch_dtype=torch.float32, **extra)
    if lora:
        pipe.load_lora_weights(str(exported))
    guidance = {"negative_prompt": NEGATIVE, "true_cfg_scale": cfg_scale} if cfg_scale > 1 else {"true_cfg_scale": 1.0}
    with torch.no_grad():
        return pipe(prompts, height=IMAGE_SIZE, width=IMAGE_SIZE, num_inference_steps=STEPS, latents=noise,
                    max_sequence_length=SEQ, output_type="pt", **guidance).images.float()


def ours(policy, cfg_scale=4.0, prompts=PROMPTS):
    return sample_images(policy, prompts, [0, 1], num_steps=STEPS, cfg_scale=cfg_scale, negative_prompt=NEGATIVE,
                         float_images=True)


def noise_of(policy):
    return torch.cat([policy.initial_noise(1, torch.Generator().manual_seed(s)) for s in (0, 1)])


def test_product_samples_the_pipelines_image_with_its_guidance_and_schedule(qwen_dir):
    from mixgrpo_ray.core.pipeline_schedules import pipeline_sigmas

    cfg = resolve(["qwen_image"], overrides(qwen_dir))
    policy = build_policy(cfg.model, "cpu", trainable=False)
    tokens = (IMAGE_SIZE // 4) ** 2  # VAE scale 2, 2x2 packing
    assert policy.latent_shape() == (tokens, 16)
    sched = json.loads((qwen_dir / "scheduler" / "scheduler_config.json").read_text())
    torch.testing.assert_close(policy.sigmas(STEPS, 3.0), pipeline_sigmas("qwen_image", sched, STEPS, tokens))
    for scale in (4.0, 1.0):
        torch.testing.assert_close(ours(policy, scale), pipeline_images(qwen_dir, noise_of(policy), cfg_scale=scale),
                                   rtol=0, atol=1e-5)
    assert (ours(policy, 4.0) - ours(policy, 1.0)).abs().max() > 1e-3  # guidance matters
    assert (ours(policy, 4.0) - ours(policy, 4.0, PROMPTS[::-1])).abs().max() > 1e-3  # the prompt matters
    # the mask, not the padding, decides: a longer context pads more and gives the same image
    longer = build_policy(resolve(["qwen_image"], overrides(qwen_dir, seq=SEQ + 40)).model, "cpu", trainable=False)
    torch.testing.assert_close(ours(longer), ours(policy), rtol=0, atol=1e-5)
    # the plan counts this folder's own parts on the meta device: its VAE's scale and its encoder
    from mixgrpo_ray.plan.memory_plan import model_size

    size = model_size(cfg)
    assert size.tokens == tokens + SEQ and size.params == sum(p.numel() for p in policy.transformer.parameters())
    assert size.frozen == {"text_encoder": sum(p.numel() for p in policy.prompts.text_encoder.parameters()),
                           "vae": sum(p.numel() for p in policy.vae.parameters())}


def test_guidance_is_rescaled_to_the_conditional_norm_per_token(qwen_dir):
    cfg = resolve(["qwen_image"], overrides(qwen_dir))
    policy = build_policy(cfg.model, "cpu", trainable=True)
    v_c, v_u = torch.randn(2, 16, 16), torch.randn(2, 16, 16)
    scale = torch.tensor([4.0, 2.0]).view(2, 1, 1)
    plain = v_u + scale * (v_c - v_u)
    want = plain * torch.linalg.vector_norm(v_c, dim=2, keepdim=True) / torch.linalg.vector_norm(plain, dim=2, keepdim=True)
    torch.testing.assert_close(policy.guide(v_c, v_u, scale), want)


def test_learner_holds_only_the_transformer_and_lora_targets_attention_and_mlps(qwen_dir):
    cfg = resolve(["qwen_image_lora"], overrides(qwen_dir, lora=True))
    learner = build_policy(cfg.model, "cpu", trainable=True)
    assert learner.vae is None and learner.prompts is None
    names = {n.rsplit(".lora_", 1)[0] for n, p in learner.transformer.named_parameters() if ".lora_A." in n}
    per_block = {n.split(".", 2)[2] for n in names}
    assert per_block == {f"attn.{m}" for m in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                                "add_v_proj", "to_add_out")} | {
        f"{s}_mlp.net.{m}" for s in ("img", "txt") for m in ("0.proj", "2")}
    assert len(names) == 12 * 2


def test_presets_and_bad_tail_are_checked():
    from mixgrpo_ray.config import ConfigError

    cfg = resolve(["qwen_image_lora"], [])
    assert (cfg.model.kind, cfg.model.lora_rank, cfg.model.lora_alpha, cfg.learner.strategy) == ("qwen_image", 64, 128, "replicate")
    assert (cfg.sampling.cfg_scale, cfg.sampling.negative_prompt, cfg.optim.lr) == (4.0, " ", 3e-4)
    full = resolve(["qwen_image"], [])
    assert (full.model.lora_rank, full.learner.strategy, full.run.placement) == (0, "fsdp", "colocated")
    with pytest.raises(ConfigError, match="use sampling.tail=euler"):
        resolve(["qwen_image", "mixgrpo_flash"], [])
    with pytest.raises(ConfigError, match="encodes at most 1024 prompt tokens"):
        resolve(["qwen_image"], ["model.max_sequence_length=2000"])


@pytest.mark.parametrize("preset", ["qwen_image", "qwen_image_lora"])
def test_dry_run_on_paper_shows_the_qwen_image_roles_and_memory(capsys, preset):
    from mixgrpo_ray.cli.train_cli import main as train_main
    from mixgrpo_ray.plan import colocated_plan, memory_plan

    cfg = resolve([preset, "mixgrpo"], [])
    size = memory_plan.model_size(cfg)
    assert abs(size.params / 1e9 - 20.43) < 0.01 and size.blocks == 60 and size.tokens == (512 // 16) ** 2 + 256
    rows = colocated_plan.hybrid_rows(cfg, size, "module" if cfg.model.lora_rank else "copy")
    assert train_main(["--dry-run", "--config", preset, "--config", "mixgrpo", "--gpus-per-node", "8"]) == 0
    out = capsys.readouterr().out
    hybrid = next(line for line in out.splitlines() if line.startswith("hybrid "))
    assert "x8" in hybrid and f"~{sum(v for _, v in rows):.1f} GB" in hybrid
    assert "reward/pickscore" in out and "the run fits" in out


@pytest.mark.parametrize("lora", [True, False], ids=["lora-disaggregated", "full-colocated"])
def test_two_iterations_export_and_reload_in_diffusers(qwen_dir, tmp_path, monkeypatch, lora):
    from mixgrpo_ray.cli import main as cli_main
    from mixgrpo_ray.cli.train_cli import main as train_main
    from mixgrpo_ray.models.flux.flux_policy import load_trained_weights
    from mixgrpo_ray.train.run_dir import RunDir

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["--config", "qwen_image_lora" if lora else "qwen_image", "--config", "mixgrpo", *overrides(qwen_dir, lora),
            f"data.train={prompts}", f"data.eval={prompts}", "data.prompts_per_iteration=2", "data.eval_prompts=2",
            "grpo.group_size=3", "optim.samples_per_update=3", "optim.lr=1e-3",
            f"run.placement={'disaggregated' if lora else 'colocated'}", "learner.strategy=replicate",
            "learner.offload_optimizer=false", "learner.num_workers=1", "rollout.num_workers=1",
            "rollout.num_cpus=0.5", "rollout.num_gpus=0", "rollout.resources=null", "rollout.prompts_per_call=0",
            "rollout.torch_threads=1", "learner.num_cpus=0.5", "learner.num_gpus=0", "learner.resources=null",
            "learner.torch_threads=1", "rewards.pickscore=null", "rewards.quality.kind=quality",
            "rewards.quality.num_cpus=0.25", "run.iterations=2", "run.checkpoint_every=0", "run.grid_every=0",
            "run.grid_prompts=0", "run.progress=false", f"run.output_dir={tmp_path / 'runs'}", "run.name=qwen",
            "ray.num_cpus=4"]
    assert train_main(args) == 0
    rows = [r for r in RunDir(tmp_path / "runs" / "qwen").read_metrics() if "reward_mean" in r]
    assert [r["iteration"] for r in rows] == [1, 2]
    assert abs(rows[0]["train/first_ratio_mean"] - 1) < 1e-5  # guided: the learner re-evaluates the same velocity
    assert rows[0]["nfe/rollout"] == 2 * STEPS and rows[0]["nfe/policy"] == 2 * 2  # both passes, window of 2
    ckpt = tmp_path / "runs" / "qwen" / "checkpoints" / "iter_000002"
    out = tmp_path / "export"
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert "QwenImagePipeline" in (out / "README.md").read_text()
    cfg = resolve([str(tmp_path / "runs" / "qwen" / "config.yaml")])
    trained = load_trained_weights(build_policy(cfg.model, "cpu", trainable=False), ckpt)
    base = build_policy(cfg.model, "cpu", trainable=False)
    assert (ours(trained) - ours(base)).abs().max() > 1e-4  # training moved the model
    torch.testing.assert_close(pipeline_images(qwen_dir, noise_of(trained), out, lora), ours(trained), rtol=0, atol=1e-4)


@pytest.mark.parametrize("preset", ["qwen_image", "qwen_image_lora"])
def test_readme_plan_table_is_todays_plan(preset):
    from mixgrpo_ray.plan import colocated_plan, memory_plan
    from repo_paths import ROOT

    cfg = resolve([preset, "mixgrpo"], [])
    size = memory_plan.model_size(cfg)
    rows = colocated_plan.hybrid_rows(cfg, size, "module" if cfg.model.lora_rank else "copy")
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(f"| `{preset}` | colocated"))
    assert float(row.split("|")[4]) == pytest.approx(sum(v for _, v in rows), abs=0.006)
