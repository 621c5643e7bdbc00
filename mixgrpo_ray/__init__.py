"""mixgrpo-ray: MixGRPO post-training of flow-matching text-to-image models on Ray.

Layers, bottom to top (each imports only layers below it; ``tests/repo/test_layers.py`` enforces it):
``core`` (math) -> ``common`` (helpers) -> ``config`` (typed sections) -> ``models`` (policy and
reward interfaces, FLUX, tiny) -> ``data`` (prompts) -> ``algo`` (sampling with a policy, the GRPO
update) -> ``cluster`` (Ray helpers) -> the roles ``actors``, ``learner``, ``rewards`` ->
the job rooms, one per command (``plan``, ``eval``; then ``train``, ``export``, ``sample``,
``pretrain_tiny``; then ``bench``, ``study``) -> ``cli`` (parses and calls). See
docs/architecture.md.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

# The role packages are the repository's top-level folders actors/, learner/ and rewards/. An
# install maps them under this package (pyproject.toml's package-dir); in a source checkout
# (``ray job submit --working-dir .``, ``python -m pytest`` from the repository root) the
# repository root is searched for them too, so ``mixgrpo_ray.actors`` resolves the same way.
_ROOT = _Path(__file__).resolve().parent.parent
if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "learner" / "__init__.py").is_file():
    __path__.append(str(_ROOT))  # type: ignore[name-defined]  # noqa: F821
