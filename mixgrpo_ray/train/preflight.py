"""Input checks a run makes before it writes anything, and the one line a failed start becomes.

:func:`check_inputs` reads the prompt sources and checks the model folder, and that built-in prompt
sets suit the tiny model and the rewards (:func:`check_tasks`), before Ray starts;
:func:`setup_failure` turns an error raised while the actors start (a reward or model folder
that cannot be loaded, a constructor that failed on a remote node) into a
:class:`~mixgrpo_ray.config.ConfigError` naming its cause. Both run before the run directory is
created, so a refused run leaves nothing behind.
"""

from __future__ import annotations

import re
from pathlib import Path

from mixgrpo_ray.config import Config, ConfigError
from mixgrpo_ray.data.prompts import load_prompts
from mixgrpo_ray.models.build import PIPELINE_CLASSES
from mixgrpo_ray.models.tiny import tasks

_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$")


def check_inputs(cfg: Config) -> None:
    """Raise ConfigError for a prompt source or model folder the run cannot use, or for a built-in
    prompt set that the tiny model or a reward was not made for (:func:`check_tasks`)."""
    for key, source in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
        try:
            prompts = load_prompts(source)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{key}={source}: {one_line(str(exc))}") from None
        if not prompts:
            raise ConfigError(f"{key}={source}: holds no prompts; choose a source with at least one prompt")
    path = cfg.model.path
    if cfg.model.kind == "tiny" and path and path.startswith(tasks.BUILTIN_PREFIX):
        try:
            tasks.weights_dir(path)
        except ValueError as exc:
            raise ConfigError(f"model.path={path}: {exc}") from None
    elif path and path != "random":
        local = cfg.model.kind == "tiny" or Path(path).is_absolute() or path.startswith((".", "~"))
        if local and not Path(path).expanduser().exists():  # a FLUX hub id is left to the loader
            what = "the tiny model's weights" if cfg.model.kind == "tiny" else f"a {PIPELINE_CLASSES[cfg.model.kind]} folder"
            raise ConfigError(f"model.path={path}: no such file or folder; pass {what}")
    check_tasks(cfg)


def check_tasks(cfg: Config) -> None:
    """Raise ConfigError when a built-in prompt set (``tiny:...``, ``tiny_pairs:...``) is used with
    a tiny model pre-trained on another task (its vocabulary would not cover the prompts) or with
    a reward that reads another task's prompts (``prompt_following`` on ``tiny_pairs:...``)."""
    model_task = None
    if cfg.model.kind == "tiny" and cfg.model.path != "random":
        try:
            model_task = tasks.task_of_weights(cfg.model.path)
        except (OSError, ValueError):  # an unreadable folder is the loader's to report
            model_task = None
    for key, source in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
        data_task = tasks.task_of_source(source)
        if data_task is None:
            continue
        if model_task is not None and model_task.name != data_task.name:
            raise ConfigError(
                f"{key}={source} holds prompts of the tiny model's {data_task.name} task but model.path="
                f"{cfg.model.path or 'null'} is the {model_task.name} model; use model.path=builtin:{data_task.key} "
                f"(the {data_task.key} preset) or the {model_task.key}:train / {model_task.key}:eval prompts"
            )
        for name, rc in cfg.rewards.items():
            owner = next((t for t in tasks.TASKS.values() if rc.kind in t.reward_kinds), data_task)
            if owner.name != data_task.name:
                raise ConfigError(
                    f"rewards.{name}.kind={rc.kind} reads prompts of the tiny model's {owner.name} task but {key}="
                    f"{source} holds {data_task.name} prompts; use {' / '.join(data_task.reward_kinds)} (the "
                    f"{data_task.key} preset)"
                )


def one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0] if lines else "unknown error"


def setup_failure(exc: BaseException) -> ConfigError:
    """The one line for an error raised while the run's actors were starting."""
    if isinstance(exc, ConfigError):
        return exc
    while getattr(exc, "cause", None) is not None and exc.cause is not exc:  # RayTaskError / ActorDiedError
        exc = exc.cause
    text = str(exc)
    causes = [m for m in (_ERROR_LINE.match(ln) for ln in text.splitlines()) if m]
    if causes:  # a remote traceback: its last "XError: message" line is the cause
        kind, message = causes[-1].group(1), causes[-1].group(2)
    else:
        kind, message = type(exc).__name__, one_line(text)
    return ConfigError(f"the run could not start its actors: {kind}: {message.strip()[:400]}; "
                       "fix the model / reward settings named there and run again")
