"""The embedded tiny model's built-in tasks by name, and what each one names.

* ``shapes`` (:mod:`mixgrpo_ray.models.tiny.task`, one coloured shape): prompt sets ``tiny:train`` /
  ``tiny:eval``; shipped weights in ``assets/``, chosen by ``model.path: null`` or ``builtin:tiny``.
* ``pairs`` (:mod:`mixgrpo_ray.models.tiny.pairs_task`, two shapes in a named layout): prompt sets
  ``tiny_pairs:train`` / ``tiny_pairs:eval``; shipped weights in ``pairs_assets/``, chosen by
  ``model.path: builtin:tiny_pairs``.

A task's name in prompt sources and ``builtin:`` paths (``tiny``, ``tiny_pairs``) is
:attr:`BuiltinTask.key`. Each task also names the reward kinds that read its prompts
(:attr:`BuiltinTask.reward_kinds`) and the offline rewards that
:func:`mixgrpo_ray.eval.tiny_scores.score_images` reports for it (:attr:`BuiltinTask.scores`). A
task module is imported only when asked for (:meth:`BuiltinTask.load`).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

#: the folder of this package, which holds each task's shipped weights
PACKAGE_DIR = Path(__file__).resolve().parent
#: the ``model.path`` prefix naming a task's shipped weights (``builtin:tiny_pairs``)
BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class BuiltinTask:
    """One built-in task of the tiny model."""

    name: str  # the task (``--task`` of pretrain-tiny, ``task`` in a model's config.json)
    key: str  # its prompt sources ``<key>:train`` / ``<key>:eval`` and weights ``builtin:<key>``
    module: str  # the task module (grammar, split, renderer)
    assets: str  # folder of the shipped weights, inside this package
    reward_kinds: tuple[str, ...]  # reward kinds that parse this task's prompts
    scores: tuple[str, ...]  # "module:Class" of the offline rewards reported by score_images

    def load(self) -> ModuleType:
        """The task module."""
        return importlib.import_module(self.module)

    def score_rewards(self) -> list:
        """Fresh instances (default options) of the rewards named by :attr:`scores`."""
        out = []
        for target in self.scores:
            module, name = target.split(":")
            out.append(getattr(importlib.import_module(module), name)())
        return out

    @property
    def weights_dir(self) -> Path:
        """The folder of the shipped weights (``config.json`` + ``model.safetensors``)."""
        return PACKAGE_DIR / self.assets


TASKS: dict[str, BuiltinTask] = {
    "shapes": BuiltinTask(
        "shapes", "tiny", "mixgrpo_ray.models.tiny.task", "assets", ("prompt_following", "object_size"),
        ("mixgrpo_ray.models.tiny.rewards:PromptFollowingReward", "mixgrpo_ray.models.tiny.rewards:QualityReward"),
    ),
    "pairs": BuiltinTask(
        "pairs", "tiny_pairs", "mixgrpo_ray.models.tiny.pairs_task", "pairs_assets", ("pair_following", "pair_layout"),
        ("mixgrpo_ray.models.tiny.pairs_rewards:PairFollowingReward",
         "mixgrpo_ray.models.tiny.pairs_rewards:PairLayoutReward"),
    ),
}  # fmt: skip
DEFAULT_TASK = "shapes"
BY_KEY: dict[str, BuiltinTask] = {t.key: t for t in TASKS.values()}


def get_task(name: str) -> BuiltinTask:
    """The task called ``name`` (``ValueError`` listing the tasks otherwise)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown tiny task {name!r}; choose one of: {', '.join(TASKS)}") from None


def task_of_source(source: str) -> BuiltinTask | None:
    """The task whose prompt set ``source`` names (``tiny:eval``, ``tiny_pairs:train:8``), or
    ``None`` for any other source (a file)."""
    key = source.split(":", 1)[0]
    return BY_KEY.get(key) if ":" in source and not Path(source).expanduser().exists() else None


def builtin_names() -> list[str]:
    """Every ``model.path`` that names shipped weights, e.g. ``builtin:tiny_pairs``."""
    return [BUILTIN_PREFIX + key for key in BY_KEY]


def weights_dir(path: str | Path | None) -> Path:
    """The folder ``path`` names: the shapes model's weights for ``None``, a task's shipped
    weights for ``builtin:<key>`` (``ValueError`` listing them for an unknown one), else
    ``path`` itself (a file names its folder)."""
    if path is None:
        return TASKS[DEFAULT_TASK].weights_dir
    text = str(path)
    if text.startswith(BUILTIN_PREFIX):
        key = text[len(BUILTIN_PREFIX):]
        if key not in BY_KEY:
            raise ValueError(f"unknown built-in tiny model {text!r}; choose one of: {', '.join(builtin_names())}")
        return BY_KEY[key].weights_dir
    root = Path(path).expanduser()
    return root.parent if root.is_file() else root


def task_of_weights(path: str | Path | None) -> BuiltinTask:
    """The task of the tiny model at ``path`` (as :func:`weights_dir` reads it): its
    ``config.json``'s ``task`` (the shapes task when absent). ``FileNotFoundError`` when the
    folder holds no ``config.json``."""
    cfg_path = weights_dir(path) / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"tiny model: {cfg_path} not found")
    meta = json.loads(cfg_path.read_text())
    return get_task((meta.get("model", meta)).get("task", DEFAULT_TASK))
