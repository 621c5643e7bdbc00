"""The real-width FLUX slice (``python -m mixgrpo_ray.models.flux.flux_slice``): FLUX.1-dev's
shapes with one block of each kind, a FluxPipeline folder that the product's loader and
diffusers' ``FluxPipeline`` both load, and that sample the same image from the same noise."""

import json
import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from mixgrpo_ray.algo.rollout import sample_images  # noqa: E402
from mixgrpo_ray.config import resolve  # noqa: E402
from mixgrpo_ray.models.flux import flux_slice  # noqa: E402
from mixgrpo_ray.models.flux.flux_policy import FluxPolicy  # noqa: E402

SIZE, SEQ, STEPS = 32, 16, 2  # 32x32 images: a 4x4x16 latent, 4 packed tokens of 64 channels


@pytest.fixture(scope="module")
def slice_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("slice") / "flux-slice"
    assert flux_slice.main([str(out), "--seed", "3"]) == 0
    return out


def _config(slice_dir, sub):
    name = "config.json"
    return json.loads((slice_dir / sub / name).read_text())


def test_the_slice_has_flux_dev_shapes(slice_dir):
    tr = _config(slice_dir, "transformer")
    assert (tr["num_layers"], tr["num_single_layers"]) == (1, 1)
    assert tr["num_attention_heads"] * tr["attention_head_dim"] == 3072 and tr["num_attention_heads"] == 24
    assert (tr["joint_attention_dim"], tr["pooled_projection_dim"], tr["in_channels"]) == (4096, 768, 64)
    assert list(tr["axes_dims_rope"]) == [16, 56, 56] and tr["guidance_embeds"] is True
    t5, clip, vae = (_config(slice_dir, s) for s in ("text_encoder_2", "text_encoder", "vae"))
    assert (t5["d_model"], t5["d_ff"], t5["num_heads"], t5["num_layers"]) == (4096, 10240, 64, 1)
    assert (clip["hidden_size"], clip["projection_dim"], clip["num_hidden_layers"]) == (768, 768, 1)
    assert vae["latent_channels"] == 16 and list(vae["block_out_channels"]) == [128, 256, 512, 512]
    # one double-stream and one single-stream block of the 12B model's: its parameters minus 18 + 37 blocks
    from mixgrpo_ray.plan import memory_plan

    full = memory_plan.model_size(resolve(["flux"], []))
    sliced = memory_plan.model_size(resolve(["flux"], [f"model.path={slice_dir}"]))
    assert sliced.hidden == full.hidden == 3072 and sliced.blocks == 2
    assert sliced.block_max == full.block_max
    assert 0.5e9 < sliced.params < 0.6e9 and sliced.frozen["vae"] == pytest.approx(83.82e6, rel=1e-3)


def test_product_and_diffusers_sample_the_same_image(slice_dir):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    cfg = resolve(["flux"], [f"model.path={slice_dir}", f"model.height={SIZE}", f"model.width={SIZE}",
                             f"model.max_sequence_length={SEQ}", "model.gradient_checkpointing=false"])
    policy = FluxPolicy.from_model_config(cfg.model, trainable=False)
    prompts, seeds = ["a red cat on a mat"], [0]
    ours = sample_images(policy, prompts, seeds, num_steps=STEPS, shift=3.0, float_images=True)
    pipe = FluxPipeline.from_pretrained(str(slice_dir), torch_dtype=torch.float32,
                                        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    noise = torch.cat([policy.initial_noise(1, torch.Generator().manual_seed(s)) for s in seeds])
    with torch.no_grad():
        theirs = pipe(prompts, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=3.5,
                      latents=noise, max_sequence_length=SEQ, output_type="pt").images.float()
    assert ours.shape == theirs.shape == (1, 3, SIZE, SIZE)
    assert ours.std() > 1e-3  # not a constant image
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)


def test_bad_arguments_exit_2_writing_nothing(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("")
    assert flux_slice.main([str(taken)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert flux_slice.main([str(tmp_path / "new"), "--double", "0", "--single", "0"]) == 2
    assert "at least one transformer block" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
