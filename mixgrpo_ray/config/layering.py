"""Presets, merging and ``section.key=value`` overrides, and :func:`resolve` putting them together.

A configuration is built from one or more presets (shipped YAML files in
``mixgrpo_ray/config/presets/`` named by stem, or paths) merged in order, then command-line
overrides ``section.key=value`` (values parsed as YAML: ``3``, ``1e-4``, ``true``,
``[0.9, 0.999]``; ``null`` removes the key). Everything is validated before any actor starts.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mixgrpo_ray.config.errors import ConfigError
from mixgrpo_ray.config.root import Config, from_dict

PRESET_PACKAGE = "mixgrpo_ray.config.presets"
DEFAULT_PRESET = "tiny"


def preset_names() -> list[str]:
    files = resources.files(PRESET_PACKAGE).iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml"))


def load_preset(name_or_path: str, _seen: tuple = ()) -> dict:
    """The dict of a shipped preset (by stem, e.g. ``tiny``) or of a YAML file path. A top-level
    ``base: <preset or path>`` starts it from that preset (``sd35_lora`` is ``sd35`` with LoRA)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; pass a preset name ({', '.join(preset_names())}) or a YAML path")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {str(path)!r} cannot be read ({exc.__class__.__name__}); save it as UTF-8 YAML") from None
    else:
        res = resources.files(PRESET_PACKAGE) / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown preset {name_or_path!r}; choose one of: {', '.join(preset_names())} or pass a YAML path")
        text = res.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {name_or_path!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {name_or_path!r} must be a YAML mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config {name_or_path!r}: base must name one preset or YAML file, got {base!r}")
    if base in _seen or base == name_or_path:
        raise ConfigError(f"config {name_or_path!r}: base {base!r} leads back to itself")
    return deep_merge(load_preset(base, (*_seen, name_or_path)), data)


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base`` (nested dicts merged, everything else replaced)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. run.iterations=10)")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_override(data: dict, parts: list[str], value: Any) -> dict:
    """Set ``a.b.c`` to ``value``; ``null`` removes the key (e.g. ``rewards.hps=null`` drops a
    reward pool, ``model.path=null`` goes back to the default)."""
    if value is None:
        out = deep_merge(data, {})
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                return out
            node[part] = dict(node[part])
            node = node[part]
        node.pop(parts[-1], None)
        return out
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return deep_merge(data, nested)


def resolve(presets: list[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Presets merged in order, then overrides, built and validated.

    A model preset (one with a ``model`` section, e.g. ``tiny``) comes first; algorithm presets
    (``mixgrpo``, ``mixgrpo_flash``, ``mixgrpo_flash_star``, ``dancegrpo``) layer on top of it.
    When the first preset names no model, the default ``tiny`` preset goes under it.
    """
    loaded = [load_preset(name) for name in (presets or [DEFAULT_PRESET])]
    if "model" not in loaded[0]:
        loaded.insert(0, load_preset(DEFAULT_PRESET))
    data: dict = {}
    for preset in loaded:
        data = deep_merge(data, preset)
    for text in overrides or []:
        parts, value = parse_override(text)
        data = apply_override(data, parts, value)
    return from_dict(data)
