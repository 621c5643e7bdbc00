"""``kind: python``: the user's own reward, named by ``rewards.<name>.target`` and imported on the
reward replicas (never by the driver or the config layer).

``target`` is ``package.module:Name`` (``Name`` may be dotted, e.g. ``module:Outer.Inner``) and
names one of:

* a :class:`~mixgrpo_ray.models.reward.RewardModel` subclass: built with the reward's ``options``
  as keyword arguments and used as it is (its ``can_fail`` and ``score_range`` included);
* any other class: built with ``options``; its instances are called ``obj(images, prompts)``;
* a function: called ``fn(images, prompts, **options)``.

Images are ``(batch, 3, H, W)`` float32 in ``[0, 1]``; prompts a list of strings. The result is
anything ``torch.as_tensor`` reads with one number per image (a tensor, a list of floats, a
NumPy array). A class, its instances or a function may declare the input it needs with the
attributes ``input_size`` (an int: images arrive resized, see
:mod:`mixgrpo_ray.models.reward_input`) and ``input_resize`` (default ``"shortest_edge"``); without
them it gets the images as sampled. The module must be importable on every reward replica: installed in the cluster's
environment, or shipped with ``ray job submit --working-dir .`` / ``runtime_env.py_modules``.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Sequence

import torch

from mixgrpo_ray.models.reward import RewardModel, as_float01
from mixgrpo_ray.models.reward_input import declared_input


def import_target(target: str) -> Any:
    """The object ``package.module:Name`` names (one-line ``ValueError`` when it cannot be found)."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward target {target!r} must be package.module:Name")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"reward target {target!r}: cannot import {module_name!r} ({exc}); is it installed on "
                         f"the reward replicas or shipped with --working-dir?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward target {target!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward target {target!r} is not a class or function")
    return obj


class PythonReward(RewardModel):
    """A reward defined outside this package (see the module docstring)."""

    def __init__(self, target: str, **options: Any) -> None:
        obj = import_target(target)
        self.name = target
        self.inner: RewardModel | None = None
        self._fn: Callable[..., Any]
        if inspect.isclass(obj):
            instance = obj(**options)
            if isinstance(instance, RewardModel):
                self.inner = instance
                self.can_fail = instance.can_fail
                self.score_range = instance.score_range
            elif not callable(instance):
                raise ValueError(f"reward target {target!r}: instances of the class must be callable (images, prompts)")
            self._fn = instance
            declares = instance
        else:
            self._fn = lambda images, prompts: obj(images, prompts, **options)
            declares = obj
        # an optional declaration of the input it needs (default: the images as sampled)
        spec = declared_input(declares)
        if spec is not None:
            self.input_size, self.input_resize = spec.size, spec.resize

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if self.inner is not None:
            return self.inner(images, prompts)
        out = self._fn(as_float01(images), list(prompts))
        return torch.as_tensor(out, dtype=torch.float32).reshape(-1)
