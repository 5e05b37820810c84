"""The case catalogue: idealized column cases with their published specifications, one module
per case (its set-up, its sources and its published ranges in one place).

``build_case(name, ...)`` validates every option against its documented range before building
anything, then returns a ``Case``: model (grid + schemes), initial state, forcing series, time
step, run length and output interval. ``definition(name)`` is the case's ``Definition``
(references, averaging window, published ranges and the function that measures them from a
run). Specifications: ``docs/cases.md``.
"""

from __future__ import annotations

from experiments.cases import (
    bomex,
    diurnal,
    dry_cbl,
    dycoms_rf01,
    ekman,
    gabls1,
    neutral_ekman,
    rico,
)
from experiments.cases.base import (
    DAY,
    HOUR,
    TURBULENCE_NAMES,
    Case,
    Definition,
    PublishedRange,
)
from scm.constants import MIN_LEVELS
from scm.errors import (
    ConfigurationError,
    check_choice,
    check_integer,
    check_number,
    check_positive,
    check_range,
    whole_count,
)

_DEFINITIONS: dict[str, Definition] = {
    module.DEFINITION.name: module.DEFINITION
    for module in (ekman, neutral_ekman, gabls1, dry_cbl, diurnal, bomex, dycoms_rf01, rico)
}
CASE_NAMES: tuple[str, ...] = tuple(_DEFINITIONS)
MAX_LEVELS = 4096
#: Most time steps a run may take (decades of model time at the cases' time steps).
MAX_STEPS = 10**8
#: Model time between saved outputs that ``build_case`` aims for (s).
OUTPUT_INTERVAL = 600.0

ekman_steady_solution = ekman.steady_solution
ekman_impulsive_solution = ekman.impulsive_solution
diurnal_profiles = diurnal.diurnal_profiles


def output_steps(n_steps: int, dt: float, interval: float = OUTPUT_INTERVAL) -> int:
    """Steps between saved outputs: the largest divisor of ``n_steps`` whose interval is at
    most ``interval`` (s; at least one step), so that the saves end exactly at the end of the
    run (``OUTPUT_INTERVAL`` when it divides the run)."""
    target = max(1, min(n_steps, round(interval / dt)))
    return max(d for d in range(1, target + 1) if n_steps % d == 0)


def definition(name: str) -> Definition:
    """The ``Definition`` of a case (``ConfigurationError`` for an unknown name)."""
    check_choice("case", name, CASE_NAMES)
    return _DEFINITIONS[name]


def describe_cases() -> dict[str, str]:
    """Case name → one-line description."""
    return {name: spec.description for name, spec in _DEFINITIONS.items()}


def case_parameters(name: str) -> dict[str, tuple[float, float, float, str, str]]:
    """Tunable parameters of a case: name → (default, low, high, units, description)."""
    return dict(definition(name).parameters)


def check_options(name: str, *, levels: int | None = None, dt: float | None = None,
                  hours: float | None = None, turbulence: str | None = None,
                  **parameters) -> dict:
    """Every option of a case checked against its documented range, without building
    anything (and without JAX): the options ``build_case`` builds from, with the case's
    defaults filled in: ``levels``, ``dt``, ``hours``, ``turbulence``, ``n_steps`` and the
    case parameters' values under ``parameters``."""
    spec = definition(name)
    turbulence = spec.turbulence if turbulence is None else turbulence
    check_choice("turbulence", turbulence, TURBULENCE_NAMES)
    levels = check_integer("levels", spec.levels if levels is None else levels)
    check_range("levels", levels, MIN_LEVELS, MAX_LEVELS)
    dt = check_number("dt", spec.dt if dt is None else dt, "s")
    hours = check_number("hours", spec.hours if hours is None else hours, "h")
    check_positive("dt", dt, "s")
    check_range("dt", dt, 0.0, 3600.0, "s")
    check_positive("hours", hours, "h")
    n_steps = whole_count(f"hours = {hours:g} h", hours * HOUR, "time steps dt", dt)
    check_range(f"number of steps (hours / dt = {hours:g} h / {dt:g} s)", n_steps, 1,
                MAX_STEPS)
    unknown = sorted(set(parameters) - set(spec.parameters))
    if unknown:
        raise ConfigurationError(
            f"unknown parameter(s) {unknown} for case {name!r}; known: {sorted(spec.parameters)}"
        )
    values = {}
    for key, (default, low, high, units, _) in spec.parameters.items():
        values[key] = check_number(key, parameters.get(key, default), units)
        check_range(key, values[key], low, high, units)
    return {"levels": int(levels), "dt": dt, "hours": hours, "turbulence": turbulence,
            "n_steps": n_steps, "parameters": values}


def build_case(name: str, *, levels: int | None = None, dt: float | None = None,
               hours: float | None = None, turbulence: str | None = None,
               **parameters) -> Case:
    """Build a case; every option is checked against its documented range first
    (``check_options``)."""
    from scm.integration import check_state

    spec = definition(name)
    options = check_options(name, levels=levels, dt=dt, hours=hours, turbulence=turbulence,
                            **parameters)
    levels, dt, hours, values = (options[k] for k in ("levels", "dt", "hours", "parameters"))
    save_every = output_steps(options["n_steps"], dt)
    model, state0, forcing, extra = spec.build(values, levels, spec.top, dt, hours,
                                               options["turbulence"])
    check_state(state0)
    recorded = {"case": name, "levels": levels, "top": spec.top, "dt": dt, "hours": hours,
                "save_every": save_every, "turbulence": options["turbulence"], **values,
                **extra}
    return Case(name, spec.description, model, state0, forcing, dt, hours, save_every, recorded)


def __getattr__(attribute: str):
    # The builders' helpers load JAX: only on first use (see experiments.cases.base).
    if attribute == "turbulence_scheme":
        from experiments.cases.building import turbulence_scheme

        return turbulence_scheme
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


__all__ = [
    "CASE_NAMES",
    "DAY",
    "HOUR",
    "MAX_LEVELS",
    "MAX_STEPS",
    "OUTPUT_INTERVAL",
    "TURBULENCE_NAMES",
    "Case",
    "Definition",
    "PublishedRange",
    "build_case",
    "check_options",
    "case_parameters",
    "definition",
    "output_steps",
    "describe_cases",
    "diurnal_profiles",
    "ekman_impulsive_solution",
    "ekman_steady_solution",
    "turbulence_scheme",
]
