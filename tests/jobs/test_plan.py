"""mixgrpo-ray plan: the per-role memory table, the smallest learner count for full fine-tuning,
and train refusing a learner that cannot fit before any actor starts."""

import re

import pytest

from mixgrpo_ray.cli import main
from mixgrpo_ray.config import resolve
from mixgrpo_ray.plan import memory_plan as plan
from mixgrpo_ray.plan.plan_report import check_learner_fits


def _gb(text, item):
    return float(re.search(rf"{re.escape(item)}\s+([\d.]+)", text).group(1))


def test_flux_full_fine_tuning_fits_eight_fsdp_learners(capsys):
    dis = ["--config", "flux", "--config", "flux_disaggregated"]
    assert main(["plan", *dis, "--gpus-per-node", "8", "--gpu-memory-gb", "80"]) == 0
    out = capsys.readouterr().out
    size = plan.model_size(resolve(["flux"], []))
    assert 11.8e9 < size.params < 12.0e9 and size.blocks == 57 and size.tokens == 45 * 45 + 512
    # the formulas of mixgrpo_ray/plan/memory_plan.py: fp32 weights / 8 ranks, AdamW twice that
    assert _gb(out, "weights fp32 (shard)") == pytest.approx(4 * size.params / 8 / 1e9, abs=0.01)
    assert _gb(out, "AdamW state fp32 (shard)") == pytest.approx(8 * size.params / 8 / 1e9, abs=0.01)
    learner_total = float(re.search(r"learner rank \(fsdp, 8.*?total\s+([\d.]+)\s+fits", out, re.S).group(1))
    assert learner_total < 0.9 * 80
    assert "smallest learner count that fits is 4" in out
    assert "GPUs: learners 8 + rollout 1 + rewards 3 = 12 of 8: needs 2 node(s) of 8 (--nodes)" in out
    # without sharding the same learner needs > 190 GB and does not fit
    assert main(["plan", *dis, "learner.strategy=replicate"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_the_paper_run_fits_one_8_gpu_node_colocated_with_both_layouts_timed(capsys):
    assert main(["plan", "--config", "flux", "--gpus-per-node", "8", "--gpu-memory-gb", "80"]) == 0
    out = capsys.readouterr().out
    size = plan.model_size(resolve(["flux"], []))
    assert "placement: colocated" in out
    hybrid_total = float(re.search(r"hybrid worker \(fsdp, 8 worker\(s\), sampling on the copy\).*?total\s+([\d.]+)\s+fits",
                                   out, re.S).group(1))
    # throughout: the fp32 weight and AdamW shards and a bf16 copy (2 B per parameter); T5 and the
    # VAE wait in host memory; the largest phase is training's (gradient shard, gathered blocks,
    # activations), which is larger than T5 alone on the GPU while encoding
    assert _gb(out, "sampling copy (compute dtype)") == pytest.approx(2 * size.params / 1e9, abs=0.01)
    training = 4 * size.params / 8 + 2 * 2 * size.block_max + 4 * size.block_max
    assert _gb(out, "largest phase: training") > training / 1e9
    assert _gb(out, "largest phase: training") > 2 * size.frozen["text_encoder_2"] / 1e9
    shards = 12 * size.params / 8 / 1e9
    assert hybrid_total == pytest.approx(shards + 2 * size.params / 1e9 + _gb(out, "largest phase: training") + 3,
                                         abs=0.02)
    assert hybrid_total + 6.9 <= 0.9 * 80  # and the largest reward replica beside it
    assert re.search(r"sampling on the module:\s+[\d.]+ GB per worker, sampling weights moved\s+[\d.]+ GB", out)
    assert re.search(r"GPUs: hybrid workers 8 x 0.9 \+ rewards 0.3 .* = 8 of 8 GPUs: fits one node", out)
    colo = float(re.search(r"s/iteration \(colocated\):\s+([\d.]+) s", out).group(1))
    dis = float(re.search(r"s/iteration \(disaggregated\):\s+([\d.]+) s", out).group(1))
    assert 0 < colo < dis  # every GPU samples and trains, instead of 3 sampling while 4 train
    assert "3 rollout GPU(s) sample, then 4 learner GPU(s) train (1 reward GPU(s))" in out
    # the estimate scales with the assumed GPU speed, and a bad speed is one line
    assert main(["plan", "--config", "flux", "--gpu-tflops", "800"]) == 0
    fast = float(re.search(r"s/iteration \(colocated\):\s+([\d.]+) s", capsys.readouterr().out).group(1))
    assert fast == pytest.approx(colo / 2, abs=0.1)
    assert main(["plan", "--config", "flux", "--gpu-tflops", "0"]) == 2
    assert capsys.readouterr().err.strip() == ("mixgrpo-ray plan: error: --gpu-tflops must be > 0 (sustained TFLOP/s "
                                               "of one GPU), got 0")


def test_flops_per_image_step_are_a_real_forwards():
    """The estimate's cost of one image-step, counted on the meta device, equals torch's FLOP
    counter on a real CPU forward (attention computed by matmuls) of the same diffusers FLUX transformer (small width, both block
    kinds, FLUX's token counts of image and prompt); FLUX.1-dev's lies between P T and 2 P T FLOPs
    (2 P T would apply every weight to every token, but a double-stream block's weights each see
    one stream and the modulation layers see one vector per image)."""
    import torch
    from diffusers import FluxTransformer2DModel

    from mixgrpo_ray.plan.iteration_time import flops_per_image_step

    config = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=32,
                  num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True,
                  axes_dims_rope=(8, 12, 12))
    real = FluxTransformer2DModel(**config).eval()
    with torch.device("meta"):
        meta = FluxTransformer2DModel(**config)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):  # attention as matmuls the counter sees (its CPU kernel it does not)
        counted_real = plan.forward_flops(real, 256, 64)
    assert counted_real == plan.forward_flops(meta, 256, 64) > 0
    flux = plan.model_size(resolve(["flux"], []))
    assert flux.params * flux.tokens < flops_per_image_step(flux) < 2 * flux.params * flux.tokens
    tiny = plan.model_size(resolve(None, ["model.path=random"]))
    assert flops_per_image_step(tiny) > 0



def test_tiny_sizes_are_counted_from_the_model():
    from mixgrpo_ray.models.tiny.model import TinyPolicy

    cfg = resolve(None, [])
    real = sum(p.numel() for p in TinyPolicy(seed=0).transformer.parameters())
    assert plan.model_size(cfg).params == real
    assert check_learner_fits(cfg) is None  # no GPU asked for: nothing to check
    on = plan.activation_bytes(cfg, plan.model_size(cfg), True)
    assert on < plan.activation_bytes(cfg, plan.model_size(cfg), False)


def test_train_refuses_a_learner_that_cannot_fit(capsys):
    colocated = ["train", "--config", "flux", "learner.strategy=replicate"]
    assert main(colocated) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a hybrid worker needs" in err and "allows 72.0 GB" in err
    args = ["train", "--config", "flux", "--config", "flux_disaggregated", "learner.strategy=replicate",
            "learner.num_workers=1", "optim.samples_per_update=3"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "learner.gpu_memory_gb=80 allows 72.0 GB" in err and "learner.num_workers>=4" in err
    assert main(["plan", "--nodes", "0"]) == 2
