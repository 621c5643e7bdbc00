"""Import contracts: the tree's layers hold (see tests/layers.py and the README's "Layout")."""

import shutil

import layers


def test_every_subpackage_is_assigned_a_layer():
    on_disk = {p.parent.name for p in (layers.ROOT / "mixgrpo_ray").glob("*/__init__.py")}
    assert on_disk == set(layers.LAYERS) - set(layers.ROLES)
    for role in layers.ROLES:
        assert (layers.ROOT / role / "__init__.py").is_file()


def test_the_package_keeps_its_layers():
    violations = layers.check_tree()
    assert not violations, "layer rules broken:\n" + "\n".join(map(str, violations))


def test_a_broken_contract_fails(tmp_path):
    """Each rule, broken once in a copy of the tree, is reported."""
    sources = {}
    for name, folder in layers.SOURCES.items():
        sources[name] = tmp_path / name
        shutil.copytree(folder, sources[name], ignore=shutil.ignore_patterns("__pycache__", "assets"))
    (sources["core"] / "bad_ray.py").write_text("import ray\n")
    (sources["core"] / "bad_config.py").write_text("from mixgrpo_ray.config import Config\n")
    (sources["models"] / "bad_run.py").write_text("def f():\n    from mixgrpo_ray.run.driver import Driver\n")
    (sources["rewards"] / "bad_role.py").write_text("import mixgrpo_ray.learner.group\n")
    (sources["actors"] / "bad_bare.py").write_text("from rewards.registry import build_reward\n")
    found = {(v.path.split("/")[-1], v.imported) for v in layers.check_tree(sources)}
    assert ("bad_ray.py", "ray") in found
    assert ("bad_config.py", "mixgrpo_ray.config") in found
    assert ("bad_run.py", "mixgrpo_ray.run.driver") in found
    assert ("bad_role.py", "mixgrpo_ray.learner.group") in found
    assert ("bad_bare.py", "rewards.registry") in found


def test_installed_names_cannot_collide():
    """pyproject installs the role folders under mixgrpo_ray.*, never as top-level packages."""
    import tomllib

    setuptools = tomllib.loads((layers.ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = setuptools["packages"]
    assert all(p == "mixgrpo_ray" or p.startswith("mixgrpo_ray.") for p in packages)
    for role in layers.ROLES:
        assert setuptools["package-dir"][f"mixgrpo_ray.{role}"] == role
    on_disk = {"mixgrpo_ray." + ".".join(p.parent.relative_to(layers.ROOT / "mixgrpo_ray").parts)
               for p in (layers.ROOT / "mixgrpo_ray").rglob("__init__.py") if p.parent.name != "mixgrpo_ray"}
    assert on_disk | {"mixgrpo_ray"} | {f"mixgrpo_ray.{r}" for r in layers.ROLES} == set(packages)
