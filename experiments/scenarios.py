"""Scenario families of the ``diurnal``, ``gabls1`` and ``dry_cbl`` cases, and stacking of
scenarios for vectorised runs.

A scenario is a dict of one case's parameters (``build_case(case, **scenario)``). Each case
with a family (``CASES``) has training ranges and out-of-distribution bands for the
parameters it varies (``FAMILIES``; table in ``docs/truth.md``). Three splits are drawn:

- ``train`` and ``heldout``: every varied parameter uniform over its training range, the two
  splits from different seeds derived from the same user seed, so the sets differ;
- ``ood`` (out of distribution): the parameters listed in the family's ``ood`` bands drawn
  from those bands, outside their training ranges (``diurnal``: stronger geostrophic wind,
  larger diurnal amplitude and latitudes outside the training band, half of the scenarios on
  each side of it; ``gabls1``: stronger surface cooling and geostrophic wind; ``dry_cbl``:
  larger surface heat flux and an inversion weaker or stronger than in training, half each),
  the other varied parameters over their training ranges.

Samples are Latin hypercubes (McKay et al. 1979): each parameter's range is cut into ``n``
equal strata and every stratum holds exactly one scenario, so even small sets cover the
ranges. Parameters that are not varied keep the case defaults and are written out, so a
scenario records the whole configuration. ``TRAINING_RANGES`` and ``OOD_RANGES`` are the
``diurnal`` family's, the default everywhere a case is not named.

Scenarios run together: ``stack_pytrees`` stacks the models, forcings and initial states of
several built cases along a new leading axis, for ``jax.vmap`` over all three
(``experiments.run.run_ensemble``). Each scenario may have its own reference state (the
hydrostatic density depends on the initial θ profile: surface temperature and lapse rate of a
diurnal scenario, inversion and lapse rate of a dry CBL); grids are arrays in the model
pytree, so this costs nothing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from experiments.cases import Case, case_parameters
from scm.errors import ConfigurationError, check_choice, check_range
from scm.forcing import ForcingSeries
from scm.model import Model
from scm.state import State

#: The default case of every function here (the family the truth was first made for).
CASE = "diurnal"

SPLITS: tuple[str, ...] = ("train", "heldout", "ood")

Ranges = Mapping[str, tuple[float, float]]
Bands = Mapping[str, tuple[tuple[float, float], ...]]

#: Training ranges (low, high) of the varied ``diurnal`` parameters, in the case's units:
#: degrees_north, m s-1, K, K, K km-1. Inside the case's documented ranges.
TRAINING_RANGES: dict[str, tuple[float, float]] = {
    "latitude": (30.0, 60.0),
    "geostrophic_wind": (5.0, 12.0),
    "surface_temperature": (280.0, 300.0),
    "diurnal_amplitude": (4.0, 10.0),
    "lapse_rate": (4.0, 6.0),
}

#: Out-of-distribution ranges: one or more bands per parameter (a sample falls in each band in
#: proportion to its width); parameters not listed keep their training range.
OOD_RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    "geostrophic_wind": ((13.0, 18.0),),
    "diurnal_amplitude": ((11.0, 14.0),),
    "latitude": ((15.0, 25.0), (65.0, 75.0)),
}


@dataclasses.dataclass(frozen=True)
class ScenarioFamily:
    """The varied parameters of one case: ``training`` ranges name → (low, high) and
    out-of-distribution ``ood`` bands name → ((low, high), ...), in the case's units. Every
    other parameter keeps its case default."""

    training: Ranges
    ood: Bands


#: Scenario families by case, inside the cases' documented ranges (``case_parameters``).
#: GABLS1 (Beare et al. 2006; defaults 0.25 K h-1, 8 m s-1, z0 = 0.1 m): stability and shear
#: of the stable layer vary around the default; OOD is a colder surface under a stronger wind.
#: Dry CBL (Sullivan & Patton 2011; defaults 0.24 K m s-1, 1 m s-1, 8 K, 3 K km-1): weak to
#: vigorous convection, with and without shear; OOD is stronger heating under an inversion
#: weaker or stronger than in training (half each). The bounds keep every layer well below
#: the case's top, which no turbulent flux may cross: in TKE runs of the corners over the
#: case's length (64 and 128 levels) the GABLS1 stress-based height stayed below 290 m of
#: 400 m, and the dry CBL's updraft top below 1250 m (training) and 1750 m (OOD) of 2000 m.
#: Stronger heating under a weaker inversion than the OOD corner (0.32 K m s-1, 4 K,
#: 3 K km-1) reaches the top within the 4 h.
FAMILIES: dict[str, ScenarioFamily] = {
    "diurnal": ScenarioFamily(TRAINING_RANGES, OOD_RANGES),
    "gabls1": ScenarioFamily(
        training={
            "surface_cooling_rate": (0.1, 0.5),  # K h-1
            "geostrophic_wind": (5.0, 10.0),  # m s-1
            "roughness_length": (0.02, 0.2),  # m, momentum and heat
        },
        ood={
            "surface_cooling_rate": ((0.6, 1.0),),
            "geostrophic_wind": ((11.0, 14.0),),
        },
    ),
    "dry_cbl": ScenarioFamily(
        training={
            "surface_heat_flux": (0.05, 0.25),  # K m s-1
            "geostrophic_wind": (1.0, 10.0),  # m s-1
            "inversion_jump": (6.0, 10.0),  # K
            "lapse_rate": (3.0, 6.0),  # K km-1
        },
        ood={
            "surface_heat_flux": ((0.28, 0.32),),
            "inversion_jump": ((4.0, 5.0), (11.0, 12.0)),
        },
    ),
}

#: Cases that have a scenario family.
CASES: tuple[str, ...] = tuple(FAMILIES)

#: Largest scenario set ``sample_scenarios`` draws.
MAX_SCENARIOS = 100_000


def scenario_family(case: str = CASE) -> ScenarioFamily:
    """The scenario family of ``case``; ``ConfigurationError`` naming ``CASES`` otherwise."""
    check_choice("case", case, CASES)
    return FAMILIES[case]


def split_ranges(split: str, case: str = CASE) -> dict[str, tuple[tuple[float, float], ...]]:
    """The bands each varied parameter of ``case`` is drawn from in ``split``:
    name → ((low, high), ...)."""
    check_choice("split", split, SPLITS)
    family = scenario_family(case)
    bands = {name: (limits,) for name, limits in family.training.items()}
    if split == "ood":
        bands.update(family.ood)
    return bands


def sample_scenarios(split: str, n: int, seed: int = 0, *,
                     case: str = CASE) -> list[dict[str, float]]:
    """``n`` scenarios of ``case`` in ``split`` ("train", "heldout" or "ood"), deterministic in
    ``(case, split, n, seed)``: a Latin hypercube over the split's ranges (``split_ranges``).

    Returns parameter dicts for ``build_case(case, **scenario)`` holding every case parameter
    (the varied ones drawn, the others at the case defaults).
    """
    check_choice("split", split, SPLITS)
    bands = split_ranges(split, case)
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise ConfigurationError(f"number of scenarios must be an integer (got {n!r})")
    check_range("number of scenarios", n, 1, MAX_SCENARIOS)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ConfigurationError(f"seed must be an integer (got {seed!r})")
    check_range("seed", seed, 0, 2**63 - 1)
    n = int(n)
    # One independent stream per split (spawn key = split index): train and heldout differ.
    # Families other than the diurnal one append their case index, so they draw from streams
    # of their own while diurnal sets stay what they always were.
    family_key = () if case == CASE else (CASES.index(case),)
    stream = np.random.SeedSequence(int(seed), spawn_key=(SPLITS.index(split), *family_key))
    rng = np.random.default_rng(stream)
    defaults = {name: float(spec[0]) for name, spec in case_parameters(case).items()}
    drawn = {name: _bands(_latin_hypercube(rng, n), limits) for name, limits in bands.items()}
    return [{**defaults, **{name: float(values[i]) for name, values in drawn.items()}}
            for i in range(n)]


def _latin_hypercube(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` numbers in [0, 1), one uniformly placed in each stratum [i/n, (i+1)/n), shuffled."""
    return (rng.permutation(n) + rng.uniform(size=n)) / n


def _bands(unit: np.ndarray, bands: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Map [0, 1) onto the union of ``bands`` laid end to end (uniform over the union)."""
    widths = np.array([high - low for low, high in bands])
    position = unit * widths.sum()
    edges = np.concatenate([[0.0], np.cumsum(widths)])
    band = np.clip(np.searchsorted(edges, position, side="right") - 1, 0, len(bands) - 1)
    lows = np.array([low for low, _ in bands])
    return np.minimum(lows[band] + position - edges[band], lows[band] + widths[band])


def stack_pytrees(trees: Sequence):
    """Stack equal-structured pytrees (models, forcings or states of several columns) along a
    new leading axis: ``jax.tree.map(lambda *x: jnp.stack(x), *trees)`` on the arrays.

    Everything that is not an array (static fields such as a closure's time step, the
    forcing's period, the slots a model fills) must be equal in all trees, and array shapes
    and dtypes must agree; otherwise ``ConfigurationError`` names the first tree that differs.
    """
    trees = list(trees)
    if not trees:
        raise ConfigurationError("nothing to stack: got an empty sequence of pytrees")
    arrays, statics = zip(*(eqx.partition(t, eqx.is_array) for t in trees), strict=True)
    structure = jax.tree.structure(arrays[0])
    static_structure = jax.tree.structure(statics[0])
    static_leaves = jax.tree.leaves(statics[0])
    signature = [(jnp.shape(a), jnp.result_type(a)) for a in jax.tree.leaves(arrays[0])]
    for index, (dynamic, static) in enumerate(zip(arrays, statics, strict=True)):
        if (jax.tree.structure(dynamic) != structure
                or jax.tree.structure(static) != static_structure
                or not _equal_leaves(jax.tree.leaves(static), static_leaves)):
            raise ConfigurationError(
                f"cannot stack pytree {index} with pytree 0: their structures or static "
                f"(non-array) fields differ ({type(trees[index]).__name__})")
        shapes = [(jnp.shape(a), jnp.result_type(a)) for a in jax.tree.leaves(dynamic)]
        if shapes != signature:
            first = next(i for i, (a, b) in enumerate(zip(shapes, signature, strict=True))
                         if a != b)
            raise ConfigurationError(
                f"cannot stack pytree {index} with pytree 0: array leaf {first} has shape and "
                f"dtype {shapes[first]}, pytree 0 has {signature[first]}")
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *arrays)
    return eqx.combine(stacked, statics[0])


def _equal_leaves(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        try:
            same = x is y or bool(x == y)
        except Exception:  # comparisons that are not a plain bool count as different
            same = False
        if not same and not (isinstance(x, float) and isinstance(y, float)
                             and math.isnan(x) and math.isnan(y)):
            return False
    return True


def stack_cases(cases: Sequence[Case]) -> tuple[Model, ForcingSeries, State]:
    """Models, forcings and initial states of built cases, each stacked along a leading
    scenario axis (``stack_pytrees``), ready for ``experiments.run.run_ensemble``."""
    cases = list(cases)
    if not cases:
        raise ConfigurationError("nothing to stack: got no cases")
    return (stack_pytrees([c.model for c in cases]), stack_pytrees([c.forcing for c in cases]),
            stack_pytrees([c.state0 for c in cases]))


__all__ = [
    "CASE",
    "CASES",
    "FAMILIES",
    "OOD_RANGES",
    "SPLITS",
    "TRAINING_RANGES",
    "ScenarioFamily",
    "sample_scenarios",
    "scenario_family",
    "split_ranges",
    "stack_cases",
    "stack_pytrees",
]
