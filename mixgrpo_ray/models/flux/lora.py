"""LoRA adapters on a diffusers ``FluxTransformer2DModel`` (peft), as an alternative to full fine-tuning.

Adapted layers (module names in diffusers' ``transformer_flux.py``):

* double-stream blocks ``transformer_blocks.<i>.attn``: the image-stream projections ``to_q``,
  ``to_k``, ``to_v``, ``to_out.0`` and the text-stream projections ``add_q_proj``, ``add_k_proj``,
  ``add_v_proj``, ``to_add_out``;
* single-stream blocks ``single_transformer_blocks.<i>``: ``attn.to_q``, ``attn.to_k``,
  ``attn.to_v`` and the block's own projections ``proj_mlp`` and ``proj_out`` (a single block has
  no separate attention output projection: ``proj_out`` maps the concatenated attention and MLP
  outputs back to the residual stream).

The transformer's final ``proj_out`` and the embedders are not adapted. Adapters start as the
identity (``lora_B = 0``), so a fresh LoRA policy equals its base model.

The adapter state dict uses peft's saved-adapter key format (adapter name removed), e.g.
``transformer_blocks.0.attn.to_q.lora_A.weight``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch

from mixgrpo_ray.models.policy import check_state_dict

#: full-match pattern of the adapted module names (see the module docstring)
LORA_TARGET_PATTERN = (
    r"(transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|single_transformer_blocks\.\d+\.(attn\.to_q|attn\.to_k|attn\.to_v|proj_mlp|proj_out))"
)
ADAPTER_NAME = "default"


def add_lora(transformer: torch.nn.Module, rank: int, alpha: float = 0.0, targets: str = LORA_TARGET_PATTERN) -> None:
    """Inject LoRA adapters of ``rank`` (scaling ``alpha / rank``; ``alpha = 0`` means ``rank``)
    into the layers whose names fully match ``targets`` (default: FLUX's, see the module
    docstring) and freeze everything else."""
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha) if alpha > 0 else float(rank),
        lora_dropout=0.0,
        init_lora_weights=True,
        target_modules=targets,
    )
    transformer.requires_grad_(False)
    transformer.add_adapter(config, adapter_name=ADAPTER_NAME)
    for _, p in lora_parameters(transformer):
        p.requires_grad_(True)


def has_lora(transformer: torch.nn.Module) -> bool:
    return any(True for _ in lora_parameters(transformer))


def lora_parameters(transformer: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """``(name, parameter)`` of every adapter weight (names as in ``named_parameters``)."""
    for name, p in transformer.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            yield name, p


def _published_key(name: str) -> str:
    return name.replace(f".{ADAPTER_NAME}.", ".")


def lora_tensors(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights as live tensors (no copies), under :func:`lora_state_dict`'s keys."""
    return {_published_key(n): p.detach() for n, p in lora_parameters(transformer)}


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights only, detached CPU copies, in peft's saved-adapter key format."""
    return {_published_key(n): p.detach().to("cpu").clone() for n, p in lora_parameters(transformer)}


def load_lora_state_dict(transformer: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy adapter weights written by :func:`lora_state_dict` into ``transformer`` (exact key
    set and shapes required; values are cast to each adapter's dtype)."""
    params = {_published_key(n): p for n, p in lora_parameters(transformer)}
    check_state_dict(
        params, state, "LoRA: state dict does not match the adapters",
        "; was it written with the same model.lora_rank and architecture?",
    )
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(state[key].to(device=p.device, dtype=p.dtype))


@contextlib.contextmanager
def adapters_disabled(transformer: torch.nn.Module) -> Iterator[None]:
    """Run the base model: LoRA adapters switched off inside the block, back on after it (peft's
    toggles also flip ``requires_grad``; the adapters' flags are restored as they were)."""
    flags = [(p, p.requires_grad) for _, p in lora_parameters(transformer)]
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()
        for p, flag in flags:
            p.requires_grad_(flag)
