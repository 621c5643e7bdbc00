"""``mixgrpo-ray study``: a grid of configurations x seeds, each a real training run through the
product, then a table of held-out gains per reward (mean ± standard error over seeds) and plots of
held-out reward against iterations and wall-clock. The job is :mod:`mixgrpo_ray.study.study_runs`, the
grid format :mod:`mixgrpo_ray.study.study_grid`, the outputs :mod:`mixgrpo_ray.study.study_report`.

A bad grid (unknown name, bad YAML, unknown preset or key, a folder holding other runs) is one
line on stderr and exit code 2, and nothing is written. Invoked again with the same grid and
folder, a study continues: finished runs are kept, interrupted ones resume from their checkpoint.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

from mixgrpo_ray.cli.parsing import OneLineParser, parse

PROG = "mixgrpo-ray study"


def build_parser() -> argparse.ArgumentParser:
    from mixgrpo_ray.study.study_grid import builtin_grids

    p = OneLineParser(prog=PROG, description="Train a grid of configurations x seeds through the product and "
                      "report held-out gains per reward with standard errors over seeds.",
                      epilog=f"built-in grids: {', '.join(builtin_grids())} (`{PROG} --list` says what each answers)")
    p.add_argument("grid", nargs="?", help="a built-in grid's name or a grid YAML file")
    p.add_argument("--out", default="", help="study folder (default: studies/<grid>); the same folder continues a study")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="runs trained at once (default 1)")
    p.add_argument("--seeds", default=None, metavar="N|S1,S2,..",
                   help="seeds instead of the grid's: a count N (seeds 1..N) or a comma-separated list")
    p.add_argument("--iterations", type=int, default=None, help="training iterations instead of the grid's")
    p.add_argument("--eval-every", type=int, default=None, help="held-out evaluation every N iterations instead of the grid's")
    p.add_argument("--mix-fractions", default=None, metavar="P1,P2,..",
                   help="test-time mixed-model sampling fractions for the final checkpoints instead of the grid's "
                   "('none': skip)")
    p.add_argument("--configs", default=None, metavar="C1,C2,..",
                   help="train only these configurations of the grid (comma-separated names)")
    p.add_argument("--base", default=None, metavar="P1,P2,..",
                   help="presets under every configuration instead of the grid's base, e.g. tiny_pairs,mixgrpo "
                        "to run a grid on the second built-in task")
    p.add_argument("--estimate", action="store_true", help="print the runs and the time estimate, and exit")
    p.add_argument("--list", action="store_true", help="list the built-in grids and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every configuration")
    return p


def _options(args: argparse.Namespace) -> dict:
    from mixgrpo_ray.study.study_grid import GridError, parse_seeds

    opts: dict = {"iterations": args.iterations, "eval_every": args.eval_every}
    if args.seeds is not None:
        text = args.seeds.strip()
        try:
            value = int(text) if "," not in text else [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            raise GridError(f"--seeds must be a count or a comma-separated list of seeds, got {args.seeds!r}") from None
        opts["seeds"] = parse_seeds(value, "--seeds")
    if args.mix_fractions is not None:
        text = args.mix_fractions.strip()
        try:
            opts["mix_fractions"] = [] if text == "none" else [float(s) for s in text.split(",") if s.strip()]
        except ValueError:
            raise GridError(f"--mix-fractions must be comma-separated fractions or 'none', got {text!r}") from None
    if args.configs is not None:
        opts["configs"] = [c.strip() for c in args.configs.split(",") if c.strip()]
    if args.base is not None:
        opts["base"] = [b.strip() for b in args.base.split(",") if b.strip()]
    return opts


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def list_grids() -> int:
    from mixgrpo_ray.study.study_grid import builtin_grids, load_grid

    for name in builtin_grids():
        g = load_grid(name)
        print(f"{name:<13} {len(g.configs)} configurations x {len(g.seeds)} seeds x {g.iterations} iterations: "
              f"{g.description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    if args.list:
        return list_grids()
    from mixgrpo_ray.config import ConfigError
    from mixgrpo_ray.study.study_runs import estimate, prepare, run_study
    from mixgrpo_ray.study.study_grid import GridError, load_grid, with_options

    try:
        if not args.grid:
            raise GridError("name a grid: a built-in one (see --list) or a grid YAML file")
        if args.parallel < 1:
            raise GridError(f"--parallel must be >= 1, got {args.parallel}")
        grid = with_options(load_grid(args.grid), **_options(args))
        out = Path(args.out or f"studies/{grid.name}")
        specs, configs = prepare(grid, out, args.overrides)
        plan = estimate(grid, specs, configs, args.parallel)
    except (GridError, ConfigError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(f"study {grid.name}: {len(grid.configs)} configurations x {len(grid.seeds)} seeds = {plan['runs']} runs x "
          f"{grid.iterations} iterations = {plan['runs'] * grid.iterations} iterations"
          + (f", {len(grid.mix_fractions)} mixed-sampling evaluations per run" if grid.mix_fractions else ""), flush=True)
    print(f"  {plan['runs'] - plan['todo']} runs finished already; estimated {_minutes(plan['seconds'])} for the "
          f"remaining {plan['todo']} on {os.cpu_count()} CPU(s) with --parallel {args.parallel} "
          "(tiny-model costs measured on a 2-core CPU machine)", flush=True)
    if args.estimate:
        for cname, seconds in plan["per_config_s"].items():
            print(f"  {cname:<24} ~{seconds / 60:.1f} min per run", flush=True)
        return 0
    command = "mixgrpo-ray study " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    def interrupted(signum, frame):  # SIGTERM as Ctrl-C: the runs stop and keep their checkpoints
        raise KeyboardInterrupt

    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, interrupted) if main_thread else None
    try:
        code, files = run_study(grid, out, specs, configs, parallel=args.parallel, command=command,
                                progress=not args.no_progress, log=lambda s: print(s, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to continue (finished runs are kept, the others "
              "resume from their checkpoints)", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if files:
        print((out / "study.md").read_text())
        print("wrote " + ", ".join(str(p) for p in files.values()))
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
