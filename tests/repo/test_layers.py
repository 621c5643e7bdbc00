"""Import contracts: the tree's rooms and layers hold (tests/helpers/layers.py; docs/architecture.md)."""

import shutil
from collections import Counter

import layers


def test_every_room_is_assigned_a_layer():
    """Every sub-package and every module directly in ``mixgrpo_ray/`` is a room with a layer."""
    package = layers.ROOT / "mixgrpo_ray"
    on_disk = {p.parent.name for p in package.glob("*/__init__.py")}
    on_disk |= {p.stem for p in package.glob("*.py") if p.name != "__init__.py"}
    assert on_disk == set(layers.LAYERS) - set(layers.ROLES)
    assert set(layers.MODULE_ROOMS) == {p.stem for p in package.glob("*.py") if p.name != "__init__.py"}
    for role in layers.ROLES:
        assert (layers.ROOT / role / "__init__.py").is_file()


def test_the_package_keeps_its_layers():
    violations = layers.check_tree()
    assert not violations, "layer rules broken:\n" + "\n".join(map(str, violations))


def test_a_broken_contract_fails(tmp_path):
    """Each rule, broken once in a copy of the tree, is reported."""
    sources = {}
    for name, source in layers.SOURCES.items():
        sources[name] = tmp_path / source.name
        if source.is_dir():
            shutil.copytree(source, sources[name], ignore=shutil.ignore_patterns("__pycache__", "assets", "*_assets"))
        else:
            shutil.copy(source, sources[name])
    (sources["core"] / "bad_ray.py").write_text("import ray\n")
    (sources["core"] / "bad_config.py").write_text("from mixgrpo_ray.config import Config\n")
    (sources["models"] / "bad_run.py").write_text("def f():\n    from mixgrpo_ray.train.driver import Driver\n")
    (sources["rewards"] / "bad_role.py").write_text("import mixgrpo_ray.learner.group\n")
    (sources["actors"] / "bad_bare.py").write_text("from rewards.registry import build_reward\n")
    (sources["bench"] / "bad_sibling.py").write_text("from mixgrpo_ray.study.study_runs import study_ray\n")
    (sources["plan"] / "bad_job.py").write_text("import mixgrpo_ray.export\n")
    sources["export"].write_text(sources["export"].read_text() + "\nfrom mixgrpo_ray.sample import x\n")
    found = {(v.path.split("/")[-1], v.imported) for v in layers.check_tree(sources, tmp_path)}
    assert ("bad_ray.py", "ray") in found
    assert ("bad_config.py", "mixgrpo_ray.config") in found
    assert ("bad_run.py", "mixgrpo_ray.train.driver") in found
    assert ("bad_role.py", "mixgrpo_ray.learner.group") in found
    assert ("bad_bare.py", "rewards.registry") in found
    assert ("bad_sibling.py", "mixgrpo_ray.study.study_runs") in found
    assert ("bad_job.py", "mixgrpo_ray.export") in found
    assert ("export.py", "mixgrpo_ray.sample") in found
    # and the untouched copy had none
    assert all(name.startswith("bad_") or name == "export.py" for name, _ in found)


def test_no_module_name_repeats():
    """A file name says which module it is: no two modules share one, anywhere in the source."""
    names = Counter()
    for source in layers.SOURCES.values():
        names.update(p.name for p in layers.files_of(source) if p.name not in ("__init__.py", "__main__.py"))
    assert not [n for n, c in names.items() if c > 1], names.most_common(5)


def test_no_package_is_a_crowd():
    """No package holds more than 12 modules directly (a bigger one is split into named parts)."""
    packages = [p.parent for s in layers.SOURCES.values() if s.is_dir() for p in s.rglob("__init__.py")]
    assert len(packages) > len(layers.LAYERS) - len(layers.MODULE_ROOMS)  # the rooms and their parts
    for folder in packages:
        count = sum(1 for p in folder.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
        assert count <= 12, f"{folder.relative_to(layers.ROOT)} holds {count} modules"


def test_the_cli_only_parses_and_calls():
    """``cli/`` holds one ``<command>_cli.py`` per command (plus the shared parsing helpers)."""
    cli = layers.ROOT / "mixgrpo_ray" / "cli"
    commands = {p.stem for p in cli.glob("*.py")} - {"__init__", "__main__", "parsing"}
    assert commands and all(name.endswith("_cli") for name in commands)


def test_tests_do_not_import_one_another():
    """Shared test code lives in tests/helpers or tests/conftest.py, never in a test module."""
    tests = layers.ROOT / "tests"
    for path in tests.rglob("test_*.py"):
        for line, module in layers.imports_of(path):
            assert not module.split(".")[0].startswith("test_") and not module.startswith("tests."), \
                f"{path.relative_to(tests)}:{line} imports {module}"


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
    for role in layers.ROLES:
        on_disk |= {"mixgrpo_ray." + ".".join((role,) + p.parent.relative_to(layers.ROOT / role).parts)
                    for p in (layers.ROOT / role).rglob("__init__.py")}
    assert on_disk | {"mixgrpo_ray"} == set(packages)
