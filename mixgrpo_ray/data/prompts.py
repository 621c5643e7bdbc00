"""Prompt sources and the seeded, resumable prompt sampler (no Ray).

A source is a built-in task's prompt set — ``tiny:train`` / ``tiny:eval`` (the shapes task) or
``tiny_pairs:train`` / ``tiny_pairs:eval`` (the pairs task), optionally ``:N`` for the first N
(:mod:`mixgrpo_ray.models.tiny.tasks`) — or a local file read by :mod:`mixgrpo_ray.data.datasets`
(txt, jsonl, json, parquet, HPDv2 layout).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

#: what a built-in prompt set looks like (``tiny:eval``, ``tiny_pairs:train:8``, ``tiny_foo:x``)
_BUILTIN = re.compile(r"tiny(_\w+)?:")


def is_builtin_source(source: str) -> bool:
    """Whether ``source`` is read as a built-in prompt set (``tiny...:``, not an existing path)."""
    return bool(_BUILTIN.match(source)) and not Path(source).expanduser().exists()


def load_prompts(source: str) -> list[str]:
    """The prompts of ``source`` (raises ``ValueError`` / ``FileNotFoundError`` with one clear line)."""
    if is_builtin_source(source):
        from mixgrpo_ray.data.datasets import _split_limit
        from mixgrpo_ray.models.tiny.tasks import TASKS, task_of_source

        name, limit = _split_limit(source)
        builtin = task_of_source(name)
        split = name.split(":", 1)[1]
        if builtin is None or split not in ("train", "eval"):
            choices = "; ".join(f"{t.key}:train or {t.key}:eval" for t in TASKS.values())
            raise ValueError(f"unknown built-in prompt set {source!r}; use {choices} (optionally :N)")
        module = builtin.load()
        prompts = list(module.train_prompts() if split == "train" else module.eval_prompts())
        return prompts if limit is None else prompts[:limit]
    from mixgrpo_ray.data.datasets import read_prompts

    return read_prompts(source)


class PromptSampler:
    """Draws batches of prompts epoch by epoch in a seeded order; ``state_dict`` resumes exactly."""

    def __init__(self, prompts: list[str], seed: int = 0, shuffle: bool = True) -> None:
        if not prompts:
            raise ValueError("the prompt set is empty")
        self.prompts = list(prompts)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(len(self.prompts)))
        if self.shuffle:
            random.Random(self.seed * 7919 + self.epoch).shuffle(order)
        return order

    def next_batch(self, n: int) -> list[str]:
        out = []
        while len(out) < n:
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._make_order()
            out.append(self.prompts[self._order[self.position]])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._make_order()
