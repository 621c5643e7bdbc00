"""How much memory a role's process has used for its work: the ``memory/*`` metrics.

A :class:`PeakMemory` is made when an actor starts, before it builds its model:

* on a GPU: ``torch.cuda.max_memory_allocated`` of its device (the tensors torch allocated; the
  CUDA context, NCCL buffers and the allocator's cached-but-free blocks are not in it: the plan's
  ``runtime`` row);
* on the CPU: the process's resident high-water mark (Linux ``VmHWM``) minus its resident memory
  when the tracker was made, after the libraries the model's code needs were imported. That
  baseline (the Python interpreter, torch, Ray, diffusers) is the CPU's counterpart of the GPU's
  runtime and is left out the same way. Once the model is built the actor calls :meth:`loaded`,
  which resets the high-water mark: while a checkpoint loads, the file's pages are mapped beside
  the tensors copied out of them (e.g. a bf16 file becoming fp32 weights), page cache that is
  dropped when loading ends and that a GPU never holds.

``mixgrpo-ray bench slice`` compares these numbers with ``mixgrpo-ray plan``'s rows.
"""

from __future__ import annotations

from pathlib import Path

import torch

GB = 1e9


def resident_bytes(field: str = "VmRSS") -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (resident high-water mark) of this process, in bytes
    (0 where ``/proc`` has no such field)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """The peak memory this process has used on ``device`` since it was made (see the module
    docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = 0
        else:
            self.base = resident_bytes("VmRSS")

    def loaded(self) -> None:
        """The model is built: from here on the peak is the role's working memory (see the
        module docstring)."""
        if self.device.type != "cuda":
            try:
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            except OSError:
                pass

    def peak_gb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / GB
        return max(0, resident_bytes("VmHWM") - self.base) / GB
