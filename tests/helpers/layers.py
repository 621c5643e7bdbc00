"""The package's layer rules, checked on the source (no imports executed).

Layers, bottom to top: a module may import the project's modules only from its own layer or a
lower one; rooms that share a layer never import one another (the three role packages, and the
job rooms of one level: ``plan``/``eval``, ``train``/``export``/``sample``/``pretrain_tiny``,
``bench``/``study``); the lower layers import no Ray. A room is a sub-package of ``mixgrpo_ray``
(or a role folder) or, for a job small enough, one module directly in ``mixgrpo_ray``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: room -> layer (rooms sharing a layer may not import one another, except the lower layers'
#: single packages, which are alone on theirs)
LAYERS = {
    "core": 0, "common": 1, "config": 2, "models": 3, "data": 4, "algo": 5, "cluster": 6,
    "actors": 7, "learner": 7, "rewards": 7,
    "plan": 8, "eval": 8,
    "train": 9, "export": 9, "sample": 9, "pretrain_tiny": 9,
    "bench": 10, "study": 10,
    "cli": 11,
}
ROLES = ("actors", "learner", "rewards")
#: job rooms that are one module (``mixgrpo_ray/<name>.py``) rather than a package
MODULE_ROOMS = ("export", "sample", "pretrain_tiny")
#: layers below this one may not import Ray
FIRST_RAY_LAYER = LAYERS["cluster"]


def source_of(name: str, root: Path = ROOT) -> Path:
    """Where room ``name`` lives: a role folder at the top level, a module, or a sub-package."""
    if name in ROLES:
        return root / name
    if name in MODULE_ROOMS:
        return root / "mixgrpo_ray" / f"{name}.py"
    return root / "mixgrpo_ray" / name


SOURCES = {name: source_of(name) for name in LAYERS}


@dataclass
class Violation:
    path: str
    line: int
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.imported}: {self.rule}"


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import statement in ``path`` (also inside functions);
    relative imports are refused (the rules read absolute names)."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: use absolute imports (mixgrpo_ray....)")
            out.append((node.lineno, module))
            out += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return out


def room_of(module: str) -> str | None:
    """``mixgrpo_ray.core.window`` -> ``core``, ``mixgrpo_ray.export`` -> ``export``; a bare
    role name (``rewards.x``) is flagged too."""
    parts = module.split(".")
    if parts[0] == "mixgrpo_ray" and len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    if parts[0] in ROLES:
        return "bare:" + parts[0]
    return None


def check_file(path: Path, room: str, root: Path = ROOT) -> list[Violation]:
    layer = LAYERS[room]
    rel = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    found = []
    for line, module in imports_of(path):
        if module.split(".")[0] == "ray" and layer < FIRST_RAY_LAYER:
            found.append(Violation(rel, line, module, f"layer '{room}' may not import Ray"))
            continue
        target = room_of(module)
        if target is None or target == room:
            continue
        if target.startswith("bare:"):
            found.append(Violation(rel, line, module, "role packages are imported as mixgrpo_ray.<role>"))
        elif LAYERS[target] > layer:
            found.append(Violation(rel, line, module, f"'{room}' (layer {layer}) may not import the higher layer '{target}'"))
        elif LAYERS[target] == layer:
            found.append(Violation(rel, line, module, f"'{room}' may not import '{target}', a room on its own layer"))
    return found


def files_of(source: Path) -> list[Path]:
    return [source] if source.suffix == ".py" else sorted(source.rglob("*.py"))


def check_tree(sources: dict[str, Path] = SOURCES, root: Path = ROOT) -> list[Violation]:
    found = []
    for room, source in sources.items():
        for path in files_of(source):
            found += check_file(path, room, root)
    return found
