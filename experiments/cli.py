"""The ``scm`` command line.

Usage::

    scm cases [CASE]          list the cases, their parameters and allowed ranges
    scm run CASE [--hours H] [--dt S] [--levels N] [--turbulence NAME] [--columns N]
                 [--seed S] [--out FILE.nc] [--plot DIR] [--set NAME=VALUE ...]
                 [--parameterization PATH] [--no-progress] [--no-cache]
    scm truth [--case diurnal|gabls1|dry_cbl]
              [--split train|validation|test|extrapolation] [--scenarios N]
              [--days D] [--spinup-days D] [--seed S] [--levels N] [--refinement R]
              [--fine-dt S] [--coarse-dt S] --out FILE.nc [--no-progress] [--no-cache]
    scm experiment turbulence [--quick] [--config FILE] [--seeds N] [--workers N] --out DIR
                              [--no-progress] [--no-cache]
    scm train [--config FILE] [--quick] [--coupling replace|residual]
              [--mode offline|online|finetuned] [--seed S] --truth DIR --out DIR
    scm bench stability [--model PATH ...] [--baseline NAME] [--physics NAME ...]
                        [--scenarios test|extrapolation|all] [--days N] [--no-truth]
                        [--fallback off|on|both] [--drift-theta K] [--drift-wind M]
                        [--bound FIELD=LOW:HIGH ...] [--truth DIR]
                        [--scenarios-per-set N] [--per-family N] [--out DIR]

``scm truth`` writes coarse-grained high-resolution truth of sampled scenarios of one case
(``diurnal`` by default: 15 days, 5 of them spin-up; ``gabls1`` and ``dry_cbl``: the case's
own length, no spin-up; ``--levels`` is the coarse grid; see ``experiments.truth`` and
docs/truth.md).

Every input is validated before anything is compiled: a bad value prints one line naming the
field and its allowed range to stderr and exits with status 2. A run whose columns (or truth
scenarios) fail (non-finite or out of physical bounds) still writes its file, warns when and
where each failed, and exits 0. Compiled programs are kept on disk (JAX's persistent
compilation cache, see ``enable_compilation_cache``), so a repeated run of the same
configuration skips most of its compilation.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from experiments import cases, scenarios, truth
from experiments.run import case_dataset, run_case
from scm.errors import ConfigurationError, check_choice, check_range
from scm.integration import DEFAULT_BOUNDS
from scm.io import write_netcdf

PROGRAM = "scm"

#: Failed columns listed one by one before the rest are summarized.
MAX_FAILURE_LINES = 10


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``scm`` with one subparser per command."""
    parser = _Parser(prog=PROGRAM, description="Differentiable single-column atmospheric model.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    listing = commands.add_parser("cases", help="list the cases and their parameters",
                                  description="List the cases, their parameters and ranges.")
    listing.add_argument("case", nargs="?", help="show only this case")
    listing.set_defaults(handler=command_cases)

    run = commands.add_parser(
        "run", help="run a case and write a netCDF file",
        description="Run a case (column 0 unperturbed, further columns with seeded "
                    "perturbations of the initial state) and write the trajectory to netCDF.",
    )
    run.add_argument("case", metavar="CASE", help="case name (see 'scm cases')")
    run.add_argument("--hours", type=float, help="simulated time (h; default: the case's)")
    run.add_argument("--dt", type=float, help="time step (s; default: the case's)")
    run.add_argument("--levels", type=int, help="number of vertical levels")
    run.add_argument("--turbulence", metavar="NAME",
                     help=f"turbulence closure: {', '.join(cases.TURBULENCE_NAMES)}")
    run.add_argument("--columns", type=int, default=1,
                     help="columns run at once (default 1: the unperturbed case)")
    run.add_argument("--seed", type=int, default=0, help="seed of the perturbations (default 0)")
    run.add_argument("--out", metavar="FILE.nc", help="output file (default: CASE.nc here)")
    run.add_argument("--plot", metavar="DIR", help="also write quick-look PNGs into DIR")
    run.add_argument("--set", metavar="NAME=VALUE", dest="assignments", nargs="+",
                     action="extend", default=[], help="case parameter (see 'scm cases CASE')")
    run.add_argument("--parameterization", metavar="PATH",
                     help="trained artifact directory whose network takes its slot (the "
                          "closure defaults to the one it was trained with, the levels to its)")
    add_progress_and_cache_options(run)
    run.set_defaults(handler=command_run)

    make = commands.add_parser(
        "truth", help="generate coarse-grained high-resolution truth of sampled scenarios",
        description="Run sampled scenarios of a case (diurnal, gabls1 or dry_cbl) at high "
                    "resolution with the TKE closure, discard the spin-up, coarse-grain state "
                    "and turbulent fluxes onto the coarse grid and write them to netCDF (see "
                    "docs/truth.md).",
    )
    make.add_argument("--case", default=scenarios.CASE,
                      help=f"scenario family: {', '.join(scenarios.CASES)} "
                           f"(default {scenarios.CASE})")
    make.add_argument("--split", default="train",
                      help=f"scenario set: {', '.join(scenarios.SPLITS)} (default train)")
    make.add_argument("--scenarios", type=int, default=16,
                      help="number of scenarios (default 16)")
    lengths = truth.DEFAULT_LENGTHS.items()
    make.add_argument("--days", type=float,
                      help="simulated days, spin-up included (default: the case's, "
                           + ", ".join(f"{case} {days:.4g}" for case, (days, _) in lengths)
                           + ")")
    make.add_argument("--spinup-days", type=float,
                      help="days discarded at the start (default: the case's, "
                           + ", ".join(f"{case} {spin:g}" for case, (_, spin) in lengths)
                           + ")")
    make.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    make.add_argument("--levels", type=int, default=32,
                      help="coarse levels, the grid of the file (default 32)")
    make.add_argument("--refinement", type=int, default=4,
                      help="fine levels per coarse level (default 4)")
    make.add_argument("--fine-dt", type=float, default=30.0,
                      help="time step of the high-resolution run (s; default 30)")
    make.add_argument("--coarse-dt", type=float, default=300.0,
                      help="output interval, the coarse model's time step (s; default 300)")
    make.add_argument("--out", metavar="FILE.nc", required=True, help="output file")
    add_progress_and_cache_options(make)
    make.set_defaults(handler=command_truth)

    experiment = commands.add_parser(
        "experiment", help="run a canonical experiment (truth, training, evaluation)",
        description="Run a canonical experiment end to end: 'turbulence' generates truth, "
                    "trains the network that replaces the coarse turbulence scheme and the one "
                    "that corrects the local closure, offline and online, for every seed, and "
                    "scores them against the physics baseline (see experiments/turbulence.py).")
    experiment.add_argument("name", metavar="NAME", help="experiment: turbulence")
    experiment.add_argument("--quick", action="store_true",
                            help="a small version of everything (about 50 s, 45 s with a "
                                 "warm compilation cache)")
    experiment.add_argument("--config", metavar="FILE",
                            help="settings file (TOML or JSON; any ExperimentConfig field, "
                                 "over the defaults or --quick's)")
    experiment.add_argument("--seeds", type=int, help="number of seeds (default 3; quick 1)")
    experiment.add_argument("--out", metavar="DIR", required=True, help="output directory")
    experiment.add_argument("--workers", type=int, default=2,
                            help="models trained and evaluated at once, in threads (default 2)")
    add_progress_and_cache_options(experiment)
    experiment.set_defaults(handler=command_experiment)

    training = commands.add_parser(
        "train", help="train one network on truth, selected on the validation set",
        description="Train one network (coupling, mode, seed) on DIR's training truth with "
                    "the experiment's settings or a config file, keep the weights that score "
                    "best on the validation truth (both made in DIR when missing), and write "
                    "the artifact with its validation scores (see experiments/turbulence.py).")
    training.add_argument("--config", metavar="FILE",
                          help="settings file (TOML or JSON; ExperimentConfig fields)")
    training.add_argument("--quick", action="store_true", help="the quick settings as base")
    training.add_argument("--coupling", default="residual", help="replace or residual "
                                                                 "(default residual)")
    training.add_argument("--mode", default="online",
                          help="offline, online or finetuned (default online)")
    training.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    training.add_argument("--truth", metavar="DIR", required=True,
                          help="directory with (or for) truth_train.nc, truth_validation.nc")
    training.add_argument("--out", metavar="DIR", required=True, help="artifact directory")
    add_progress_and_cache_options(training)
    training.set_defaults(handler=command_train)

    bench = commands.add_parser(
        "bench", help="benchmarks: stability (rollout stability of trained models)",
        description="Judge trained parameterizations for coupled use: long runs of every model "
                    "on the test and extrapolation scenarios beside the physics baseline, with "
                    "intervals over scenarios and seeds and per-family tables; survival "
                    "(drift counts as failure), skill, climate, drift, conservation, "
                    "Jacobian spectra; --no-truth: truth-free long runs (see "
                    "experiments/stability.py).")
    bench.add_argument("name", metavar="NAME", help="benchmark: stability")
    bench.add_argument("--model", metavar="PATH", dest="models", action="append", default=[],
                       help="trained artifact directory (repeat for several)")
    bench.add_argument("--baseline", default="local",
                       help="physics closure beside them (default local)")
    bench.add_argument("--physics", metavar="NAME", action="append", default=[],
                       help="another physics closure to judge (e.g. tke; repeat)")
    bench.add_argument("--scenarios", default="all",
                       help="test, extrapolation or all (default all)")
    bench.add_argument("--days", type=float, default=30.0, help="days per run (default 30)")
    bench.add_argument("--no-truth", dest="truth_runs", action="store_false",
                       help="truth-free runs from the case's initial state (e.g. --days 365)")
    bench.add_argument("--fallback", default="off",
                       help="artifacts' out-of-distribution fallback: off, on or both "
                            "(default off)")
    bench.add_argument("--drift-theta", type=float, default=3.0,
                       help="daily-mean θ error (K) beyond which a run has failed (default 3)")
    bench.add_argument("--drift-wind", type=float, default=5.0,
                       help="daily-mean wind error (m/s) beyond which a run has failed "
                            "(default 5)")
    bench.add_argument("--bound", metavar="FIELD=LOW:HIGH", dest="bounds", action="append",
                       default=[], help="physical bounds of a field (e.g. thl=200:400; "
                                        "defaults: scm.integration.DEFAULT_BOUNDS)")
    bench.add_argument("--truth", metavar="DIR",
                       help="directory with truth_test.nc / truth_extrapolation.nc (default: "
                            "--out; missing files are generated there)")
    bench.add_argument("--scenarios-per-set", type=int, default=16,
                       help="test scenarios when truth or scenarios are drawn (default 16)")
    bench.add_argument("--per-family", type=int, default=4,
                       help="scenarios per extrapolation family when drawn (default 4)")
    bench.add_argument("--out", metavar="DIR", default="stability",
                       help="output directory (default ./stability)")
    add_progress_and_cache_options(bench)
    bench.set_defaults(handler=command_bench)
    return parser


def add_progress_and_cache_options(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` and ``--no-cache``, shared by every command that computes."""
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="do not use the persistent compilation cache (see SCM_CACHE_DIR)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scm`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return args.handler(args)
    except ConfigurationError as error:
        print(f"{PROGRAM} {args.command}: error: {error}", file=sys.stderr)
        return 2


def command_cases(args: argparse.Namespace) -> int:
    """Print every case (or one) with its description and parameter table."""
    descriptions = cases.describe_cases()
    names = list(descriptions)
    if args.case is not None:
        if args.case not in descriptions:
            raise ConfigurationError(
                f"unknown case {args.case!r}; choose one of: {', '.join(names)}")
        names = [args.case]
    for name in names:
        print(f"{name}: {descriptions[name]}")
        print(f"    defaults: {_defaults(cases.build_case(name))}")
        definition = cases.definition(name)
        for reference in definition.references:
            print(f"    source: {reference}")
        specs = cases.case_parameters(name)
        if specs:
            print("    parameters (--set NAME=VALUE):")
            _print_table([(p, _show(d), f"[{_show(lo)}, {_show(hi)}]", units, text)
                          for p, (d, lo, hi, units, text) in specs.items()])
        if definition.ranges:
            print("    published ranges:")
            _print_table([(r.name, f"[{_show(r.low)}, {_show(r.high)}]", r.units, "", r.text)
                          for r in definition.ranges])
    print(f"turbulence closures (--turbulence): {', '.join(cases.TURBULENCE_NAMES)}")
    return 0


def _print_table(rows) -> None:
    """Rows of five cells, the first four padded to their column's width."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    for row in rows:
        cells = "  ".join(str(c).ljust(w) for c, w in zip(row[:4], widths, strict=True))
        print(f"      {cells}  {row[4]}".rstrip())


def _defaults(case) -> str:
    """One line on a case's default grid, time step, length and closure."""
    grid = case.model.grid
    turbulence = case.parameters.get("turbulence", type(case.model.turbulence).__name__)
    return (f"{grid.n_levels} levels to {float(grid.z_interface[-1]):g} m, dt {case.dt:g} s, "
            f"{case.hours:g} h, turbulence {turbulence}, output every "
            f"{case.dt * case.save_every:g} s")


def command_run(args: argparse.Namespace) -> int:
    """Validate everything, run the case, write netCDF (and plots), print a summary."""
    start = time.perf_counter()
    if args.case not in cases.CASE_NAMES:
        raise ConfigurationError(
            f"unknown case {args.case!r}; choose one of: {', '.join(cases.CASE_NAMES)}")
    check_range("columns", args.columns, 1, 100_000)
    check_range("seed", args.seed, 0, 2**32 - 1)
    out = Path(args.out if args.out is not None else f"{args.case}.nc")
    check_output_path(out)
    if args.plot is not None:
        check_output_directory("--plot", args.plot)
    parameters = parse_assignments(args.assignments, cases.case_parameters(args.case))
    options = dict(levels=args.levels, dt=args.dt, hours=args.hours,
                   turbulence=args.turbulence, **parameters)
    if args.parameterization is not None:
        from experiments.turbulence import load_artifact_case

        case = load_artifact_case(args.case, args.parameterization, **options)
    else:
        case = cases.build_case(args.case, **options)
    if args.cache:
        enable_compilation_cache()  # before anything compiles: JAX decides once per process

    result = run_case(case, n_columns=args.columns, seed=args.seed, progress=args.progress)
    dataset = case_dataset(case, result)
    write_netcdf(dataset, out)
    plots = []
    if args.plot is not None:
        from experiments.plots import plot_trajectory

        plots = plot_trajectory(dataset, args.plot)
    report_failures(dataset)
    print_summary(dataset, out, plots, time.perf_counter() - start)
    return 0


def command_experiment(args: argparse.Namespace) -> int:
    """Run a canonical experiment into ``--out``."""
    from experiments import turbulence

    check_choice("experiment", args.name, ("turbulence",))
    config = turbulence.ExperimentConfig.quick() if args.quick else turbulence.ExperimentConfig()
    if args.config is not None:
        config = turbulence.ExperimentConfig.from_file(args.config, config)
    if args.seeds is not None:
        check_range("seeds", args.seeds, 1, 100)
        config = dataclasses.replace(config, seeds=tuple(range(args.seeds)))
    out = check_output_directory("--out", args.out)
    if args.cache:
        enable_compilation_cache()
    turbulence.run_experiment(out, config, progress=args.progress, workers=args.workers)
    return 0


def command_train(args: argparse.Namespace) -> int:
    """Train one model into ``--out`` (``experiments.turbulence.train_command``)."""
    from experiments import turbulence

    config = turbulence.ExperimentConfig.quick() if args.quick else turbulence.ExperimentConfig()
    if args.config is not None:
        config = turbulence.ExperimentConfig.from_file(args.config, config)
    check_choice("coupling", args.coupling, turbulence.COUPLINGS)
    check_choice("mode", args.mode, ("offline", "online", "finetuned"))
    check_range("seed", args.seed, 0, 2**31 - 1)
    out = check_output_directory("--out", args.out)
    truth_dir = check_output_directory("--truth", args.truth)
    if args.cache:
        enable_compilation_cache()
    turbulence.train_command(config, truth_dir, out, args.coupling, args.mode, args.seed,
                             progress=args.progress)
    return 0


def command_bench(args: argparse.Namespace) -> int:
    """Run a benchmark into ``--out``."""
    from experiments import stability
    from nn.artifact import load_artifact

    check_choice("benchmark", args.name, ("stability",))
    check_choice("scenarios", args.scenarios, (*stability.SETS, "all"))
    for name in (args.baseline, *args.physics):
        check_choice("physics closure", name, cases.TURBULENCE_NAMES)
    check_choice("fallback", args.fallback, ("off", "on", "both"))
    check_range("scenarios-per-set", args.scenarios_per_set, 1, 100_000)
    check_range("per-family", args.per_family, 1, 10_000)
    config = stability.StabilityConfig(days=args.days,
                                       bounds=parse_bounds(args.bounds, DEFAULT_BOUNDS),
                                       drift_theta=args.drift_theta,
                                       drift_wind=args.drift_wind, truth=args.truth_runs)
    for path in args.models:
        load_artifact(path)  # every artifact is checked before anything runs
    out = check_output_directory("--out", args.out)
    if args.cache:
        enable_compilation_cache()
    stability.run_benchmark(args.models, out, baseline=args.baseline,
                            physics=tuple(args.physics), sets=args.scenarios,
                            truth_dir=args.truth, config=config, fallback=args.fallback,
                            sizes={"test": args.scenarios_per_set,
                                   "extrapolation": args.per_family},
                            progress=args.progress)
    return 0


def command_truth(args: argparse.Namespace) -> int:
    """Validate everything, sample the scenarios, run the truth, write netCDF, summarize."""
    start = time.perf_counter()
    check_choice("case", args.case, scenarios.CASES)
    check_choice("split", args.split, scenarios.SPLITS)
    check_range("scenarios", args.scenarios, 1, scenarios.MAX_SCENARIOS)
    check_range("seed", args.seed, 0, 2**32 - 1)
    days, spinup_days = truth.truth_length(args.case, args.days, args.spinup_days)
    truth.truth_plan(args.levels, args.refinement, args.fine_dt, args.coarse_dt, days,
                     spinup_days)
    out = Path(args.out)
    check_output_path(out)
    parameters = scenarios.sample_scenarios(args.split, args.scenarios, args.seed,
                                            case=args.case)
    if args.cache:
        enable_compilation_cache()  # before anything compiles: JAX decides once per process
    with warnings.catch_warnings():
        # failures are listed once, in the summary below
        warnings.simplefilter("ignore", RuntimeWarning)
        dataset = truth.generate_truth(
            parameters, coarse_levels=args.levels, refinement=args.refinement,
            fine_dt=args.fine_dt, coarse_dt=args.coarse_dt, days=days,
            spinup_days=spinup_days, progress=args.progress, split=args.split,
            seed=args.seed, case=args.case,
            labels=scenarios.scenario_labels(args.split, args.scenarios, case=args.case))
    write_netcdf(dataset, out)
    summary = truth.truth_summary(dataset)
    failed_at = dataset["failed_at"].values
    for index in summary["failed"][:MAX_FAILURE_LINES]:
        print(f"{PROGRAM} truth: warning: scenario {index} failed (non-finite or out of "
              f"bounds) at t = {failed_at[index]:g} s ({failed_at[index] / cases.DAY:.3g} "
              "day); it is flagged in failed_at and held at its last valid state",
              file=sys.stderr)
    if len(summary["failed"]) > MAX_FAILURE_LINES:
        print(f"{PROGRAM} truth: warning: ... and {len(summary['failed']) - MAX_FAILURE_LINES} "
              "more failed scenarios", file=sys.stderr)
    fine_levels = args.levels * args.refinement
    print(f"truth ({args.case}, {args.split}, seed {args.seed}): {summary['scenarios']} "
          f"scenario(s), {fine_levels} -> {args.levels} levels, dt {args.fine_dt:g} s, output "
          f"every {args.coarse_dt:g} s")
    print(f"  {'time span':<18}day {summary['start_s'] / cases.DAY:g} to "
          f"{summary['end_s'] / cases.DAY:g} ({summary['saves']} times; "
          f"{spinup_days:g} day spin-up discarded)")
    print(f"  {'failed scenarios':<18}{len(summary['failed'])} of {summary['scenarios']}"
          + (f" ({', '.join(map(str, summary['failed']))})" if summary["failed"] else ""))
    print(f"  {'output':<18}{out}")
    print(f"  {'wall time':<18}{time.perf_counter() - start:.1f} s (compilation included)")
    return 0


def enable_compilation_cache() -> Path | None:
    """Keep compiled programs on disk so that a repeated run skips most of its compilation.

    Uses JAX's persistent compilation cache in ``$SCM_CACHE_DIR`` (an empty value turns it
    off), else ``$XDG_CACHE_HOME/hybrid-scm/jax`` or ``~/.cache/hybrid-scm/jax``. A cache
    directory already configured for JAX is left as it is; an unusable one is skipped.
    Returns the directory in use, or None.
    """
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return Path(configured)
    location = os.environ.get("SCM_CACHE_DIR")
    if location == "":
        return None
    if location is None:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        location = Path(base) / "hybrid-scm" / "jax"
    path = Path(location)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(path, os.W_OK):
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


def parse_bounds(assignments: Sequence[str], defaults: dict) -> tuple:
    """``FIELD=LOW:HIGH`` assignments over ``defaults`` as ``(field, low, high)`` triples."""
    bounds = dict(defaults)
    for text in assignments:
        name, _, values = text.partition("=")
        low, _, high = values.partition(":")
        try:
            low, high = float(low), float(high)
        except ValueError:
            raise ConfigurationError(
                f"--bound {text!r} must be FIELD=LOW:HIGH with numbers") from None
        check_choice("--bound field", name, tuple(defaults))
        if not low < high:
            raise ConfigurationError(f"--bound {name}: LOW ({low:g}) must be below HIGH "
                                     f"({high:g})")
        bounds[name] = (low, high)
    return tuple((name, low, high) for name, (low, high) in bounds.items())


def check_output_directory(option: str, path) -> Path:
    """``path`` as a ``Path``; ``ConfigurationError`` if it exists and is not a directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigurationError(f"{option} {path} exists and is not a directory")
    return path


def check_output_path(path: Path) -> None:
    """The output file must be creatable: an existing, writable directory, not a directory."""
    if path.is_dir():
        raise ConfigurationError(f"--out {path} is a directory; give a file name (FILE.nc)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigurationError(f"--out {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigurationError(f"--out {path}: directory {parent} is not writable")


def parse_assignments(assignments: Sequence[str], specs: dict) -> dict:
    """``NAME=VALUE`` strings to case parameters, each converted to its default's type."""
    parameters = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise ConfigurationError(f"--set expects NAME=VALUE (got {item!r})")
        if name not in specs:
            known = ", ".join(specs) or "none"
            raise ConfigurationError(f"unknown parameter {name!r} for this case; known: {known}")
        parameters[name] = _convert(name, text, specs[name][0])
    return parameters


def _convert(name: str, text: str, default):
    """``text`` as a value of ``default``'s type (bool, int, float or str)."""
    try:
        if isinstance(default, bool):
            lowered = text.lower()
            if lowered in ("true", "yes", "on", "1"):
                return True
            if lowered in ("false", "no", "off", "0"):
                return False
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number"}[type(default)]
        raise ConfigurationError(f"parameter {name} expects {kind} (got {text!r})") from None
    return text


def report_failures(dataset) -> None:
    """Warn on stderr when and where each failed column failed."""
    failed_at = dataset["failed_at"].values
    failed = np.flatnonzero(np.isfinite(failed_at))
    for column in failed[:MAX_FAILURE_LINES]:
        seconds = float(failed_at[column])
        height = float(dataset["failed_height"].values[column])
        print(f"{PROGRAM} run: warning: column {column} failed (non-finite or out of bounds) at "
              f"t = {seconds:g} s ({seconds / 3600:.3g} h), height {height:.4g} m; it is held "
              "at its last valid state from then on", file=sys.stderr)
    if len(failed) > MAX_FAILURE_LINES:
        print(f"{PROGRAM} run: warning: ... and {len(failed) - MAX_FAILURE_LINES} more failed "
              "columns", file=sys.stderr)


def print_summary(dataset, out: Path, plots: list[Path], seconds: float) -> None:
    """A few lines on stdout: final u* and boundary-layer height, failures, files, wall time."""
    n_columns = dataset.sizes["column"]
    hours = float(dataset["time"].values[-1]) / 3600.0
    print(f"{dataset.attrs.get('case')}: {hours:g} h simulated, {n_columns} column(s), "
          f"{dataset.sizes['z']} levels, dt {dataset.attrs.get('time_step_s'):g} s")
    for name, text in (("ustar", "final u*"), ("boundary_layer_height", "final BL height")):
        if name in dataset:
            print(f"  {text:<18}{_final_value(dataset, name)}")
    n_failed = int(np.isfinite(dataset["failed_at"].values).sum())
    print(f"  {'failed columns':<18}{n_failed} of {n_columns}")
    print(f"  {'output':<18}{out}")
    for path in plots:
        print(f"  {'plot':<18}{path}")
    print(f"  {'wall time':<18}{seconds:.1f} s (compilation included)")


def _final_value(dataset, name: str) -> str:
    """Column 0's last value with units, and the range over columns when there are several."""
    values = dataset[name].isel(time=-1).values.astype(float)
    units = dataset[name].attrs.get("units", "")
    text = f"{values[0]:.4g} {units}"
    if values.size > 1:
        text += f" (columns: {np.nanmin(values):.4g} .. {np.nanmax(values):.4g})"
    return text


def _show(value) -> str:
    if isinstance(value, float) and (math.isinf(value) or value != value):
        return str(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
