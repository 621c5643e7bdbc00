"""The policy interface every text-to-image flow model implements (tiny embedded model, FLUX).

A policy works in its own *latent* space (any tensor shape with batch first, float32 on the
sampling side). The rollout and the learner only ever call the methods below, so the same
driver, actors and learner serve every model.

Conventions
-----------
* ``cond`` is whatever :meth:`Policy.encode_prompts` returns: a ``dict[str, Tensor]`` whose
  tensors all have the batch dimension first. :func:`cond_select` / :func:`cond_repeat` index
  and repeat it.
* ``sigma`` passed to :meth:`Policy.velocity` is a float32 tensor of shape ``(batch,)``.
* :meth:`Policy.velocity` returns float32, the same shape as ``x``. Mixed precision (bf16
  autocast) is the policy's business; all step math outside it is float32.
* :meth:`Policy.decode` returns float32 images ``(batch, 3, H, W)`` in ``[0, 1]``.
* A learner's policy (``build_policy(..., trainable=True)``) holds only what it trains: it need
  not implement :meth:`Policy.encode_prompts` or :meth:`Policy.decode` (its frozen text encoders
  and VAE are not loaded); it conditions on the ``cond`` the rollout recorded in the trajectory.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Iterator, Mapping, Optional, Sequence

import torch

from mixgrpo_ray.core.schedule import sigma_schedule

Cond = dict[str, torch.Tensor]


class Policy(ABC):
    """A flow-matching text-to-image model seen as an RL policy."""

    #: short name used in logs and configs (e.g. ``"tiny"``, ``"flux"``)
    name: str = "policy"

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        """Text conditioning for ``prompts`` (batch-first tensors, no gradient)."""

    @abstractmethod
    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Predicted flow velocity ``v_theta(x, sigma, cond)`` (float32, shape of ``x``)."""

    @abstractmethod
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(batch, 3, H, W)`` float32 in ``[0, 1]`` from final latents."""

    @abstractmethod
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one latent, without the batch dimension."""

    @abstractmethod
    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        """Parameters the learner optimises (all of the denoiser, or LoRA adapters)."""

    @abstractmethod
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights the learner publishes to rollout actors (detached CPU tensors)."""

    @abstractmethod
    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load weights published by :meth:`trainable_state_dict`."""

    def trainable_module(self) -> "torch.nn.Module | None":
        """The module whose whole state dict is the trainable state (what a sharded learner
        wraps with FSDP), or ``None`` when only part of a module trains (LoRA adapters)."""
        return None

    def trainable_tensors(self) -> dict[str, torch.Tensor]:
        """The trainable weights under the keys of :meth:`trainable_state_dict`, as live tensors
        (no copies): weight sync reads from and writes into them in place."""
        module = self.trainable_module()
        if module is None:
            raise NotImplementedError(f"{type(self).__name__} has no live trainable tensors")
        return dict(module.state_dict())

    def train(self, mode: bool = True) -> "Policy":
        """Switch the trainable modules to training / eval mode (default: no-op)."""
        return self

    def to(self, device: torch.device | str) -> "Policy":
        """Move the model to ``device`` (default: no-op)."""
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    #: frozen parts wait in host memory between uses (see :meth:`offload_frozen`)
    host_offload: bool = False
    #: the denoiser is another policy's (a colocated learner's training module): :meth:`to` leaves it
    shared_denoiser: bool = False

    def frozen_parts(self) -> list:
        """The frozen components used only to encode prompts or decode latents (text encoders,
        VAE): what :meth:`offload_frozen` keeps in host memory. Default: none."""
        return []

    def offload_frozen(self, enabled: bool = True) -> "Policy":
        """``enabled``: keep :meth:`frozen_parts` in host memory and move each to the policy's
        device only while it encodes or decodes (``rollout.offload_encoders``); the GPU then holds
        the transformer alone while it denoises. Returns self."""
        self.host_offload = bool(enabled)
        if enabled:
            for part in self.frozen_parts():
                part.to("cpu")
        return self

    @contextlib.contextmanager
    def frozen_on_device(self, part: Optional[object]) -> Iterator[None]:
        """Run the block with ``part`` (a frozen component) on the policy's device, and put it
        back in host memory after when :attr:`host_offload` is on."""
        if not self.host_offload or part is None:
            yield
            return
        part.to(self.device)
        try:
            yield
        finally:
            part.to("cpu")

    def sigmas(self, num_steps: int, shift: float) -> torch.Tensor:
        """The ``num_steps + 1`` noise levels sampling goes through, from 1 to 0: MixGRPO's grid
        (docs/algorithm.md eq. (4), with ``shift`` = ``sampling.shift``) unless the model samples
        on its own pipeline's grid (§2.1; :attr:`pipeline_schedule`)."""
        return sigma_schedule(num_steps, shift)

    #: the model samples on its pipeline's own grid (:meth:`sigmas`), not MixGRPO's (eq. (4))
    pipeline_schedule: bool = False

    def guide(self, v_c: torch.Tensor, v_u: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The classifier-free guided velocity from the conditional ``v_c`` and unconditional
        ``v_u`` ones and the per-row ``scale`` (broadcastable): ``v_u + s (v_c - v_u)``
        (docs/algorithm.md §1.1 eq. (1a)); a model whose pipeline guides otherwise overrides it."""
        return v_u + scale * (v_c - v_u)

    def initial_noise(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal latents ``(batch, *latent_shape())`` in float32 on CPU."""
        return torch.randn((batch, *self.latent_shape()), generator=generator, dtype=torch.float32)


def check_state_dict(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], what: str, hint: str = ""
) -> None:
    """Raise ``ValueError`` (one line) unless ``state`` has exactly the keys of ``expected`` with
    the same shapes. ``what`` names the target in the message (e.g. ``"tiny policy: state dict
    does not match the transformer"``); ``hint`` is appended."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{what} (missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}){hint}"
        )
    prefix = what.split(":")[0]
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{prefix}: weight {key!r} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")


def cond_select(cond: Cond, index: torch.Tensor | slice | Sequence[int]) -> Cond:
    """Rows ``index`` of every tensor in ``cond``."""
    if not isinstance(index, (slice, torch.Tensor)):
        index = torch.as_tensor(list(index), dtype=torch.long)
    return {k: v[index] for k, v in cond.items()}


def cond_repeat(cond: Cond, repeats: int) -> Cond:
    """Each row of ``cond`` repeated ``repeats`` times in place (``a a a b b b``)."""
    return {k: v.repeat_interleave(repeats, dim=0) for k, v in cond.items()}
