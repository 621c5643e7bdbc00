"""The package's layer rules, checked on the source (no imports executed).

Layers, bottom to top: a module may import the project's modules only from its own layer or a
lower one; the three role packages never import one another; the lower layers import no Ray.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: sub-package -> layer (role packages share a layer but may not import one another)
LAYERS = {
    "core": 0, "common": 1, "config": 2, "models": 3, "data": 4, "algo": 5, "cluster": 6,
    "actors": 7, "learner": 7, "rewards": 7, "run": 8, "cli": 9,
}
ROLES = ("actors", "learner", "rewards")
#: layers below this one may not import Ray
FIRST_RAY_LAYER = LAYERS["cluster"]
#: where each sub-package's source lives (the role packages are top-level folders)
SOURCES = {name: (ROOT / name if name in ROLES else ROOT / "mixgrpo_ray" / name) for name in LAYERS}


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
    relative imports are resolved against the file's package."""
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


def subpackage_of(module: str) -> str | None:
    """``mixgrpo_ray.core.window`` -> ``core``; a bare role name (``rewards.x``) is flagged too."""
    parts = module.split(".")
    if parts[0] == "mixgrpo_ray" and len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    if parts[0] in ROLES:
        return "bare:" + parts[0]
    return None


def check_file(path: Path, package: str) -> list[Violation]:
    layer = LAYERS[package]
    rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    found = []
    for line, module in imports_of(path):
        if module.split(".")[0] == "ray" and layer < FIRST_RAY_LAYER:
            found.append(Violation(rel, line, module, f"layer '{package}' may not import Ray"))
            continue
        target = subpackage_of(module)
        if target is None:
            continue
        if target.startswith("bare:"):
            found.append(Violation(rel, line, module, "role packages are imported as mixgrpo_ray.<role>"))
        elif LAYERS[target] > layer:
            found.append(Violation(rel, line, module, f"'{package}' (layer {layer}) may not import the higher layer '{target}'"))
        elif package in ROLES and target in ROLES and target != package:
            found.append(Violation(rel, line, module, f"role '{package}' may not import another role '{target}'"))
    return found


def check_tree(sources: dict[str, Path] = SOURCES) -> list[Violation]:
    found = []
    for package, folder in sources.items():
        for path in sorted(folder.rglob("*.py")):
            found += check_file(path, package)
    return found
