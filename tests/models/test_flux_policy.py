"""FluxPolicy on tiny random FLUX components saved in the FluxPipeline layout (offline, CPU)."""

import pytest

from mixgrpo_ray.common.checkpoint import CheckpointError
import torch
from safetensors.torch import save_file

from mixgrpo_ray.algo.update import GRPOTrainer, update_assignment
from mixgrpo_ray.config import GRPOConfig, OptimConfig, SamplingConfig
from mixgrpo_ray.config import ModelConfig, resolve
from mixgrpo_ray.models.flux.flux_policy import FluxPolicy, load_for_mixed_sampling, load_trained_weights
from mixgrpo_ray.models.flux.text import FluxPromptEncoder
from mixgrpo_ray.models.build import build_policy
from mixgrpo_ray.models.policy import Policy
from mixgrpo_ray.algo.rollout import sample_groups, sample_images
from tiny_flux import IMAGE_SIZE, LATENT_CHANNELS, build_tiny_flux

PROMPTS = ["a red cat", "the dog on the mat"]
SEQ = 12  # T5 tokens


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return build_tiny_flux(tmp_path_factory.mktemp("flux"))


def model_cfg(flux_dir, **kw) -> ModelConfig:
    base = dict(kind="flux", path=str(flux_dir), height=IMAGE_SIZE, width=IMAGE_SIZE, max_sequence_length=SEQ)
    base.update(kw)
    return ModelConfig(**base)


def load(flux_dir, trainable=False, **kw) -> FluxPolicy:
    return FluxPolicy.from_model_config(model_cfg(flux_dir, **kw), device="cpu", trainable=trainable)


@pytest.fixture(scope="module")
def rollout(flux_dir):
    """Groups of 3 images for two prompts, window [0, 1] of a 6-step schedule."""
    policy = load(flux_dir)
    return sample_groups(policy, PROMPTS, 3, [0, 1], SamplingConfig(num_steps=6), GRPOConfig(), seed=0)


def perturb_(params, seed: int, std: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * std)


def reference_pipeline(flux_dir):
    """diffusers' own FluxPipeline on components loaded independently of the policy."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    d = str(flux_dir)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=AutoencoderKL.from_pretrained(d, subfolder="vae"),
        text_encoder=CLIPTextModel.from_pretrained(d, subfolder="text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(d, subfolder="tokenizer"),
        text_encoder_2=T5EncoderModel.from_pretrained(d, subfolder="text_encoder_2"),
        tokenizer_2=T5TokenizerFast.from_pretrained(d, subfolder="tokenizer_2"),
        transformer=FluxTransformer2DModel.from_pretrained(d, subfolder="transformer"),
    )


# ------------------------------------------------------------------------------ interface
def test_interface_shapes_dtypes_and_frozen_parts(flux_dir):
    policy = build_policy(model_cfg(flux_dir), "cpu", trainable=False)
    assert isinstance(policy, FluxPolicy) and isinstance(policy, Policy) and policy.name == "flux"
    lat = IMAGE_SIZE // 2  # tiny VAE scale factor 2
    assert policy.latent_shape() == ((lat // 2) ** 2, 4 * LATENT_CHANNELS)
    x = policy.initial_noise(3, torch.Generator().manual_seed(1))
    assert x.shape == (3, *policy.latent_shape()) and x.dtype == torch.float32
    cond = policy.encode_prompts(PROMPTS + PROMPTS[:1])
    assert cond["encoder_hidden_states"].shape == (3, SEQ, 16)
    assert cond["pooled_projections"].shape == (3, 24)
    v = policy.velocity(x, torch.tensor([1.0, 0.5, 0.1]), cond)
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    img = policy.decode(x)
    assert img.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE) and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0 and float(img.std()) > 0.01
    # rollout policy: nothing requires grad; text encoders and VAE frozen in eval mode
    assert not any(p.requires_grad for p in policy.transformer.parameters())
    for module in (policy.vae, policy.prompts.text_encoder, policy.prompts.text_encoder_2):
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    with pytest.raises(ValueError, match="latents must be"):
        policy.velocity(x[:, :4], torch.ones(3), cond)


def test_learner_policy_trains_the_whole_transformer_in_fp32(flux_dir):
    policy = load(flux_dir, trainable=True)
    params = list(policy.trainable_parameters())
    assert len(params) == len(list(policy.transformer.parameters()))
    assert all(p.requires_grad and p.dtype == torch.float32 for p in params)
    state = policy.trainable_state_dict()
    assert set(state) == set(policy.transformer.state_dict())
    assert all(v.device.type == "cpu" for v in state.values())
    policy.train(True)
    assert policy.transformer.training


def test_learner_policy_holds_neither_text_encoders_nor_vae(flux_dir, rollout, monkeypatch):
    """A learner loads the transformer alone (and only the configs of the rest): no T5/CLIP, no
    VAE; encode_prompts and decode say why they cannot run."""
    import transformers
    from diffusers import AutoencoderKL

    from mixgrpo_ray.models.flux.flux_policy import FrozenPartsNotLoaded

    latent_shape = load(flux_dir).latent_shape()
    loads = []
    for cls in (transformers.T5EncoderModel, transformers.CLIPTextModel, AutoencoderKL):
        original = cls.from_pretrained.__func__
        monkeypatch.setattr(cls, "from_pretrained",
                            classmethod(lambda klass, *a, _o=original, **kw: loads.append(klass) or _o(klass, *a, **kw)))
    for lora_rank in (0, 4):
        learner = build_policy(model_cfg(flux_dir, lora_rank=lora_rank), "cpu", trainable=True)
        assert learner.prompts is None and learner.vae is None and not loads
        modules = {type(m).__name__ for m in learner.transformer.modules()}
        assert not modules & {"T5EncoderModel", "CLIPTextModel", "AutoencoderKL"}
        # the latent layout still comes from the VAE's config
        assert learner.latent_shape() == latent_shape
        with pytest.raises(FrozenPartsNotLoaded, match="encode_prompts called on a learner policy"):
            learner.encode_prompts(PROMPTS)
        with pytest.raises(FrozenPartsNotLoaded, match="decode called on a learner policy"):
            learner.decode(rollout.trajectory.latents[:, 0])
    # the trajectory carries what the learner's velocity needs, in the encoders' dtype
    cond = rollout.trajectory.cond
    assert cond["encoder_hidden_states"].shape == (6, SEQ, 16) and cond["pooled_projections"].shape == (6, 24)
    assert cond["encoder_hidden_states"].dtype == torch.float32


def test_training_on_the_carried_cond_equals_encoding_on_the_learner(flux_dir, rollout):
    """fp32: the same losses, statistics, gradients and weights (bit for bit) as a learner that
    encodes the prompts itself with its own fresh encoders, the decoupled (proximal) pass included."""
    import dataclasses

    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0])
    results = []
    for carried in (True, False):
        learner = load(flux_dir, trainable=True)
        if not carried:  # what a learner did before: its own text encoders
            learner.prompts = load(flux_dir).prompts
        traj = rollout.trajectory if carried else dataclasses.replace(rollout.trajectory, cond=None)
        trainer = GRPOTrainer(learner, OptimConfig(lr=1e-3), clip_range=1e-4)
        grads = []
        step = trainer.optimizer.step
        trainer.optimizer.step = lambda: grads.append([p.grad.clone() for p in trainer.params]) or step()
        stats = [trainer.train_iteration(traj, adv, update_assignment(6, 3, 1, seed=2)),
                 trainer.train_iteration(traj, adv, update_assignment(6, 3, 1, seed=3), proximal=True)]
        results.append((stats, grads, learner.trainable_state_dict()))
    (s_c, g_c, w_c), (s_e, g_e, w_e) = results
    assert s_c == s_e and len(g_c) == len(g_e) == 4
    for a, b in zip(g_c, g_e):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(w_c[k], w_e[k]) for k in w_c)


def test_initial_noise_is_fluxpipeline_packing_of_a_latent_draw(flux_dir):
    from diffusers import FluxPipeline

    policy = load(flux_dir)
    lat = IMAGE_SIZE // 2
    x = policy.initial_noise(2, torch.Generator().manual_seed(7))
    raw = torch.randn((2, LATENT_CHANNELS, lat, lat), generator=torch.Generator().manual_seed(7))
    assert torch.equal(x, FluxPipeline._pack_latents(raw, 2, LATENT_CHANNELS, lat, lat))
    assert torch.equal(policy.unpack(x), raw)


# ------------------------------------------------------------------------------ equivalence with FluxPipeline
def test_encode_velocity_and_decode_match_fluxpipeline(flux_dir):
    pipe = reference_pipeline(flux_dir)
    policy = load(flux_dir)
    cond = policy.encode_prompts(PROMPTS)
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(PROMPTS, prompt_2=None, max_sequence_length=SEQ)
    torch.testing.assert_close(cond["encoder_hidden_states"], embeds, rtol=0, atol=0)
    torch.testing.assert_close(cond["pooled_projections"], pooled, rtol=0, atol=0)

    lat = IMAGE_SIZE // pipe.vae_scale_factor
    raw = torch.randn((2, LATENT_CHANNELS, lat, lat), generator=torch.Generator().manual_seed(3))
    packed = pipe._pack_latents(raw, 2, LATENT_CHANNELS, lat, lat)
    img_ids = pipe._prepare_latent_image_ids(2, lat // 2, lat // 2, "cpu", torch.float32)
    sigma = torch.tensor([0.98634, 0.41177])

    def direct(timestep):
        with torch.no_grad():
            return pipe.transformer(
                hidden_states=packed, timestep=timestep, guidance=torch.full([1], 3.5).expand(2),
                pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=img_ids,
                return_dict=False,
            )[0]

    with torch.no_grad():
        v = policy.velocity(packed, sigma, cond)
    torch.testing.assert_close(v, direct(sigma), rtol=1e-5, atol=1e-6)

    # reference-code option: the conditioning sigma floored to 3 decimals
    policy.timestep_decimals = 3
    with torch.no_grad():
        v3 = policy.velocity(packed, sigma, cond)
    torch.testing.assert_close(v3, direct(torch.tensor([0.986, 0.411])), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(v3, v, atol=1e-6)

    with torch.no_grad():
        ref = pipe._unpack_latents(packed, IMAGE_SIZE, IMAGE_SIZE, pipe.vae_scale_factor)
        ref = ref / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        ref = pipe.image_processor.postprocess(pipe.vae.decode(ref, return_dict=False)[0], output_type="pt")
    torch.testing.assert_close(policy.decode(packed), ref, rtol=1e-5, atol=1e-6)


def test_transformer_without_guidance_embedding(tmp_path):
    policy = FluxPolicy.from_model_config(
        model_cfg(build_tiny_flux(tmp_path, seed=1, guidance_embeds=False)), trainable=False
    )
    x = policy.initial_noise(1, torch.Generator().manual_seed(0))
    v = policy.velocity(x, torch.tensor([0.5]), policy.encode_prompts(PROMPTS[:1]))
    assert v.shape == x.shape and torch.isfinite(v).all()


# ------------------------------------------------------------------------------ prompt cache
def test_prompt_cache_skips_the_text_encoders(flux_dir):
    policy = load(flux_dir)
    rows = {"clip": [], "t5": []}
    policy.prompts.text_encoder.register_forward_hook(lambda m, a, o: rows["clip"].append(a[0].shape[0]))
    policy.prompts.text_encoder_2.register_forward_hook(lambda m, a, o: rows["t5"].append(a[0].shape[0]))

    first = policy.encode_prompts(["a red cat", "a blue dog", "a red cat"])
    assert rows["t5"] == [2]  # the repeated prompt is encoded once
    again = policy.encode_prompts(["a blue dog", "a red cat"])
    assert rows["t5"] == [2] and len(rows["clip"]) == 1  # all from the cache
    for key in first:
        assert torch.equal(again[key], first[key][[1, 0]])
        assert torch.equal(first[key][0], first[key][2])
    policy.encode_prompts(["a photo of a cat", "a red cat"])
    assert rows["t5"] == [2, 1] and rows["clip"] == [2, 1]
    assert len(policy.prompts) == 3


def test_prompt_cache_is_a_bounded_lru(flux_dir):
    p = load(flux_dir).prompts
    enc = FluxPromptEncoder(p.tokenizer, p.text_encoder, p.tokenizer_2, p.text_encoder_2,
                            max_sequence_length=SEQ, cache_size=2)
    calls = []
    p.text_encoder_2.register_forward_hook(lambda m, a, o: calls.append(1))
    enc.encode(["a"])
    enc.encode(["b"])
    enc.encode(["a"])  # hit: "a" becomes the most recent
    enc.encode(["c"])  # evicts "b"
    assert len(calls) == 3 and len(enc) == 2
    enc.encode(["a", "c"])
    assert len(calls) == 3
    big = enc.encode(["d", "e", "a", "c"])  # more new prompts than the cache holds: all still returned
    assert big["encoder_hidden_states"].shape[0] == 4 and len(enc) == 2


# ------------------------------------------------------------------------------ rollout and learner
def test_rollout_and_learner_step_on_the_flux_path(flux_dir, rollout):
    tr = rollout.trajectory
    assert rollout.images.shape == (6, 3, IMAGE_SIZE, IMAGE_SIZE) and rollout.images.dtype == torch.uint8
    assert tr.latents.shape == (6, 2, 16, 16) and tr.latents.dtype == torch.float32
    assert torch.equal(tr.latents[0, 0], tr.latents[2, 0])  # shared group noise, ODE before the window

    learner = load(flux_dir, trainable=True)
    before = learner.trainable_state_dict()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0])
    trainer = GRPOTrainer(learner, OptimConfig(lr=1e-3), clip_range=1e-4)
    stats = trainer.train_iteration(tr, adv, update_assignment(6, 3, 1, seed=0))
    assert stats["updates"] == 2
    assert abs(stats["first_ratio_mean"] - 1.0) < 1e-5
    assert abs(stats["first_ratio_min"] - 1.0) < 1e-5 and abs(stats["first_ratio_max"] - 1.0) < 1e-5
    after = learner.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # publishing: a rollout policy loading the learner's weights predicts what the learner does
    actor = load(flux_dir)
    actor.load_trainable_state_dict(after)
    learner.train(False)
    cond = actor.encode_prompts(PROMPTS)
    x, sigma = tr.latents[[0, 3], 1], tr.sigmas[[0, 3], 1]
    with torch.no_grad():
        torch.testing.assert_close(actor.velocity(x, sigma, cond), learner.velocity(x, sigma, cond), rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not match"):
        actor.load_trainable_state_dict({k: v for k, v in after.items() if "proj_out" not in k})


def test_gradient_checkpointing_gives_the_same_update(flux_dir, rollout, monkeypatch):
    import torch.utils.checkpoint as ckpt

    calls = []
    original = ckpt.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(ckpt, "checkpoint", counting)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0])
    plan = update_assignment(6, 3, 1, seed=1)
    results = []
    for flag in (False, True):
        policy = load(flux_dir, trainable=True, gradient_checkpointing=flag)
        n = len(calls)
        stats = GRPOTrainer(policy, OptimConfig(lr=1e-3), clip_range=1e-4).train_iteration(rollout.trajectory, adv, plan)
        results.append((stats, policy.trainable_state_dict(), len(calls) - n))
    (plain, w_plain, n_plain), (check, w_check, n_check) = results
    assert n_plain == 0 and n_check > 0  # blocks really ran under activation checkpointing
    for key in ("loss", "ratio_mean", "first_ratio_mean", "grad_norm"):
        assert check[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-7)
    for k in w_plain:
        torch.testing.assert_close(w_check[k], w_plain[k], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------ LoRA
def test_lora_trains_and_publishes_only_adapters(flux_dir, rollout):
    learner = load(flux_dir, trainable=True, lora_rank=4, lora_alpha=8)
    names = {n for n, p in learner.transformer.named_parameters() if p.requires_grad}
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    adapted = {n.split(".lora_")[0] for n in names}
    assert adapted == {
        *(f"transformer_blocks.0.attn.{m}" for m in
          ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")),
        *(f"single_transformer_blocks.0.{m}" for m in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out")),
    }
    params = list(learner.trainable_parameters())
    assert len(params) == len(names) and all(p.dtype == torch.float32 for p in params)
    state = learner.trainable_state_dict()
    assert len(state) == 2 * len(adapted)
    assert all((".lora_A.weight" in k or ".lora_B.weight" in k) and ".default." not in k for k in state)

    # fresh adapters are the identity: same velocity as the plain model
    base = load(flux_dir)
    x = rollout.trajectory.latents[[0, 3], 0]
    sigma = rollout.trajectory.sigmas[[0, 3], 0]
    cond = base.encode_prompts(PROMPTS)
    with torch.no_grad():
        v_base = base.velocity(x, sigma, cond)
        torch.testing.assert_close(learner.velocity(x, sigma, cond), v_base, rtol=1e-5, atol=1e-6)

    # a learner step moves the adapters only
    frozen = {k: v.clone() for k, v in learner.transformer.state_dict().items() if "lora_" not in k}
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0])
    stats = GRPOTrainer(learner, OptimConfig(lr=1e-2), clip_range=1e-4).train_iteration(rollout.trajectory, adv, update_assignment(6, 3, 1, 0))
    assert abs(stats["first_ratio_mean"] - 1.0) < 1e-5
    now = learner.transformer.state_dict()
    assert all(torch.equal(now[k], v) for k, v in frozen.items())
    perturb_(learner.trainable_parameters(), seed=5, std=0.1)  # make the adapters clearly non-trivial
    published = learner.trainable_state_dict()
    assert any(not torch.equal(published[k], state[k]) for k in state)

    # a second (rollout) policy loading the adapters predicts identically
    actor = load(flux_dir, lora_rank=4, lora_alpha=8)
    assert not any(p.requires_grad for p in actor.transformer.parameters())
    with torch.no_grad():
        v_learner = learner.velocity(x, sigma, cond)
        assert not torch.allclose(actor.velocity(x, sigma, cond), v_learner, atol=1e-4)
        actor.load_trainable_state_dict(published)
        torch.testing.assert_close(actor.velocity(x, sigma, cond), v_learner, rtol=0, atol=0)
        # the base view switches the adapters off without touching the policy itself
        torch.testing.assert_close(actor.base_view().velocity(x, sigma, cond), v_base, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(actor.velocity(x, sigma, cond), v_learner, rtol=0, atol=0)
    assert not any(p.requires_grad for p in actor.transformer.parameters())

    with pytest.raises(ValueError, match="no adapters"):
        base.load_trainable_state_dict(published)
    with pytest.raises(ValueError, match="does not match the adapters"):
        actor.load_trainable_state_dict(base.trainable_state_dict())


# ------------------------------------------------------------------------------ checkpoints, mixed-model sampling
def _write_checkpoint(policy, folder):
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in policy.trainable_state_dict().items()}, str(folder / "weights.safetensors"))
    return folder


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_mixed_model_sampling_with_a_trained_checkpoint(flux_dir, tmp_path, lora_rank):
    trained = load(flux_dir, trainable=True, lora_rank=lora_rank)
    perturb_(trained.trainable_parameters(), seed=11, std=0.05 if lora_rank == 0 else 0.3)
    ckpt = _write_checkpoint(trained, tmp_path / "iter_000010")

    cfg = model_cfg(flux_dir, lora_rank=lora_rank)
    policy, base = load_for_mixed_sampling(cfg, ckpt)
    assert base.vae is policy.vae and base.prompts is policy.prompts
    reloaded = load_trained_weights(load(flux_dir, lora_rank=lora_rank), ckpt / "weights.safetensors")
    for k, v in trained.trainable_state_dict().items():
        assert torch.equal(policy.trainable_state_dict()[k], v) and torch.equal(reloaded.trainable_state_dict()[k], v)

    kw = dict(num_steps=6, shift=3.0)
    seeds = [0, 1]
    plain = sample_images(policy, PROMPTS, seeds, **kw)
    base_only = sample_images(base, PROMPTS, seeds, **kw)
    assert torch.equal(base_only, sample_images(load(flux_dir), PROMPTS, seeds, **kw))  # base = untrained model
    assert torch.equal(sample_images(policy, PROMPTS, seeds, base_policy=base, mix_fraction=1.0, **kw), plain)
    mixed = sample_images(policy, PROMPTS, seeds, base_policy=base, mix_fraction=0.5, **kw)
    assert not torch.equal(mixed, plain) and not torch.equal(mixed, base_only)
    # and with a separately loaded base policy
    separate = sample_images(policy, PROMPTS, seeds, base_policy=load(flux_dir), mix_fraction=0.5, **kw)
    assert torch.equal(separate, mixed)


# ------------------------------------------------------------------------------ precision
def test_bf16_autocast_keeps_fp32_masters_and_float32_outputs(flux_dir):
    learner = load(flux_dir, trainable=True, dtype="bf16")
    actor = load(flux_dir, dtype="bf16")
    fp32 = load(flux_dir)
    assert all(p.dtype == torch.float32 for p in learner.trainable_parameters())
    assert all(p.dtype == torch.bfloat16 for p in actor.transformer.parameters())
    assert actor.prompts.text_encoder_2.dtype == torch.bfloat16 and actor.vae.dtype == torch.bfloat16
    x = fp32.initial_noise(2, torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.9, 0.4])
    with torch.no_grad():
        ref = fp32.velocity(x, sigma, fp32.encode_prompts(PROMPTS))
        cond = actor.encode_prompts(PROMPTS)  # bf16 embeddings, as a bf16 rollout records them
        assert cond["encoder_hidden_states"].dtype == torch.bfloat16
        for policy in (learner, actor):
            v = policy.velocity(x, sigma, cond)
            assert v.dtype == torch.float32 and v.shape == x.shape
            # bf16 rounding (timestep, activations) is amplified by the random tiny network: ~15%
            # here; wrong inputs or dtypes would be off by about 100%
            assert float((v - ref).norm() / ref.norm()) < 0.3
        img = actor.decode(x)
    assert img.dtype == torch.float32 and 0.0 <= float(img.min()) and float(img.max()) <= 1.0


# ------------------------------------------------------------------------------ errors and presets
def test_clear_errors_for_bad_paths_and_sizes(flux_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FluxPolicy.from_model_config(model_cfg(tmp_path / "nowhere"), trainable=False)
    (tmp_path / "partial" / "transformer").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="lacks vae/"):
        FluxPolicy.from_model_config(model_cfg(tmp_path / "partial"), trainable=False)
    with pytest.raises(ValueError, match="multiple of 4"):
        load(flux_dir, height=18)
    with pytest.raises(CheckpointError, match="weights.safetensors"):
        load_trained_weights(load(flux_dir), tmp_path)


def test_flux_preset_mirrors_the_paper():
    cfg = resolve(["flux", "mixgrpo_flash"])
    m = cfg.model
    assert (m.kind, m.path, m.height, m.width, m.guidance, m.lora_rank) == (
        "flux", "black-forest-labs/FLUX.1-dev", 720, 720, 3.5, 0)
    assert cfg.grpo.group_size == 12 and cfg.optim.lr == 1e-5
    # full fine-tuning sharded over 8 learners, 3 samples per learner per update
    assert (cfg.learner.strategy, cfg.learner.num_workers, cfg.optim.samples_per_update) == ("fsdp", 8, 24)
    assert (cfg.sampling.num_steps, cfg.sampling.shift, cfg.sampling.tail) == (25, 3.0, "dpm2")
    assert {n: (r.kind, r.weight) for n, r in cfg.rewards.items()} == {
        "hps": ("hps", 1.0), "pickscore": ("pickscore", 1.0), "imagereward": ("imagereward", 1.0)}
    # colocated on one 8-GPU node: 8 hybrid workers at 0.9 of a GPU, each reward 0.1 beside one
    assert (cfg.run.placement, cfg.rollout.num_workers, cfg.learner.num_gpus) == ("colocated", 8, 0.9)
    assert all(r.num_gpus == 0.1 and r.resources == {} for r in cfg.rewards.values()) and cfg.learner.resources == {}
    dis = resolve(["flux", "flux_disaggregated", "mixgrpo_flash"])
    roles = [("rollout_gpu", dis.rollout), ("learner_gpu", dis.learner)] + [("reward_gpu", r) for r in dis.rewards.values()]
    for resource, rc in roles:
        assert rc.num_gpus == 1 and rc.resources == {resource: 1}
    assert (dis.run.placement, dis.rollout.num_workers, dis.learner.num_workers) == ("disaggregated", 1, 8)
    lora = resolve(["flux", "flux_lora", "mixgrpo"])
    assert lora.model.lora_rank > 0 and lora.model.height == 720 and lora.sampling.tail == "euler"
    assert (lora.learner.strategy, lora.learner.num_workers, lora.optim.samples_per_update) == ("replicate", 8, 24)


def test_a_sampler_on_the_training_module_and_offloaded_encoders(flux_dir):
    """A colocated worker's sampler (``build_sampler(..., trained=...)``) denoises with the
    learner's own transformer (the same module, not a copy, never moved) and gives the velocity
    of a sampler holding the same weights; with ``offload_frozen`` the text encoders and VAE visit
    the device only around encoding and decoding."""
    from mixgrpo_ray.models.build import build_sampler

    trained = load(flux_dir, trainable=True, dtype="fp32")
    with torch.no_grad():
        for p in trained.trainable_parameters():
            p.add_(0.01)
    sampler = build_sampler(model_cfg(flux_dir, dtype="fp32"), "cpu", trained=trained)
    assert sampler.transformer is trained.transformer and sampler.shared_denoiser
    own = load(flux_dir, dtype="fp32")
    own.load_trainable_state_dict(trained.trainable_state_dict())
    cond = own.encode_prompts(["a red cat"])
    x = torch.randn(1, *own.latent_shape(), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.6])
    assert torch.equal(sampler.velocity(x, sigma, cond), own.velocity(x, sigma, cond))

    events = []
    for name, part in (("prompts", sampler.prompts), ("vae", sampler.vae)):
        original = part.to

        def to(device, _name=name, _original=original):
            events.append((_name, str(device)))
            return _original(device)

        part.to = to
    sampler.prompts.text_encoder_2.register_forward_hook(lambda *_: events.append(("t5", "forward")))
    sampler.vae.decoder.register_forward_hook(lambda *_: events.append(("vae", "forward")))
    sampler.offload_frozen(True)
    assert events == [("prompts", "cpu"), ("vae", "cpu")]  # both wait in host memory
    events.clear()
    sampler.encode_prompts(["a blue dog on the mat"])
    sampler.decode(x)
    device = str(sampler.device)
    assert events == [("prompts", device), ("t5", "forward"), ("prompts", "cpu"),
                      ("vae", device), ("vae", "forward"), ("vae", "cpu")]
    sampler.offload_frozen(False)
    events.clear()
    sampler.encode_prompts(["a green bird"])
    assert events == [("t5", "forward")]
