"""Prompt sources and the seeded, resumable prompt sampler (no Ray).

A source is ``tiny:train`` / ``tiny:eval`` (the built-in task's prompt sets, optionally ``:N`` for the
first N) or a local file read
by :mod:`mixgrpo_ray.data.datasets` (txt, jsonl, json, parquet, HPDv2 layout).
"""

from __future__ import annotations

import random
from typing import Any


def load_prompts(source: str) -> list[str]:
    """The prompts of ``source`` (raises ``ValueError`` / ``FileNotFoundError`` with one clear line)."""
    if source.startswith("tiny:"):
        from mixgrpo_ray.data.datasets import _split_limit
        from mixgrpo_ray.models.tiny import task

        name, limit = _split_limit(source)
        split = name.split(":", 1)[1]
        if split == "train":
            prompts = list(task.train_prompts())
        elif split == "eval":
            prompts = list(task.eval_prompts())
        else:
            raise ValueError(f"unknown built-in prompt set {source!r}; use tiny:train or tiny:eval (optionally :N)")
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
