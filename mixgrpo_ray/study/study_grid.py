"""A study's grid: configurations x seeds, read from YAML (``mixgrpo-ray study``), the training
runs it asks for, and how long they should take.

A grid file (built-in ones in ``mixgrpo_ray/study/grids/``)::

    description: what the grid answers (one line)
    base: [tiny]                  # presets under every configuration (default: [tiny])
    overrides: [key=value, ...]   # for every configuration
    seeds: 3                      # a count (seeds 1..N) or a list of seeds
    iterations: 300
    eval_every: 50                # held-out evaluation every N iterations (0: before and after only)
    mix_fractions: [0.5, 0.8, 1]  # test-time mixed-model sampling on the final checkpoints (optional)
    configs:                      # name -> presets and key=value overrides, layered on base
      mixgrpo: [mixgrpo]
      frozen_16: [mixgrpo, window.strategy=frozen, window.initial_start=16]

Each (configuration, seed) is one ``mixgrpo-ray train --resume auto`` run in
``STUDY/runs/<config>/seed-<seed>/``; every problem with a grid is a :class:`GridError` or
:class:`~mixgrpo_ray.config.ConfigError`, one line.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from mixgrpo_ray.config import Config, ConfigError, resolve
from mixgrpo_ray.core.mixed_rollout import rollout_nfe
from mixgrpo_ray.core.window import SlidingWindow
from mixgrpo_ray.data.prompts import is_builtin_source, load_prompts

GRID_PACKAGE = "mixgrpo_ray.study"
GRID_FOLDER = "grids"
KEYS = ("description", "base", "overrides", "seeds", "iterations", "eval_every", "mix_fractions", "configs")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: what every study run is set to: no progress bar, dashboard or per-iteration rollout files
STUDY_OVERRIDES = ["run.progress=false", "ray.dashboard=false", "run.log_rollouts=false"]
#: keys the study sets per run (from the grid's seeds, iterations and eval_every, and its folder)
OWN_KEYS = ("run.seed", "run.iterations", "run.eval_every", "run.output_dir", "run.name", "ray.namespace")


class GridError(ValueError):
    """A grid that cannot be run, as one line."""


@dataclass
class Grid:
    name: str
    configs: dict[str, list[str]]
    description: str = ""
    base: list[str] = field(default_factory=lambda: ["tiny"])
    overrides: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    iterations: int = 300
    eval_every: int = 50
    mix_fractions: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "base": self.base, "overrides": self.overrides,
                "seeds": self.seeds, "iterations": self.iterations, "eval_every": self.eval_every,
                "mix_fractions": self.mix_fractions, "configs": self.configs}


@dataclass(eq=False)  # hashed by identity
class RunSpec:
    """One training run of a study: a configuration with one seed."""

    config: str
    seed: int
    presets: list[str]
    overrides: list[str]
    path: Path  # the run directory
    log: Path  # the train command's output

    def argv(self) -> list[str]:
        """Arguments of ``mixgrpo-ray train`` that start or continue this run."""
        return ["train", "--resume", "auto", *[a for p in self.presets for a in ("--config", p)], *self.overrides]


# ---------------------------------------------------------------------------------------------
# Reading a grid
# ---------------------------------------------------------------------------------------------
def builtin_grids() -> list[str]:
    folder = resources.files(GRID_PACKAGE) / GRID_FOLDER
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_grid(name_or_path: str) -> Grid:
    """A built-in grid by name, or a grid YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise GridError(f"grid file {name_or_path!r} does not exist; pass a built-in grid "
                            f"({', '.join(builtin_grids())}) or a YAML path")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise GridError(f"grid file {name_or_path!r} cannot be read ({type(exc).__name__})") from None
        name = path.stem
    else:
        res = resources.files(GRID_PACKAGE) / GRID_FOLDER / f"{name_or_path}.yaml"
        if not NAME.fullmatch(name_or_path) or not res.is_file():
            raise GridError(f"unknown grid {name_or_path!r}; choose one of: {', '.join(builtin_grids())} "
                            "or pass a YAML path")
        text, name = res.read_text(), name_or_path
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GridError(f"grid {name_or_path!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_grid(data, name)


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise GridError(f"{what} must be a list of preset names / paths and key=value overrides, got {value!r}")
    return [v.strip() for v in value]


def parse_seeds(value: Any, what: str = "seeds") -> list[int]:
    """A count ``N`` (seeds 1..N) or a list of distinct non-negative seeds."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, int):
        if value < 1:
            raise GridError(f"{what} must be a count >= 1 or a list of seeds, got {value}")
        return list(range(1, value + 1))
    ok = isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                   for s in value)
    if not ok or len(set(value)) != len(value):
        raise GridError(f"{what} must be a count >= 1 or a list of distinct seeds >= 0, got {value!r}")
    return list(value)


def parse_grid(data: Any, name: str) -> Grid:
    if not isinstance(data, dict):
        raise GridError(f"grid {name!r} must be a YAML mapping with a 'configs' section")
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise GridError(f"grid {name!r}: unknown key {unknown[0]!r}; a grid has: {', '.join(KEYS)}")
    configs = data.get("configs")
    if not isinstance(configs, dict) or not configs:
        raise GridError(f"grid {name!r}: 'configs' must map each configuration's name to a list of presets "
                        "and key=value overrides")
    grid = Grid(name=name, configs={})
    for cname, items in configs.items():
        if not isinstance(cname, str) or not NAME.fullmatch(cname):
            raise GridError(f"grid {name!r}: configuration name {cname!r} must be letters, digits, '_', '.', '-'")
        grid.configs[cname] = _strings(items, f"configs.{cname}")
    grid.description = str(data.get("description") or "")
    if "base" in data:
        grid.base = _strings(data["base"], "base")
    grid.overrides = _strings(data.get("overrides"), "overrides")
    return with_options(grid, seeds=parse_seeds(data["seeds"]) if "seeds" in data else None,
                        iterations=data.get("iterations"), eval_every=data.get("eval_every"),
                        mix_fractions=data.get("mix_fractions"))


def with_options(grid: Grid, *, seeds: Optional[list[int]] = None, iterations: Any = None, eval_every: Any = None,
                 mix_fractions: Any = None, configs: Optional[Sequence[str]] = None,
                 base: Optional[Sequence[str]] = None) -> Grid:
    """``grid`` with the given settings replaced, checked; ``configs`` keeps only those configurations
    (in the grid's order); ``base`` replaces the presets under every configuration (e.g. the same
    grid on another model preset)."""
    if base is not None:
        if not base:
            raise GridError("--base: name at least one preset, e.g. --base tiny_pairs,mixgrpo")
        grid = replace(grid, base=list(base))
    if configs is not None:
        unknown = [c for c in configs if c not in grid.configs]
        if unknown or not configs:
            raise GridError(f"--configs: {', '.join(unknown) or 'none given'} not in grid {grid.name}; choose from "
                            f"{', '.join(grid.configs)}")
        grid = replace(grid, configs={c: items for c, items in grid.configs.items() if c in configs})
    g = replace(grid, seeds=seeds if seeds is not None else grid.seeds,
                iterations=grid.iterations if iterations is None else iterations,
                eval_every=grid.eval_every if eval_every is None else eval_every,
                mix_fractions=grid.mix_fractions if mix_fractions is None else mix_fractions)
    if not isinstance(g.iterations, int) or isinstance(g.iterations, bool) or g.iterations < 1:
        raise GridError(f"iterations must be a whole number >= 1, got {g.iterations!r}")
    if not isinstance(g.eval_every, int) or isinstance(g.eval_every, bool) or g.eval_every < 0:
        raise GridError(f"eval_every must be a whole number >= 0 (0: before and after training only), got "
                        f"{g.eval_every!r}")
    mix = g.mix_fractions
    if not isinstance(mix, list) or not all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 < p <= 1
                                            for p in mix):
        raise GridError(f"mix_fractions must be a list of fractions in (0, 1], got {mix!r}")
    g.mix_fractions = [float(p) for p in mix]
    return g


# ---------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------
def expand_runs(grid: Grid, out: Path, overrides: Sequence[str] = ()) -> list[RunSpec]:
    """Every (configuration, seed) run of ``grid`` in the study folder ``out``, configuration-major.
    ``overrides`` (from the command line) apply to every configuration, under its own items."""
    for text in [*grid.overrides, *overrides, *(i for items in grid.configs.values() for i in items)]:
        key = text.split("=", 1)[0].strip()
        if "=" in text and key in OWN_KEYS:
            raise GridError(f"{key} is set by the study for each run (grid keys seeds, iterations, eval_every "
                            f"and --out); remove {text!r}")
    specs = []
    for cname, items in grid.configs.items():
        presets = [*grid.base, *(i for i in items if "=" not in i)]
        own = [i for i in items if "=" in i]
        for seed in grid.seeds:
            folder = out / "runs" / cname
            per_run = [f"run.seed={seed}", f"run.iterations={grid.iterations}", f"run.eval_every={grid.eval_every}",
                       f"run.output_dir={folder}", f"run.name=seed-{seed}",
                       f"ray.namespace=mixgrpo-study-{cname}-seed-{seed}"]
            specs.append(RunSpec(cname, seed, presets, [*STUDY_OVERRIDES, *grid.overrides, *overrides, *own, *per_run],
                                 folder / f"seed-{seed}", out / "logs" / f"{cname}-seed-{seed}.log"))
    return specs


def resolve_run(spec: RunSpec) -> Config:
    """The run's config (ConfigError naming the configuration when it does not resolve)."""
    try:
        return resolve(spec.presets or None, spec.overrides)
    except ConfigError as exc:
        raise ConfigError(f"configuration {spec.config!r}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# How long
# ---------------------------------------------------------------------------------------------
#: cost of one iteration of the tiny model on the project's 2-core CPU machine, fitted to one run of
#: `mixgrpo-ray bench` (docs/performance.md, 64 samples an iteration): a fixed part, and per sample
#: and model evaluation of the rollout and of the policy update
FIXED_S, ROLLOUT_S, POLICY_S = 0.095, 0.0146 / 64, 0.05 / 64
#: starting a run's local Ray and actors, and an evaluation call
START_S, EVAL_FIXED_S = 25.0, 0.5
#: held-out prompts assumed for a prompt file when data.eval_prompts is 0 (a built-in prompt set
#: is counted: ``tiny:eval`` holds 162, ``tiny_pairs:eval`` 216)
TINY_EVAL_PROMPTS = 162


def eval_prompt_count(cfg: Config) -> int:
    """Prompts one evaluation of ``cfg`` samples (per seed): ``data.eval_prompts``, or when that is
    0 all of a built-in ``data.eval`` set (:data:`TINY_EVAL_PROMPTS` for a file, which is not read)."""
    count = None
    if is_builtin_source(cfg.data.eval):
        try:
            count = len(load_prompts(cfg.data.eval))
        except ValueError:  # an unknown set: the run's preflight reports it
            count = None
    if cfg.data.eval_prompts:
        return cfg.data.eval_prompts if count is None else min(cfg.data.eval_prompts, count)
    return TINY_EVAL_PROMPTS if count is None else count


def model_evaluations(cfg: Config) -> tuple[float, float]:
    """Mean rollout and policy model evaluations per sample over the run's iterations (the window
    moves; docs/algorithm.md eqs. (21)-(22))."""
    s, T = cfg.sampling, cfg.sampling.num_steps
    if cfg.grpo.algorithm == "dancegrpo":
        return float(T), float(max(1, int(cfg.grpo.dance_train_fraction * (T - 1))))
    window = SlidingWindow(num_steps=T, seed=cfg.run.seed, **vars(cfg.window))
    nfe = []
    for _ in range(max(1, cfg.run.iterations)):
        nfe.append(rollout_nfe(T, window.current(), s.tail, s.tail_compression))
        window.step()
    return statistics.mean(nfe), float(cfg.window.size)


def estimate_seconds(cfg: Config, mix_fractions: Sequence[float] = ()) -> float:
    """Rough wall-clock of one study run of ``cfg`` (training, evaluations, mixed-sampling
    evaluations) on a 2-core CPU machine like the project's; a guide, not a promise."""
    rollout, policy = model_evaluations(cfg)
    samples = cfg.data.prompts_per_iteration * cfg.grpo.group_size
    per_iter = FIXED_S + samples * (ROLLOUT_S * rollout + POLICY_S * policy)
    images = eval_prompt_count(cfg) * cfg.data.eval_seeds
    per_eval = EVAL_FIXED_S + images * cfg.sampling.num_steps * ROLLOUT_S
    evals = 2 + (max(0, cfg.run.iterations - 1) // cfg.run.eval_every if cfg.run.eval_every else 0)
    mix = len(mix_fractions) * (START_S / 5 + 2 * per_eval)  # base and checkpoint, in-process
    return START_S + cfg.run.iterations * per_iter + evals * per_eval + mix
