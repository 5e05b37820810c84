"""The ``scm`` command line.

Usage::

    scm --version
    scm cases [CASE]          list the cases, their parameters and allowed ranges
    scm run CASE [--hours H] [--dt S] [--levels N] [--turbulence NAME] [--columns N]
                 [--seed S] [--set NAME=VALUE ...] [--artifact DIR] [--save-every S]
                 [--variables NAME,...] [--average H] [--out FILE.nc] [--plot DIR]
    scm run --config FILE.nc [options]     repeat the run FILE.nc records (options override)
    scm run --restart FILE.nc [options]    continue that run from its last save
    scm truth [CASE] [--split train|validation|test|extrapolation] [--scenarios N] [--hours H]
              [--spinup-hours H] [--seed S] [--levels N] [--refinement R] [--fine-dt S]
              [--coarse-dt S] --out FILE.nc
    scm experiment turbulence [--quick] [--config FILE] [--seeds N] [--workers N]
                              --out-dir DIR
    scm train [--config FILE] [--quick] [--coupling replace|residual]
              [--mode offline|online|finetuned] [--seed S] --truth-dir DIR --out-dir DIR
    scm bench stability [--artifact DIR ...] [--baseline NAME] [--physics NAME ...]
                        [--split test|extrapolation|all] [--hours H] [--no-truth]
                        [--fallback off|on|both] [--drift-theta K] [--drift-wind M/S]
                        [--bound FIELD=LOW:HIGH ...] [--truth-dir DIR] [--scenarios N]
                        [--per-family N] [--out-dir DIR]
    scm plot FILE.nc [--window START:END] [--out-dir DIR]
    scm compare A.nc B.nc [--out-dir DIR]
    scm inspect DIR

One vocabulary: the case is the positional ``CASE``; a length is ``--hours``; an output file
is ``--out FILE.nc``, an output directory ``--out-dir DIR``; a trained network is
``--artifact DIR``; a scenario set is ``--split`` and a number of scenarios ``--scenarios``.
The spellings of the previous release (``--days``, ``--parameterization``, ``--model``,
``--case``, ``--out DIR``, ...) still work for this release, with a note on stderr.

Every input is checked before anything is compiled, and the arguments themselves before JAX
is loaded: a bad value prints one line naming the option, the value and what is allowed to
stderr and exits with status 2. An output that cannot be written (a full disk) is one line
and status 1; Ctrl-C is one line and status 130. Files are written atomically, so an
existing file is either replaced whole or left as it was. A run whose columns (or truth
scenarios) fail (non-finite or out of physical bounds) still writes its file, warns when and
where each failed, and exits 0. Compiled programs are kept on disk (JAX's persistent
compilation cache, see ``enable_compilation_cache``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from scm.errors import ConfigurationError, OutputError, check_range, whole_count
from scm.provenance import package_version, record_command_line

PROGRAM = "scm"

#: Failed columns listed one by one before the rest are summarized.
MAX_FAILURE_LINES = 10

#: The scenario sets a benchmark runs on.
BENCH_SPLITS = ("test", "extrapolation", "all")


# ---------------------------------------------------------------------------------------------
# argument types: checked while parsing, before anything heavy is imported


def _number(text: str, allowed: str, ok: Callable[[float], bool]) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"must be {allowed} (got {text!r})")
    return value


def positive(text: str) -> float:
    """A finite number > 0."""
    return _number(text, "a finite number > 0", lambda x: x > 0)


def non_negative(text: str) -> float:
    """A finite number >= 0."""
    return _number(text, "a finite number >= 0", lambda x: x >= 0)


def count(text: str) -> int:
    """A whole number >= 1."""
    value = _number(text, "a whole number >= 1", lambda x: x >= 1 and x == int(x))
    return int(value)


def seed(text: str) -> int:
    """A whole number in [0, 2**32 - 1]."""
    value = _number(text, "a whole number in [0, 4294967295]",
                    lambda x: 0 <= x < 2**32 and x == int(x))
    return int(value)


def names(text: str) -> list[str]:
    """A comma-separated list of names."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"must be names separated by commas (got {text!r})")
    return items


def window(text: str) -> tuple[float, float]:
    """``START:END`` in hours, START < END."""
    start, _, end = text.partition(":")
    try:
        low, high = float(start), float(end)
    except ValueError:
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high):
        raise argparse.ArgumentTypeError(f"must be START:END in hours, 0 <= START < END "
                                         f"(got {text!r})")
    return low, high


def assignment(text: str) -> tuple[str, float]:
    """``NAME=VALUE`` with a number as the value (every case parameter is a number)."""
    name, sep, value = (part.strip() for part in text.partition("="))
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expects NAME=VALUE (got {text!r})")
    return name, _number(value, "NAME=VALUE with a finite number as VALUE", lambda x: True)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class Deprecated(argparse.Action):
    """A spelling of the previous release, kept for this one: a note on stderr, then the
    value is stored as the new option's (``convert``ed; appended where ``append``)."""

    def __init__(self, option_strings, dest, *, instead: str, convert=None, append=False,
                 **kwargs):
        kwargs.setdefault("help", f"deprecated: use {instead}")
        super().__init__(option_strings, dest, **kwargs)
        self.instead, self.convert, self.append = instead, convert, append

    def __call__(self, parser, namespace, values, option_string=None):
        deprecation_note(parser.prog, option_string, self.instead)
        value = values if self.convert is None else self.convert(values)
        if self.append:
            value = [*(getattr(namespace, self.dest, None) or []), value]
        setattr(namespace, self.dest, value)


def deprecation_note(prog: str, old: str, instead: str) -> None:
    print(f"{prog}: note: {old} is deprecated and will be removed in the next release; use "
          f"{instead}", file=sys.stderr)


def days_as_hours(text: str) -> float:
    return positive(text) * 24.0


def spinup_days_as_hours(text: str) -> float:
    return non_negative(text) * 24.0


#: The previous release's scenario sets of ``bench --scenarios`` and the sets they became.
PREVIOUS_BENCH_SETS = {"heldout": "test", "ood": "extrapolation", "all": "all"}


class BenchScenarios(argparse.Action):
    """``--scenarios N`` of ``bench``: the number of scenarios; a set name (the previous
    release's meaning) is taken as ``--split`` with a deprecation note."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values in PREVIOUS_BENCH_SETS or values in BENCH_SPLITS:
            split = PREVIOUS_BENCH_SETS.get(values, values)
            deprecation_note(parser.prog, f"{option_string} {values}", f"--split {split}")
            namespace.split = split
        else:
            try:
                namespace.scenarios = count(values)
            except argparse.ArgumentTypeError as error:
                parser.error(f"argument {option_string}: {error}")


# ---------------------------------------------------------------------------------------------
# the parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``scm`` with one subparser per command."""
    parser = _Parser(prog=PROGRAM, description="Differentiable single-column atmospheric model.")
    parser.add_argument("--version", action="version",
                        version=f"{PROGRAM} (hybrid-scm) {package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    listing = commands.add_parser("cases", help="list the cases and their parameters",
                                  description="List the cases, their parameters and ranges.")
    listing.add_argument("case", nargs="?", metavar="CASE", help="show only this case")
    listing.set_defaults(handler=command_cases)

    run = commands.add_parser(
        "run", help="run a case and write a netCDF file",
        description="Run a case (column 0 unperturbed, further columns with seeded "
                    "perturbations of the initial state) and write the trajectory to netCDF. "
                    "--config FILE.nc repeats the run a file records, --restart FILE.nc "
                    "continues it from its last save (bit for bit as one longer run); options "
                    "given on the command line override the file's.")
    run.add_argument("case", nargs="?", metavar="CASE", help="case name (see 'scm cases')")
    run.add_argument("--config", metavar="FILE.nc",
                     help="take case, parameters, grid, time step and length from a run file")
    run.add_argument("--restart", metavar="FILE.nc",
                     help="continue the run of FILE.nc from its last save for --hours "
                          "(default: its length again)")
    run.add_argument("--hours", type=positive, help="simulated time (h; default: the case's)")
    run.add_argument("--dt", type=positive, help="time step (s; default: the case's)")
    run.add_argument("--levels", type=count, help="number of vertical levels")
    run.add_argument("--turbulence", metavar="NAME",
                     help="turbulence closure: constant, local, tke (default: the case's)")
    run.add_argument("--columns", type=count,
                     help="columns run at once (default 1: the unperturbed case); with more, "
                          "the file holds their ensemble mean and spread too")
    run.add_argument("--seed", type=seed, help="seed of the perturbations (default 0)")
    run.add_argument("--set", metavar="NAME=VALUE", dest="assignments", type=assignment,
                     action="append", default=[],
                     help="a case parameter (repeat for several; see 'scm cases CASE')")
    run.add_argument("--artifact", metavar="DIR",
                     help="trained artifact directory whose network takes its slot (the "
                          "closure defaults to the one it was trained with, the levels to its)")
    run.add_argument("--parameterization", dest="artifact", action=Deprecated,
                     instead="--artifact")
    run.add_argument("--save-every", type=positive, metavar="S",
                     help="output interval (s of model time; default: 600 s, or the largest "
                          "interval below it that divides the run)")
    run.add_argument("--variables", type=names, metavar="NAME,...",
                     help="write only these output variables (and the failure record)")
    run.add_argument("--average", type=positive, metavar="H",
                     help="write means over intervals of H hours instead of the saves")
    run.add_argument("--out", metavar="FILE.nc", help="output file (default: CASE.nc here)")
    run.add_argument("--plot", metavar="DIR", help="also write quick-look PNGs into DIR")
    add_progress_and_cache_options(run)
    run.set_defaults(handler=command_run)

    make = commands.add_parser(
        "truth", help="generate coarse-grained high-resolution truth of sampled scenarios",
        description="Run sampled scenarios of a case (diurnal, gabls1 or dry_cbl) at high "
                    "resolution with the TKE closure, discard the spin-up, coarse-grain state "
                    "and turbulent fluxes onto the coarse grid and write them to netCDF (see "
                    "docs/truth.md).")
    make.add_argument("case", nargs="?", metavar="CASE",
                      help="scenario family: diurnal, gabls1, dry_cbl (default diurnal)")
    make.add_argument("--case", dest="case_option", action=Deprecated,
                      instead="the positional CASE")
    make.add_argument("--split", default="train",
                      help="scenario set: train, validation, test, extrapolation (default train)")
    make.add_argument("--scenarios", type=count, default=16,
                      help="number of scenarios (default 16)")
    make.add_argument("--hours", type=positive,
                      help="simulated hours, spin-up included (default: the case's: diurnal "
                           "360, gabls1 9, dry_cbl 4)")
    make.add_argument("--spinup-hours", type=non_negative,
                      help="hours discarded at the start (default: diurnal 120, else 0)")
    make.add_argument("--days", dest="hours", action=Deprecated, instead="--hours",
                      convert=days_as_hours)
    make.add_argument("--spinup-days", dest="spinup_hours", action=Deprecated,
                      instead="--spinup-hours", convert=spinup_days_as_hours)
    make.add_argument("--seed", type=seed, default=0, help="seed of the sampling (default 0)")
    make.add_argument("--levels", type=count, default=32,
                      help="coarse levels, the grid of the file (default 32)")
    make.add_argument("--refinement", type=count, default=4,
                      help="fine levels per coarse level (default 4)")
    make.add_argument("--fine-dt", type=positive, default=30.0,
                      help="time step of the high-resolution run (s; default 30)")
    make.add_argument("--coarse-dt", type=positive, default=300.0,
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
                            help="a small version of everything (about a minute)")
    experiment.add_argument("--config", metavar="FILE",
                            help="settings file (TOML or JSON; any ExperimentConfig field, "
                                 "over the defaults or --quick's)")
    experiment.add_argument("--seeds", type=count, help="number of seeds (default 3; quick 1)")
    add_out_dir(experiment, required=True)
    experiment.add_argument("--workers", type=count, default=2,
                            help="models trained and evaluated at once, in threads (default 2)")
    add_progress_and_cache_options(experiment)
    experiment.set_defaults(handler=command_experiment)

    training = commands.add_parser(
        "train", help="train one network on truth, selected on the validation set",
        description="Train one network (coupling, mode, seed) on the training truth in "
                    "--truth-dir with the experiment's settings or a config file, keep the "
                    "weights that score best on the validation truth (both made in --truth-dir "
                    "when missing), and write the artifact with its validation scores into "
                    "--out-dir (see experiments/turbulence.py).")
    training.add_argument("--config", metavar="FILE",
                          help="settings file (TOML or JSON; ExperimentConfig fields)")
    training.add_argument("--quick", action="store_true", help="the quick settings as base")
    training.add_argument("--coupling", default="residual", help="replace or residual "
                                                                 "(default residual)")
    training.add_argument("--mode", default="online",
                          help="offline, online or finetuned (default online)")
    training.add_argument("--seed", type=seed, default=0, help="seed (default 0)")
    training.add_argument("--truth-dir", metavar="DIR", required=True,
                          help="directory with (or for) truth_train.nc and truth_validation.nc")
    add_out_dir(training, required=True)
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
    bench.add_argument("--artifact", metavar="DIR", dest="artifacts", action="append",
                       default=[], help="trained artifact directory (repeat for several)")
    bench.add_argument("--model", dest="artifacts", action=Deprecated, instead="--artifact",
                       append=True)
    bench.add_argument("--baseline", default="local",
                       help="physics closure beside them (default local)")
    bench.add_argument("--physics", metavar="NAME", action="append", default=[],
                       help="another physics closure to judge (e.g. tke; repeat)")
    bench.add_argument("--split", default="all",
                       help="test, extrapolation or all (default all)")
    bench.add_argument("--scenarios", action=BenchScenarios, default=16, metavar="N",
                       help="test scenarios when truth or scenarios are drawn (default 16)")
    bench.add_argument("--scenarios-per-set", dest="scenarios", type=count, action=Deprecated,
                       instead="--scenarios")
    bench.add_argument("--per-family", type=count, default=4, metavar="N",
                       help="scenarios per extrapolation family when drawn (default 4)")
    bench.add_argument("--hours", type=positive, default=720.0,
                       help="hours per run (default 720: 30 days; a year is 8760)")
    bench.add_argument("--days", dest="hours", action=Deprecated, instead="--hours",
                       convert=days_as_hours)
    bench.add_argument("--no-truth", dest="truth_runs", action="store_false",
                       help="truth-free runs from the case's initial state (e.g. --hours 8760)")
    bench.add_argument("--fallback", default="off",
                       help="artifacts' out-of-distribution fallback: off, on or both "
                            "(default off)")
    bench.add_argument("--drift-theta", type=positive, default=3.0, metavar="K",
                       help="daily-mean θ error (K) beyond which a run has failed (default 3)")
    bench.add_argument("--drift-wind", type=positive, default=5.0, metavar="M/S",
                       help="daily-mean wind error (m/s) beyond which a run has failed "
                            "(default 5)")
    bench.add_argument("--bound", metavar="FIELD=LOW:HIGH", dest="bounds", action="append",
                       default=[], help="physical bounds of a field (e.g. thl=200:400; "
                                        "defaults: scm.integration.DEFAULT_BOUNDS)")
    bench.add_argument("--truth-dir", metavar="DIR",
                       help="directory with truth_test.nc / truth_extrapolation.nc (default: "
                            "--out-dir; missing files are generated there)")
    bench.add_argument("--truth", dest="truth_dir", action=Deprecated, instead="--truth-dir")
    add_out_dir(bench, default="stability")
    add_progress_and_cache_options(bench)
    bench.set_defaults(handler=command_bench)

    plot = commands.add_parser(
        "plot", help="draw the figures of a run or truth file",
        description="Draw time-height sections (boundary-layer height overlaid), profiles "
                    "averaged over a window (with the case's published ranges), final "
                    "profiles and time series of any run or truth file.")
    plot.add_argument("file", metavar="FILE.nc", help="run or truth file")
    plot.add_argument("--window", type=window, metavar="START:END",
                      help="hours of the mean profiles (default: the case's averaging window, "
                           "else the last hour)")
    add_out_dir(plot, default=".")
    plot.set_defaults(handler=command_plot)

    compare = commands.add_parser(
        "compare", help="differences and overlays of two runs",
        description="Print the differences of every variable two run files share (RMS and "
                    "largest, at their common times) and draw their profiles and time series "
                    "over each other.")
    compare.add_argument("files", nargs=2, metavar="FILE.nc", help="two run (or truth) files")
    add_out_dir(compare, default=".")
    compare.set_defaults(handler=command_compare)

    inspect = commands.add_parser(
        "inspect", help="describe a trained artifact",
        description="Show a trained artifact's slot, coupling, network, levels, training "
                    "provenance and metrics.")
    inspect.add_argument("directory", metavar="DIR", help="artifact directory")
    inspect.set_defaults(handler=command_inspect)
    return parser


def add_out_dir(parser: argparse.ArgumentParser, required: bool = False,
                default: str | None = None) -> None:
    """``--out-dir DIR`` (and the previous release's ``--out DIR``); a required one is
    checked by the command (argparse would not count the old spelling)."""
    parser.add_argument("--out-dir", metavar="DIR", default=default,
                        help="output directory" + (" (required)" if required else
                                                   f" (default {default})" if default else ""))
    parser.add_argument("--out", dest="out_dir", action=Deprecated, instead="--out-dir")


def add_progress_and_cache_options(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` and ``--no-cache``, shared by every command that computes."""
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (there are none where stderr is not a terminal)")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="do not use the persistent compilation cache (see SCM_CACHE_DIR)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scm`` console script; returns the exit status: 0 done, 1 an
    output could not be written, 2 bad input, 130 interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    prefix = f"{PROGRAM} {args.command}"
    record_command_line([PROGRAM, *argv])
    try:
        return args.handler(args)
    except ConfigurationError as error:
        print(f"{prefix}: error: {error}", file=sys.stderr)
        return 2
    except OutputError as error:
        print(f"{prefix}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted; every file is complete or as it was before",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of the output went away (``scm cases | head``): nothing left to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# ---------------------------------------------------------------------------------------------
# checks that need no JAX


def check_case_name(name: str) -> None:
    from experiments.cases import CASE_NAMES

    if name not in CASE_NAMES:
        raise ConfigurationError(f"unknown case {name!r}; choose one of: "
                                 f"{', '.join(sorted(CASE_NAMES))}")


def check_writable_directory(option: str, path) -> Path:
    """``path`` as a ``Path``; ``ConfigurationError`` unless it is a directory one can write
    in, or can be made in one (the nearest existing parent is a writable directory)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigurationError(f"{option} {path}: {existing} exists and is not a directory")
    try:  # a real write: permissions alone say nothing to root or on a read-only disk
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise ConfigurationError(f"{option} {path}: cannot write in {existing} "
                                 f"({error.strerror})") from None
    return path


def check_output_file(option: str, path) -> Path:
    """``path`` as a ``Path``: the output file must be creatable (its directory exists and
    can be written in) and not be a directory."""
    path = Path(path)
    if path.is_dir():
        raise ConfigurationError(f"{option} {path} is a directory; give a file name (FILE.nc)")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigurationError(f"{option} {path}: directory {parent} does not exist")
    check_writable_directory(option, parent)
    return path


def check_output_directory(option: str, path) -> Path:
    """``check_writable_directory``, for an output directory (``path`` None: not given)."""
    if path is None:
        raise ConfigurationError(f"the option {option} DIR is required")
    return check_writable_directory(option, path)


# ---------------------------------------------------------------------------------------------
# cases


def command_cases(args: argparse.Namespace) -> int:
    """Print every case (or one) with its description and parameter table."""
    if args.case is not None:
        check_case_name(args.case)
    from experiments import cases

    descriptions = cases.describe_cases()
    for name in [args.case] if args.case is not None else list(descriptions):
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


# ---------------------------------------------------------------------------------------------
# run


def recorded_run(path) -> dict:
    """What a run file records about its run (``experiments.run.case_attributes``): case,
    build options, parameters, columns, seed and artifact, for ``--config`` and
    ``--restart``."""
    from scm.io import read_netcdf

    attrs = read_netcdf(path).attrs
    if "case" not in attrs or "parameter_dt" not in attrs:
        raise ConfigurationError(f"{path} is not a run file of this package (it records no "
                                 "case and parameters)")
    parameters = {key.removeprefix("parameter_"): value for key, value in attrs.items()
                  if key.startswith("parameter_")}
    return {"case": str(attrs["case"]), "parameters": parameters,
            "columns": int(attrs.get("columns", 1)), "seed": int(attrs.get("seed", 0)),
            "artifact": attrs.get("artifact")}


def command_run(args: argparse.Namespace) -> int:
    """Validate everything, run the case, write netCDF (and plots), print a summary."""
    start = time.perf_counter()
    if args.config is not None and args.restart is not None:
        raise ConfigurationError("give --config or --restart, not both (a restart repeats "
                                 "the configuration of the run it continues)")
    source = args.restart if args.restart is not None else args.config
    recorded = recorded_run(source) if source is not None else None
    case_name = args.case or (recorded["case"] if recorded else None)
    if case_name is None:
        raise ConfigurationError("give a CASE (see 'scm cases') or --config / --restart "
                                 "FILE.nc")
    check_case_name(case_name)
    if recorded and recorded["case"] != case_name:
        raise ConfigurationError(f"{source} records a run of case {recorded['case']!r}, not "
                                 f"{case_name!r}")
    out = check_output_file("--out", args.out if args.out is not None else f"{case_name}.nc")
    if args.restart is not None and out.resolve() == Path(args.restart).resolve():
        raise ConfigurationError(f"--out {out} is the file the run restarts from; give "
                                 "another --out so that it is kept")
    if args.plot is not None:
        check_output_directory("--plot", args.plot)
    from experiments import cases

    if args.restart is None:
        options, artifact = run_options(args, case_name, recorded)
        if artifact is None:
            cases.check_options(case_name, **options)

    from experiments import run as runner  # JAX from here on
    from scm import io

    restart = io.read_netcdf(args.restart) if args.restart is not None else None
    if restart is not None:
        runner.check_instantaneous(restart, args.restart)
    case, columns, seed_, artifact = build_run(args, case_name, recorded, restart)
    start_point = None
    if restart is not None:
        start_point = runner.restart_point(restart, case, args.restart)
        columns = int(start_point.states.u.shape[0])
    length = case.hours - (0.0 if start_point is None else start_point.time / cases.HOUR)
    plan = runner.plan_run(length, case.dt, case.save_every)
    if args.variables is not None:
        unknown = sorted(set(args.variables) - set(runner.output_shapes(case)))
        if unknown:
            raise ConfigurationError(
                f"--variables: unknown output variable(s) {', '.join(unknown)}; this run "
                f"writes: {', '.join(sorted(runner.output_shapes(case)))}")
    if args.average is not None:
        whole_count(f"--average {args.average:g} h", args.average * cases.HOUR,
                    "output intervals", case.dt * case.save_every)
        whole_count(f"the run of {case.hours:g} h", case.hours * cases.HOUR,
                    f"averaging intervals (--average {args.average:g} h)",
                    args.average * cases.HOUR)
    runner.check_output_size(case, columns, plan.n_saves)
    if args.cache:
        enable_compilation_cache()  # before anything compiles: JAX decides once per process

    result = runner.run_case(case, n_columns=columns, seed=seed_, progress=args.progress,
                             start=start_point)
    provenance = {"artifact": str(artifact) if artifact is not None else None}
    if args.restart is not None:
        provenance["restarted_from"] = f"{args.restart} at t = {start_point.time:g} s"
    dataset = runner.case_dataset(case, result, {k: v for k, v in provenance.items()
                                                 if v is not None})
    if args.variables is not None:
        dataset = io.select_variables(dataset, args.variables)
    if args.average is not None:
        dataset = io.time_average(dataset, args.average * cases.HOUR)
    if columns > 1:
        dataset = io.ensemble_statistics(dataset)
    io.write_netcdf(dataset, out)
    plots = []
    if args.plot is not None:
        from experiments.plots import plot_trajectory

        plots = plot_trajectory(dataset, args.plot)
    report_failures(dataset)
    print_summary(dataset, case, out, plots, time.perf_counter() - start)
    return 0


def run_options(args: argparse.Namespace, case_name: str, recorded: dict | None,
                restart=None) -> tuple[dict, str | None]:
    """The options of the case of ``scm run`` (those on the command line over those of
    ``--config`` / ``--restart``) and its artifact, read without JAX. A ``restart`` dataset
    (the run continued) makes the case end ``--hours`` (default: that run's own length) after
    its last save: the case's forcing is built up to its end."""
    from experiments import cases

    specs = cases.case_parameters(case_name)
    file = dict(recorded["parameters"]) if recorded else {}
    options = {name: file.get(name) for name in ("levels", "dt", "hours", "turbulence")}
    if "levels" in file:
        options["levels"] = int(file["levels"])
    if restart is not None:
        times = restart["time"].values
        length = float(file["hours"]) - float(times[0]) / cases.HOUR
        end = float(times[-1]) / cases.HOUR
        options["hours"] = end + (length if args.hours is None else args.hours)
    options |= {name: file[name] for name in specs if name in file}
    given = {"levels": args.levels, "dt": args.dt,
             "hours": args.hours if restart is None else None, "turbulence": args.turbulence}
    options |= {name: value for name, value in given.items() if value is not None}
    for name, value in args.assignments:
        if name not in specs:
            raise ConfigurationError(f"--set: unknown parameter {name!r} for case "
                                     f"{case_name}; known: {', '.join(specs) or 'none'}")
        options[name] = value
    artifact = args.artifact if args.artifact is not None else (
        recorded["artifact"] if recorded else None)
    return options, artifact


def build_run(args: argparse.Namespace, case_name: str, recorded: dict | None,
              restart=None):
    """The case of ``scm run`` (``run_options``), its number of columns, seed and
    artifact."""
    from experiments import cases

    options, artifact = run_options(args, case_name, recorded, restart)
    file = dict(recorded["parameters"]) if recorded else {}
    if artifact is not None:
        from experiments.turbulence import load_artifact_case

        case = load_artifact_case(case_name, artifact, **options)
    else:
        case = cases.build_case(case_name, **options)
    interval = args.save_every
    if interval is None and "save_every" in file and args.dt is None and args.hours is None:
        interval = float(file["save_every"]) * case.dt
    if interval is not None:
        start = 0.0 if restart is None else float(restart["time"].values[-1])
        n_steps = round((case.hours * cases.HOUR - start) / case.dt)
        save_every = whole_count("--save-every", interval, "time steps dt", case.dt)
        if n_steps % save_every:
            raise ConfigurationError(
                f"--save-every {interval:g} s does not divide the run ({case.hours:g} h = "
                f"{n_steps} steps of {case.dt:g} s); choose an interval that does")
        case = dataclasses.replace(case, save_every=save_every)
    columns = args.columns or (recorded["columns"] if recorded else 1)
    check_range("columns", columns, 1, 100_000)
    seed_ = args.seed if args.seed is not None else (recorded["seed"] if recorded else 0)
    return case, columns, seed_, artifact


def report_failures(dataset, what: str = "column") -> None:
    """Warn on stderr when and where each failed column (or scenario) failed."""
    import numpy as np

    failed_at = dataset["failed_at"].values
    failed = np.flatnonzero(np.isfinite(failed_at))
    heights = dataset["failed_height"].values
    for column in failed[:MAX_FAILURE_LINES]:
        seconds = float(failed_at[column])
        print(f"{PROGRAM}: warning: {what} {column} failed (non-finite or out of bounds) at "
              f"t = {seconds:g} s ({seconds / 3600:.3g} h), height {float(heights[column]):.4g} "
              "m; it is held at its last valid state from then on", file=sys.stderr)
    if len(failed) > MAX_FAILURE_LINES:
        print(f"{PROGRAM}: warning: ... and {len(failed) - MAX_FAILURE_LINES} more failed "
              f"{what}s", file=sys.stderr)


def print_summary(dataset, case, out: Path, plots: list[Path], seconds: float) -> None:
    """A few lines on stdout: final u* and boundary-layer height (ensemble mean and spread
    with several columns), output interval, failures, files, wall time."""
    import numpy as np

    from experiments.cases import OUTPUT_INTERVAL

    n_columns = dataset.sizes["column"]
    times = dataset["time_bounds"].values if "time_bounds" in dataset else dataset["time"].values
    start, end = float(times.min()), float(times.max())
    print(f"{case.name}: {(end - start) / 3600:g} h simulated from t = {start:g} s, "
          f"{n_columns} column(s), {dataset.sizes['z']} levels, dt {case.dt:g} s")
    for name, text in (("ustar", "final u*"), ("boundary_layer_height", "final BL height")):
        if name in dataset:
            print(f"  {text:<18}{_final_value(dataset, name)}")
    interval = case.dt * case.save_every
    print(f"  {'output every':<18}{interval:g} s" + (
        f" (the case's {OUTPUT_INTERVAL:g} s does not divide the run)"
        if interval < OUTPUT_INTERVAL and case.hours * 3600 % OUTPUT_INTERVAL else "")
        + (f"; means over {dataset.attrs['time_average_s'] / 3600:g} h"
           if "time_average_s" in dataset.attrs else ""))
    n_failed = int(np.isfinite(dataset["failed_at"].values).sum())
    print(f"  {'failed columns':<18}{n_failed} of {n_columns}")
    print(f"  {'output':<18}{out}")
    for path in plots:
        print(f"  {'plot':<18}{path}")
    print(f"  {'wall time':<18}{seconds:.1f} s (compilation included)")


def _final_value(dataset, name: str) -> str:
    """Column 0's last value with units; with several columns their mean and spread."""
    values = dataset[name].isel(time=-1).values.astype(float)
    units = dataset[name].attrs.get("units", "")
    text = f"{values[0]:.4g} {units}"
    if values.size > 1:
        text += (f" (columns: mean {values.mean():.4g}, spread {values.std():.3g}, "
                 f"{values.min():.4g} .. {values.max():.4g})")
    return text


def _show(value) -> str:
    if isinstance(value, float) and (math.isinf(value) or value != value):
        return str(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------
# truth, experiment, train, bench


def command_truth(args: argparse.Namespace) -> int:
    """Validate everything, sample the scenarios, run the truth, write netCDF, summarize."""
    start = time.perf_counter()
    case = args.case or getattr(args, "case_option", None) or "diurnal"
    check_case_name(case)
    out = check_output_file("--out", args.out)

    from experiments import scenarios, truth
    from experiments.cases import DAY
    from scm.errors import check_choice
    from scm.io import write_netcdf

    check_choice("case (scenario family)", case, scenarios.CASES)
    check_choice("split", args.split, scenarios.SPLITS)
    days, spinup_days = truth.truth_length(
        case, None if args.hours is None else args.hours / 24.0,
        None if args.spinup_hours is None else args.spinup_hours / 24.0)
    if spinup_days >= days:  # said in the command line's units, not the API's days
        raise ConfigurationError(f"--spinup-hours {spinup_days * 24:g} must be shorter than "
                                 f"--hours {days * 24:g} (the truth keeps what follows the "
                                 "spin-up)")
    truth.truth_plan(args.levels, args.refinement, args.fine_dt, args.coarse_dt, days,
                     spinup_days)
    parameters = scenarios.sample_scenarios(args.split, args.scenarios, args.seed, case=case)
    if args.cache:
        enable_compilation_cache()
    with warnings.catch_warnings():
        # failures are listed once, in the summary below
        warnings.simplefilter("ignore", RuntimeWarning)
        dataset = truth.generate_truth(
            parameters, coarse_levels=args.levels, refinement=args.refinement,
            fine_dt=args.fine_dt, coarse_dt=args.coarse_dt, days=days,
            spinup_days=spinup_days, progress=args.progress, split=args.split,
            seed=args.seed, case=case,
            labels=scenarios.scenario_labels(args.split, args.scenarios, case=case))
    write_netcdf(dataset, out)
    summary = truth.truth_summary(dataset)
    report_failures(dataset, "scenario")
    fine_levels = args.levels * args.refinement
    print(f"truth ({case}, {args.split}, seed {args.seed}): {summary['scenarios']} "
          f"scenario(s), {fine_levels} -> {args.levels} levels, dt {args.fine_dt:g} s, output "
          f"every {args.coarse_dt:g} s")
    print(f"  {'time span':<18}hour {summary['start_s'] / 3600:g} to "
          f"{summary['end_s'] / 3600:g} ({summary['saves']} times; "
          f"{spinup_days * DAY / 3600:g} h spin-up discarded)")
    print(f"  {'failed scenarios':<18}{len(summary['failed'])} of {summary['scenarios']}"
          + (f" ({', '.join(map(str, summary['failed']))})" if summary["failed"] else ""))
    print(f"  {'output':<18}{out}")
    print(f"  {'wall time':<18}{time.perf_counter() - start:.1f} s (compilation included)")
    return 0


def command_experiment(args: argparse.Namespace) -> int:
    """Run a canonical experiment into ``--out-dir``."""
    out = check_output_directory("--out-dir", args.out_dir)
    if args.name != "turbulence":
        raise ConfigurationError(f"unknown experiment {args.name!r}; choose one of: "
                                 "turbulence")
    from experiments import turbulence

    check_range("workers", args.workers, 1, 64)
    config = experiment_config(args.quick, args.seeds, args.config)
    if args.cache:
        enable_compilation_cache()
    turbulence.run_experiment(out, config, progress=args.progress, workers=args.workers)
    return 0


def experiment_config(quick: bool, seeds: int | None = None, path=None):
    """The turbulence experiment's configuration (quick or full, with the settings of the
    file ``path`` over it; ``seeds`` seeds)."""
    from experiments import turbulence

    config = turbulence.ExperimentConfig.quick() if quick else turbulence.ExperimentConfig()
    if path is not None:
        config = turbulence.ExperimentConfig.from_file(path, config)
    if seeds is not None:
        check_range("seeds", seeds, 1, 100)
        config = dataclasses.replace(config, seeds=tuple(range(seeds)))
    return config


def command_train(args: argparse.Namespace) -> int:
    """Train one network into ``--out-dir``, selected on the validation truth
    (``experiments.turbulence.train_command``)."""
    out = check_output_directory("--out-dir", args.out_dir)
    truth_dir = check_output_directory("--truth-dir", args.truth_dir)
    from experiments import turbulence
    from scm.errors import check_choice

    check_choice("coupling", args.coupling, turbulence.COUPLINGS)
    check_choice("mode", args.mode, turbulence.MODES)
    config = dataclasses.replace(experiment_config(args.quick, path=args.config),
                                 seeds=(args.seed,))
    if args.cache:
        enable_compilation_cache()
    turbulence.train_command(config, truth_dir, out, args.coupling, args.mode, args.seed,
                             progress=args.progress)
    print(f"artifact  {out}")
    return 0


def command_bench(args: argparse.Namespace) -> int:
    """Run a benchmark into ``--out-dir``."""
    out = check_output_directory("--out-dir", args.out_dir)
    if args.truth_dir is not None:
        check_output_directory("--truth-dir", args.truth_dir)
    if args.name != "stability":
        raise ConfigurationError(f"unknown benchmark {args.name!r}; choose one of: stability")
    if args.split not in BENCH_SPLITS:
        raise ConfigurationError(f"unknown split {args.split!r}; choose one of: "
                                 f"{', '.join(BENCH_SPLITS)}")
    from experiments import stability
    from experiments.cases import TURBULENCE_NAMES
    from nn.artifact import load_artifact
    from scm.errors import check_choice
    from scm.integration import DEFAULT_BOUNDS

    for name in (args.baseline, *args.physics):
        check_choice("physics closure", name, TURBULENCE_NAMES)
    check_choice("fallback", args.fallback, ("off", "on", "both"))
    config = stability.StabilityConfig(days=args.hours / 24.0,
                                       bounds=parse_bounds(args.bounds, DEFAULT_BOUNDS),
                                       drift_theta=args.drift_theta,
                                       drift_wind=args.drift_wind, truth=args.truth_runs)
    for path in args.artifacts:
        load_artifact(path)  # every artifact is checked before anything runs
    if args.cache:
        enable_compilation_cache()
    stability.run_benchmark(args.artifacts, out, baseline=args.baseline,
                            physics=tuple(args.physics), sets=args.split,
                            truth_dir=args.truth_dir, config=config, fallback=args.fallback,
                            sizes={"test": args.scenarios, "extrapolation": args.per_family},
                            progress=args.progress)
    return 0


def parse_bounds(assignments: Sequence[str], defaults: dict) -> tuple:
    """``FIELD=LOW:HIGH`` assignments over ``defaults`` as ``(field, low, high)`` triples."""
    from scm.errors import check_choice

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


# ---------------------------------------------------------------------------------------------
# plot, compare, inspect


def command_plot(args: argparse.Namespace) -> int:
    """Draw the figures of a run or truth file into ``--out-dir``."""
    out = check_output_directory("--out-dir", args.out_dir)
    from experiments.plots import plot_trajectory
    from scm.io import read_netcdf

    dataset = read_trajectory_file(args.file, read_netcdf)
    for path in plot_trajectory(dataset, out, window=args.window):
        print(path)
    return 0


def read_trajectory_file(path, read):
    """A run or truth file (``read``: ``scm.io.read_netcdf``); ``ConfigurationError`` for any
    other netCDF file."""
    dataset = read(path)
    if not {"time", "column", "z"} <= set(dataset.dims):
        raise ConfigurationError(f"{path} is not a run or truth file (it has dims "
                                 f"{', '.join(map(str, dataset.dims))}; a run file has time, "
                                 "column and z)")
    return dataset


def command_compare(args: argparse.Namespace) -> int:
    """Print the differences of two run files and draw them over each other."""
    out = check_output_directory("--out-dir", args.out_dir)
    from experiments.plots import compare_datasets, plot_comparison
    from scm.io import read_netcdf

    first, second = (read_trajectory_file(path, read_netcdf) for path in args.files)
    rows = compare_datasets(first, second)
    a, b = (Path(path).name for path in args.files)
    print(f"{'variable':<24}{'units':<14}{'RMS difference':>16}{'largest':>14}  ({b} - {a})")
    for name, units, rms, largest in rows:
        print(f"{name:<24}{units:<14}{rms:>16.4g}{largest:>14.4g}")
    for path in plot_comparison(first, second, (a, b), out):
        print(path)
    return 0


def command_inspect(args: argparse.Namespace) -> int:
    """Describe a trained artifact from its files (the weights are not loaded)."""
    import json

    from nn.artifact import read_config

    directory = Path(args.directory)
    config = read_config(directory)
    network, head = config["network"], config["head"]
    lines = [
        ("artifact", str(directory)),
        ("slot", config["slot"]),
        ("coupling", config["coupling"] + (f" (corrects the {config['physics']} closure)"
                                           if config["coupling"] == "residual" else "")),
        ("network", f"{network['kind']}, " + ", ".join(f"{k} {v}" for k, v in
                                                      network["options"].items())),
        ("levels", str(network["levels"])),
        ("head", f"{head['kind']}, " + ", ".join(f"{k} {v:g}" for k, v in
                                                head["options"].items())),
        ("features", ", ".join(config.get("features") or ["the default set"])),
        ("input detector", "ood.json" + (", fallback on by default"
                                         if config.get("ood", {}).get("fallback") else "")
         if (directory / "ood.json").exists() else "none"),
        ("trained with", ", ".join(
            f"{label} {config[key]}{unit}" for key, label, unit in
            (("seed", "seed", ""), ("time_step", "time step", " s"))
            if config.get(key) is not None) or "not recorded"),
        ("written by", f"hybrid-scm {config.get('package_version', 'unknown')}"),
    ]
    weights = directory / "weights.eqx"
    lines.append(("weights", f"{weights.stat().st_size} bytes" if weights.exists()
                  else "MISSING"))
    for key, value in _flatten(config.get("provenance", {}), "provenance"):
        lines.append((key, value))
    metrics = directory / "metrics.json"
    if metrics.exists():
        try:
            values = json.loads(metrics.read_text())
        except ValueError as error:
            raise ConfigurationError(f"{metrics} is not valid JSON ({error})") from None
        lines += list(_flatten(values, "metrics"))
    width = max(len(key) for key, _ in lines) + 2
    for key, value in lines:
        print(f"{key:<{width}}{value}")
    return 0


def _flatten(value, prefix: str):
    """``(dotted key, text)`` pairs of a nested JSON value."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}.{key}")
    elif isinstance(value, float):
        yield prefix, f"{value:.6g}"
    else:
        yield prefix, str(value)


# ---------------------------------------------------------------------------------------------
# the compilation cache


def enable_compilation_cache() -> Path | None:
    """Keep compiled programs on disk so that a repeated run skips most of its compilation.

    Uses JAX's persistent compilation cache in ``$SCM_CACHE_DIR`` (an empty value turns it
    off), else ``$XDG_CACHE_HOME/hybrid-scm/jax`` or ``~/.cache/hybrid-scm/jax``. A cache
    directory already configured for JAX is left as it is; an unusable one is skipped.
    Returns the directory in use, or None.
    """
    jax = _jax()
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


def _jax():
    """JAX, imported when it is first needed (after the arguments were checked)."""
    import jax

    return jax


if __name__ == "__main__":
    sys.exit(main())
