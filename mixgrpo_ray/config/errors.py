"""ConfigError, and pydantic's ValidationError turned into its one line.

Every configuration problem reaches the user as one line (exit code 2) naming the dotted key,
what was given and what would be accepted, e.g.::

    unknown config key 'run.iteratons' (did you mean 'iterations'?)
    run.iterations must be >= 0, got -1
    model.kind must be one of tiny, flux; got 'sd'

Validators of the config models raise ``PydanticCustomError`` of two kinds: ``config_value``
(the message follows the key: ``"must be ..."``) and ``config_line`` (the message is the whole
line, for checks that span several keys).
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

# pydantic error type -> what the key must be (``{...}`` filled from the error's context)
_MUST_BE = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "greater_than": "> {gt}",
    "greater_than_equal": ">= {ge}",
    "less_than": "< {lt}",
    "less_than_equal": "<= {le}",
}


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line (exit code 2)."""


def line_error(message: str) -> PydanticCustomError:
    """A validator's error whose message is the whole line (a check across several keys)."""
    return PydanticCustomError("config_line", message)


def value_error(message: str) -> PydanticCustomError:
    """A validator's error about one key; ``message`` follows the key (``"must be ..."``)."""
    return PydanticCustomError("config_value", message)


def suggest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(choices)}"


def _unwrap(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _field_type(model: Any, loc: tuple) -> tuple[Any, Any]:
    """(the model owning the last key of ``loc``, that key's annotation) walking from ``model``;
    a mapping field (``rewards``) takes one key of ``loc`` for its entry name."""
    owner, tp = None, model
    parts = list(loc)
    while parts:
        tp = _unwrap(tp)
        if typing.get_origin(tp) is dict:
            parts.pop(0)
            tp = typing.get_args(tp)[1]
            continue
        if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
            return None, None
        part = parts.pop(0)
        field = tp.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return (tp, None) if not parts else (None, None)
        owner, tp = tp, field.annotation
    return owner, tp


def _num(value: Any) -> Any:
    """``0.0`` shown as ``0`` (bounds and integral inputs read as the user wrote them)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return int(value)
    return value


def _message(err: Any, model: Any, prefix: str) -> str:
    loc = tuple(err.get("loc", ()))
    path = ".".join([prefix] * bool(prefix) + [str(p) for p in loc]) or "config"
    kind, given, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "config_line":
        return err["msg"]
    if kind == "config_value":
        return f"{path} {err['msg']}"
    if kind in ("extra_forbidden", "no_such_attribute", "invalid_key"):
        owner = _unwrap(_field_type(model, loc[:-1])[1])
        names = list(getattr(owner, "model_fields", {}) or {})
        hint = suggest(str(loc[-1]), names) if names and loc else ""
        return f"unknown config key {path!r}{hint}"
    if kind == "literal_error":
        _, tp = _field_type(model, loc)
        choices = typing.get_args(_unwrap(tp)) if tp is not None else ()
        listed = ", ".join(map(str, choices)) if choices else ctx.get("expected", "?")
        return f"{path} must be one of {listed}; got {given!r}"
    if kind in _MUST_BE:
        bounds = {k: _num(v) for k, v in ctx.items()}
        return f"{path} must be {_MUST_BE[kind].format(**bounds)}, got {_num(given)!r}"
    return f"{path}: {err.get('msg', 'invalid value')} (got {given!r})"


def config_error(exc: ValidationError, model: Any, prefix: str = "") -> ConfigError:
    """The :class:`ConfigError` of ``exc``'s first error; ``model`` is the class that was being
    validated (to suggest key names), ``prefix`` the dotted key of that model in the config."""
    errors = exc.errors(include_url=False)
    if not errors:
        return ConfigError(f"{prefix or 'config'} is invalid")
    return ConfigError(" ".join(_message(errors[0], model, prefix).split("\n")))
