"""The embedded tiny text-to-image policy: a small FLUX transformer on 32x32 RGB pixels.

* **Latent.** The sampler works on the image itself, ``(batch, 3, 32, 32)`` float32 in
  ``[-1, 1]`` (image ``= (latent + 1) / 2``). Inside :meth:`TinyPolicy.velocity` the latent is
  packed as FLUX packs latents (:mod:`mixgrpo_ray.models.flux.common`), with 8x8 patches: 16
  tokens of 192 channels.
* **Denoiser.** diffusers' own ``FluxTransformer2DModel`` at a tiny size (hidden width 64, one
  double-stream and two single-stream blocks, rotary ids, ``timestep = sigma``, pooled
  projections; no guidance embedding). A token of 192 pixel values is wider than the
  transformer, so it could not carry the noise through to a velocity; instead the transformer
  predicts the clean image ``x0_hat`` and the policy returns the flow velocity implied by it,
  ``v = (x - x0_hat) / sigma`` (so ``x - sigma * v`` is exactly ``x0_hat``, and an Euler step
  to ``sigma = 0`` lands on it). Trained with the flow-matching loss on ``v`` (see
  :mod:`mixgrpo_ray.pretrain_tiny`).
* **Text encoder.** Our own: word-level vocabulary of the grammar of the model's built-in task
  (``TinyConfig.task``: ``shapes`` or ``pairs``, :mod:`mixgrpo_ray.models.tiny.tasks`), embeddings + one
  transformer layer, resampled by attention to 4 text tokens (``encoder_hidden_states``) and
  mean-pooled to the pooled projection. Trained jointly in pre-training, frozen afterwards:
  only the transformer is trainable by RL. So a learner holds only the transformer
  (:meth:`TinyPolicy.without_text_encoder`, what ``build_policy(..., trainable=True)`` returns) and
  conditions on the prompt embeddings the rollout recorded in the trajectory.

``TinyPolicy.from_pretrained()`` loads the shapes model shipped in ``mixgrpo_ray/models/tiny/assets``
and ``TinyPolicy.from_pretrained("builtin:tiny_pairs")`` the pairs model in ``pairs_assets`` (no
network); ``TinyPolicy()`` is a random initialisation (of the shapes task's vocabulary;
``TinyPolicy(TinyConfig(task="pairs"))`` of the pairs task's).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from mixgrpo_ray.models.flux import common as flux_common
from mixgrpo_ray.models.policy import Cond, Policy, check_state_dict
from mixgrpo_ray.models.tiny import task, tasks

#: where the shipped pre-trained weights of the shapes model live
ASSET_DIR = tasks.TASKS["shapes"].weights_dir
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>")
PAD, UNK, BOS = 0, 1, 2


@dataclass
class TinyConfig:
    """Architecture of the tiny policy (saved as ``config.json`` beside the weights)."""

    # pixels and their 8x8 patches (packed as FLUX packs latents)
    resolution: int = 32
    channels: int = 3
    patch: int = 8
    # the diffusers FluxTransformer2DModel
    num_layers: int = 1
    num_single_layers: int = 2
    num_attention_heads: int = 4
    attention_head_dim: int = 16
    axes_dims_rope: tuple[int, int, int] = (4, 6, 6)
    # the word-level text encoder
    text_dim: int = 64
    text_tokens: int = 4
    text_layers: int = 1
    text_heads: int = 4
    max_words: int = 16
    pooled_dim: int = 64
    #: standard deviation of the learned word-position embeddings at initialisation (the word
    #: embeddings start at 1): 0.02 leaves the encoder nearly blind to word order at first, which
    #: the shapes task does not need; the pairs task ("a red circle left of a blue square" vs
    #: "a blue square left of a red circle") does
    position_init: float = 0.02
    #: the built-in task whose prompts the model reads (:data:`mixgrpo_ray.models.tiny.tasks.TASKS`)
    task: str = tasks.DEFAULT_TASK
    #: the special tokens then the words; empty: those of ``task``'s grammar
    vocabulary: tuple[str, ...] = ()
    #: smallest sigma used as the divisor in ``v = (x - x0_hat) / sigma``
    sigma_floor: float = 1e-4

    def __post_init__(self) -> None:
        self.axes_dims_rope = tuple(int(a) for a in self.axes_dims_rope)
        builtin = tasks.get_task(self.task)  # ValueError for an unknown task
        self.vocabulary = tuple(self.vocabulary) or SPECIAL_TOKENS + builtin.load().vocabulary()
        if self.resolution % self.patch:
            raise ValueError(f"resolution {self.resolution} is not divisible by patch {self.patch}")
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError("axes_dims_rope must sum to attention_head_dim")
        if tuple(self.vocabulary[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocabulary must start with {SPECIAL_TOKENS}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["axes_dims_rope"] = list(self.axes_dims_rope)
        d["vocabulary"] = list(self.vocabulary)
        return d

    @classmethod
    def from_folder(cls, path: str | Path | None = None) -> "TinyConfig":
        """The architecture in ``config.json`` of the model folder ``path`` names (as
        :meth:`TinyPolicy.from_pretrained` reads it; ``FileNotFoundError`` when absent)."""
        cfg_path = tasks.weights_dir(path) / CONFIG_FILE
        if not cfg_path.is_file():
            raise FileNotFoundError(f"tiny model: {cfg_path} not found")
        meta = json.loads(cfg_path.read_text())
        return cls.from_dict(meta["model"] if "model" in meta else meta)

    @classmethod
    def from_dict(cls, d: Mapping) -> "TinyConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown tiny model config keys: {', '.join(unknown)}")
        return cls(**dict(d))


class TinyTextEncoder(nn.Module):
    """Word ids ``(batch, max_words)`` -> ``(encoder_hidden_states (batch, K, D), pooled (batch, P))``.

    Embeddings plus learned positions, a pre-norm transformer encoder, then ``K`` learned
    queries attend over the words (padding masked) to give the text tokens; the pooled
    projection is a linear map of the masked mean of the encoded words.
    """

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        d = cfg.text_dim
        self.embed = nn.Embedding(len(cfg.vocabulary), d, padding_idx=PAD)
        self.position = nn.Parameter(torch.randn(cfg.max_words, d) * cfg.position_init)
        layer = nn.TransformerEncoderLayer(
            d, cfg.text_heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.queries = nn.Parameter(torch.randn(cfg.text_tokens, d) * 0.02)
        self.resample = nn.MultiheadAttention(d, cfg.text_heads, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.pool = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.pooled_dim))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = ids == PAD
        h = self.embed(ids) + self.position[: ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=pad)
        queries = self.queries.unsqueeze(0).expand(ids.shape[0], -1, -1)
        tokens = self.resample(queries, h, h, key_padding_mask=pad, need_weights=False)[0]
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        mean = (h * keep).sum(dim=1) / keep.sum(dim=1)
        return self.norm(tokens), self.pool(mean)


def build_transformer(cfg: TinyConfig) -> nn.Module:
    """diffusers' ``FluxTransformer2DModel`` at the tiny size of ``cfg``."""
    from diffusers import FluxTransformer2DModel

    # patching is done outside, by flux_common.pack_latents (patch_size=1 here)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=cfg.channels * cfg.patch * cfg.patch, num_layers=cfg.num_layers,
        num_single_layers=cfg.num_single_layers, attention_head_dim=cfg.attention_head_dim,
        num_attention_heads=cfg.num_attention_heads, joint_attention_dim=cfg.text_dim,
        pooled_projection_dim=cfg.pooled_dim, guidance_embeds=False, axes_dims_rope=cfg.axes_dims_rope,
    )


class TinyPolicy(Policy):
    """The embedded tiny text-to-image flow model as an RL policy (see the module docstring)."""

    name = "tiny"

    def __init__(self, config: TinyConfig | None = None, seed: int | None = None) -> None:
        """Randomly initialised policy (seeded by ``seed`` if given, without touching the
        global RNG)."""
        self.config = config or TinyConfig()
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.text_encoder = TinyTextEncoder(self.config)
            self.transformer = build_transformer(self.config)
        self.text_encoder.eval().requires_grad_(False)
        self.transformer.eval()
        self._word_ids = {w: i for i, w in enumerate(self.config.vocabulary)}
        self._device = torch.device("cpu")
        side = self.config.resolution // self.config.patch
        self._img_ids = flux_common.image_ids(side, side)
        self._txt_ids = flux_common.text_ids(self.config.text_tokens)

    # ---------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> "TinyPolicy":
        """Load ``config.json`` + ``model.safetensors`` from the folder ``path`` (or the folder of
        the file ``path``), or the shipped weights ``builtin:tiny`` (the default, ``None``) /
        ``builtin:tiny_pairs`` (:func:`mixgrpo_ray.models.tiny.tasks.weights_dir`). Local files
        only."""
        from safetensors.torch import load_file

        weights_path = tasks.weights_dir(path) / WEIGHTS_FILE
        config = TinyConfig.from_folder(path)
        if not weights_path.is_file():
            raise FileNotFoundError(f"tiny model: {weights_path} not found")
        policy = cls(config)
        state = load_file(str(weights_path))
        policy.load_full_state_dict(state)
        return policy

    def without_text_encoder(self) -> "TinyPolicy":
        """Drop the frozen text encoder (a learner trains the transformer only and conditions on
        the embeddings the trajectory carries); :meth:`encode_prompts` then raises. Returns self."""
        self.text_encoder = None
        return self

    def _text_encoder(self) -> TinyTextEncoder:
        if self.text_encoder is None:
            raise RuntimeError(
                "tiny policy: this learner policy holds no text encoder (it trains the transformer only); "
                "learners condition on the prompt embeddings the trajectory carries"
            )
        return self.text_encoder

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """All weights (text encoder and transformer), keys prefixed ``text_encoder.`` /
        ``transformer.``."""
        self._text_encoder()
        out = {f"text_encoder.{k}": v for k, v in self.text_encoder.state_dict().items()}
        out.update({f"transformer.{k}": v for k, v in self.transformer.state_dict().items()})
        return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}

    def load_full_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load weights written by :meth:`full_state_dict` (strict)."""
        te = {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")}
        tr = {k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.")}
        other = [k for k in state if not k.startswith(("text_encoder.", "transformer."))]
        if other:
            raise ValueError(f"tiny model: unexpected weights {other[:3]}")
        self._text_encoder().load_state_dict(te, strict=True)
        self.load_trainable_state_dict(tr)

    def save_pretrained(self, path: str | Path, extra: Mapping | None = None) -> Path:
        """Write ``config.json`` (the architecture under ``"model"`` plus ``extra`` metadata)
        and ``model.safetensors`` into directory ``path``; returns the directory."""
        from safetensors.torch import save_file

        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        meta = {"model": self.config.to_dict(), **dict(extra or {})}
        (root / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_file(self.full_state_dict(), str(root / WEIGHTS_FILE))
        return root

    # ---------------------------------------------------------------- text
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Word ids ``(batch, max_words)``: ``<bos>``, the prompt's words (unknown ones as
        ``<unk>``, truncated to fit), then padding."""
        n = self.config.max_words
        ids = torch.full((len(prompts), n), PAD, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = [BOS] + [self._word_ids.get(w, UNK) for w in task.tokenize(prompt)]
            words = words[:n]
            ids[row, : len(words)] = torch.tensor(words, dtype=torch.long)
        return ids

    def encode_with_grad(self, prompts: Sequence[str]) -> Cond:
        """Like :meth:`encode_prompts` but differentiable (used by pre-training)."""
        hidden, pooled = self._text_encoder()(self.tokenize(prompts).to(self._device))
        return {"encoder_hidden_states": hidden, "pooled_projections": pooled}

    def frozen_parts(self) -> list:
        return [self.text_encoder] if self.text_encoder is not None else []

    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        with torch.no_grad(), self.frozen_on_device(self.text_encoder):
            cond = self.encode_with_grad(prompts)
        return {k: v.float() for k, v in cond.items()}

    # ---------------------------------------------------------------- denoising
    def predict_x0(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The transformer's clean-image prediction ``x0_hat`` (shape of ``x``, float32)."""
        cfg = self.config
        if tuple(x.shape[1:]) != self.latent_shape():
            raise ValueError(f"tiny policy: latents must be (batch, {', '.join(map(str, self.latent_shape()))}), "
                             f"got {tuple(x.shape)}")  # fmt: skip
        tokens = flux_common.pack_latents(x.float(), cfg.patch)
        out = flux_common.flux_forward(
            self.transformer,
            tokens,
            sigma.float(),
            cond["encoder_hidden_states"],
            cond["pooled_projections"],
            self._img_ids,
            self._txt_ids,
        )
        return flux_common.unpack_latents(out.float(), cfg.channels, cfg.resolution, cfg.resolution, cfg.patch)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        x = x.float()
        x0_hat = self.predict_x0(x, sigma, cond)
        s = sigma.to(x.device, torch.float32).clamp(min=self.config.sigma_floor).view(-1, 1, 1, 1)
        return (x - x0_hat) / s

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def latent_shape(self) -> tuple[int, ...]:
        return (self.config.channels, self.config.resolution, self.config.resolution)

    # ---------------------------------------------------------------- RL interface
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return self.transformer.parameters()

    def trainable_module(self) -> nn.Module:
        return self.transformer

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").clone() for k, v in self.transformer.state_dict().items()}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        check_state_dict(self.transformer.state_dict(), state, "tiny policy: state dict does not match the transformer")
        self.transformer.load_state_dict(dict(state), strict=True)

    def train(self, mode: bool = True) -> "TinyPolicy":
        self.transformer.train(mode)
        return self

    def to(self, device: torch.device | str) -> "TinyPolicy":
        self._device = torch.device(device)
        if self.text_encoder is not None:
            self.text_encoder.to(self._device)
        if not self.shared_denoiser:  # a learner's module stays where its sharding put it
            self.transformer.to(self._device)
        self._img_ids = self._img_ids.to(self._device)
        self._txt_ids = self._txt_ids.to(self._device)
        return self

    @property
    def device(self) -> torch.device:
        return self._device
