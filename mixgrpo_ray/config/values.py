"""The value types of config fields and the choices a field accepts.

Values come from YAML, where ``1e-5`` (no dot) reads as a string and ``3.0`` may stand for an
integer, so the types coerce those few cases and nothing else:

* ``Int``: an integer, or a float with no fraction (``3.0`` -> 3); never a bool or a string.
* ``Float``: a number, or a string that parses as one (``"1e-5"``); never a bool.
* ``Bool``: ``true`` / ``false`` only (no 0/1, no ``"yes"``).
* ``Str``: a string, or a number written where a string is meant (``name: 7`` -> ``"7"``).
* ``Amount``: a non-negative int or float kept as given (a Ray resource quantity).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Strict, StrictBool
from pydantic_core import PydanticCustomError

from mixgrpo_ray.core.window import AT_END, INTERVAL_SCHEDULES, STRATEGIES

# Built-in reward kinds (the keys of mixgrpo_ray.rewards.registry.REWARD_KINDS; a test keeps them
# equal). The config layer names them itself so that it imports nothing from the roles above it.
# ``python`` is the user's own reward: a class or function named by ``rewards.<name>.target``.
REWARD_KIND_NAMES: tuple[str, ...] = (
    "prompt_following", "quality", "object_size", "pair_following", "pair_layout", "hps", "pickscore", "clip",
    "imagereward", "unifiedreward", "python",
)
#: the form of ``rewards.<name>.target``: ``package.module:Attribute`` (dotted names on both sides)
PYTHON_TARGET_PATTERN = r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*"

ModelKind = Literal["tiny", "flux", "sd3", "qwen_image"]
ModelDtype = Literal["auto", "fp32", "bf16", "fp16"]
SdeKind = Literal["flow_grpo", "dance_grpo"]
Tail = Literal["euler", "dpm2"]
Strategy = Literal[STRATEGIES]  # type: ignore[valid-type]
IntervalSchedule = Literal[INTERVAL_SCHEDULES]  # type: ignore[valid-type]
AtEnd = Literal[AT_END]  # type: ignore[valid-type]
Algorithm = Literal["mixgrpo", "dancegrpo"]
AdvantageMode = Literal["advantage_aggr", "reward_aggr"]
Backend = Literal["auto", "gloo", "nccl"]
PublishDtype = Literal["fp32", "bf16"]
Pipeline = Literal["sync", "async"]
Placement = Literal["disaggregated", "colocated"]
ColocatedWeights = Literal["auto", "module", "copy"]
LearnerStrategy = Literal["replicate", "fsdp"]
SyncTransport = Literal["object_store", "collective"]
RewardKind = Literal[REWARD_KIND_NAMES]  # type: ignore[valid-type]
LoggerName = Literal["jsonl", "tensorboard", "wandb", "mlflow"]
WandbMode = Literal["auto", "offline", "online", "disabled"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integral_float_to_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _numeric_string_to_float(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if _is_number(value):
        return float(value)
    return value


def _number_to_str(value: Any) -> Any:
    return str(value) if _is_number(value) else value


def _amount(value: Any) -> Any:
    if not _is_number(value) or value < 0:
        raise PydanticCustomError("config_value", f"must be a number >= 0, got {value!r}")
    return value


Int = Annotated[int, BeforeValidator(_integral_float_to_int), Strict()]
Float = Annotated[float, BeforeValidator(_numeric_string_to_float), Strict()]
Bool = StrictBool
Str = Annotated[str, BeforeValidator(_number_to_str), Strict()]
Amount = Annotated[Any, BeforeValidator(_amount)]
