"""docs/algorithm.md §2.1: each pipeline's sigma schedule, restated in
mixgrpo_ray/core/pipeline_schedules.py, against diffusers' FlowMatchEulerDiscreteScheduler driven
the way StableDiffusion3Pipeline, FluxPipeline and QwenImagePipeline drive it."""

import math

import numpy as np
import pytest
import torch

from mixgrpo_ray.core.pipeline_schedules import calculate_mu, pipeline_sigmas
from mixgrpo_ray.models.flux.flux_slice import FLUX_DEV_SCHEDULER

SD35 = {"num_train_timesteps": 1000, "shift": 3.0}  # SD3.5 Medium / Large
QWEN = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": True, "base_image_seq_len": 256,
        "max_image_seq_len": 8192, "base_shift": 0.5, "max_shift": 0.9, "shift_terminal": 0.02,
        "time_shift_type": "exponential"}


def scheduler(config):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**config)


def sd3_reference(config, steps, seq):
    """StableDiffusion3Pipeline: set_timesteps(N), with mu when the scheduler shifts dynamically."""
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    s = scheduler(config)
    kwargs = {}
    if s.config.get("use_dynamic_shifting"):
        kwargs["mu"] = calculate_shift(seq, s.config.get("base_image_seq_len", 256), s.config.get("max_image_seq_len", 4096),
                                       s.config.get("base_shift", 0.5), s.config.get("max_shift", 1.16))
    s.set_timesteps(steps, **kwargs)
    return s.sigmas


def flux_reference(config, steps, seq):
    """FluxPipeline / QwenImagePipeline: sigmas = linspace(1, 1/N, N) and mu from the token count."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    s = scheduler(config)
    mu = calculate_shift(seq, s.config.get("base_image_seq_len", 256), s.config.get("max_image_seq_len", 4096),
                         s.config.get("base_shift", 0.5), s.config.get("max_shift", 1.15))
    s.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return s.sigmas


@pytest.mark.parametrize("steps", [1, 4, 10, 28])
@pytest.mark.parametrize("config", [SD35, {**SD35, "shift": 1.0}, dict(QWEN, shift_terminal=None)])
def test_sd3_schedule_is_the_pipelines(config, steps):
    seq = 4096  # 1024x1024: 128x128 latent in 2x2 patches
    ours = pipeline_sigmas("sd3", config, steps, seq)
    assert ours.shape == (steps + 1,) and ours[-1] == 0
    torch.testing.assert_close(ours, sd3_reference(config, steps, seq).float(), rtol=0, atol=2e-6)


@pytest.mark.parametrize("steps", [1, 4, 25, 50])
@pytest.mark.parametrize("seq", [64, 1024, 4096, 6400])
@pytest.mark.parametrize("name", ["qwen", "flux", "linear"])
def test_flux_and_qwen_image_schedules_are_the_pipelines(name, seq, steps):
    config = {"qwen": QWEN, "flux": FLUX_DEV_SCHEDULER, "linear": dict(QWEN, time_shift_type="linear", max_shift=1.2)}[name]
    pipeline = "flux" if name == "flux" else "qwen_image"
    if steps == 1 and config.get("shift_terminal"):
        with pytest.raises(ValueError, match="shift_terminal needs at least 2 steps"):
            pipeline_sigmas(pipeline, config, steps, seq)  # diffusers' own answer is NaN
        return
    ours = pipeline_sigmas(pipeline, config, steps, seq)
    assert ours[-1] == 0 and bool((ours[:-1] > ours[1:]).all())
    torch.testing.assert_close(ours, flux_reference(config, steps, seq).float(), rtol=0, atol=2e-6)
    if name == "qwen":
        assert ours[-2] == pytest.approx(0.02, abs=1e-6)  # stretched to its terminal sigma


def test_qwen_image_shifts_more_for_larger_images_and_mu_is_linear():
    small, large = (pipeline_sigmas("qwen_image", QWEN, 20, seq)[10] for seq in (256, 8192))
    assert large > small  # more tokens: more steps spent at high noise
    assert calculate_mu(256, 256, 8192, 0.5, 0.9) == pytest.approx(0.5)
    assert calculate_mu(8192, 256, 8192, 0.5, 0.9) == pytest.approx(0.9)
    assert math.isclose(calculate_mu(4224, 256, 8192, 0.5, 0.9), 0.7)


def test_unknown_pipeline_and_unsupported_options_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown pipeline 'sdxl'"):
        pipeline_sigmas("sdxl", SD35, 4, 64)
    with pytest.raises(ValueError, match="use_karras_sigmas are not supported"):
        pipeline_sigmas("sd3", dict(SD35, use_karras_sigmas=True), 4, 64)
