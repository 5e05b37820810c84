"""Scenario sets of the ``diurnal``, ``gabls1`` and ``dry_cbl`` cases, and stacking of
scenarios for vectorised runs.

A scenario is a dict of one case's parameters (``build_case(case, **scenario)``). Each case
with a family (``CASES``) has, for every parameter it varies, a **training range**, and
bands beyond it (``FAMILIES``; tables in ``docs/truth.md``). Four disjoint sets are drawn,
each from a random stream of its own (``SeedSequence(seed, spawn_key=(set, case, ...))``), so
any set can be redrawn with another seed without touching the others:

- ``train``: every varied parameter over its training range;
- ``validation``: the only set for design choices, early stopping and model selection. Half
  of it lies inside the training ranges; the other half are **margin** scenarios, in which
  one parameter (in turn) lies just outside its training range, in a band between the
  training range and the extrapolation bands (``ScenarioFamily.margin``). It is closer to the
  training data than any extrapolation scenario, so tuning on it cannot tune on them;
- ``test``: the training ranges again, a different draw, looked at once at the end;
- ``extrapolation``: families (``ScenarioFamily.extrapolation``) that push one parameter, or
  several jointly, beyond the margin bands toward the case's documented limits, the other
  parameters over their training ranges; ``n`` scenarios per family.

Samples are Latin hypercubes (McKay et al. 1979): each range (or union of bands) is cut into
``n`` equal strata and every stratum holds exactly one scenario, so even small sets cover
the ranges. Parameters in ``ScenarioFamily.log_scale`` (roughness lengths, which span
decades) are sampled uniformly in their logarithm. Parameters a family does not vary keep
the case defaults; every scenario records the whole configuration. ``scenario_labels`` names
the family (``"train"``, ``"test"``, ``"validation"``, ``"margin_<parameter>"`` or an
extrapolation family) of every scenario a call of ``sample_scenarios`` returns.

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

SPLITS: tuple[str, ...] = ("train", "validation", "test", "extrapolation")

Ranges = Mapping[str, tuple[float, float]]
Bands = Mapping[str, tuple[tuple[float, float], ...]]


@dataclasses.dataclass(frozen=True)
class ScenarioFamily:
    """The varied parameters of one case, in the case's units.

    ``training``: name → (low, high), every varied parameter; ``margin``: name → bands just
    outside the training range (validation only); ``extrapolation``: family name → {name →
    bands} beyond the margins; ``log_scale``: parameters sampled uniformly in their logarithm.
    Every other parameter keeps its case default."""

    training: Ranges
    extrapolation: Mapping[str, Bands]
    margin: Bands = dataclasses.field(default_factory=dict)
    log_scale: frozenset[str] = frozenset()


#: Training ranges of the ``diurnal`` parameters (all eight the case exposes), inside the
#: case's documented ranges: degrees_north, m s-1, K, K, K km-1, K day-1, h, m.
TRAINING_RANGES: dict[str, tuple[float, float]] = {
    "latitude": (30.0, 60.0),
    "geostrophic_wind": (5.0, 12.0),
    "surface_temperature": (280.0, 300.0),
    "diurnal_amplitude": (4.0, 10.0),
    "lapse_rate": (4.0, 6.0),
    "cooling_rate": (1.0, 2.0),
    "relaxation_time": (3.0, 12.0),
    "roughness_length": (0.03, 0.3),
}

#: Validation margins: bands just outside each training range, short of the extrapolation
#: bands (the two never overlap).
MARGIN_RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    "latitude": ((24.0, 30.0), (60.0, 66.0)),
    "geostrophic_wind": ((4.0, 5.0), (12.0, 14.0)),
    "surface_temperature": ((277.0, 280.0), (300.0, 303.0)),
    "diurnal_amplitude": ((2.5, 4.0), (10.0, 11.5)),
    "lapse_rate": ((3.6, 4.0), (6.0, 6.6)),
    "cooling_rate": ((0.8, 1.0), (2.0, 2.3)),
    "relaxation_time": ((2.0, 3.0), (12.0, 16.0)),
    "roughness_length": ((0.012, 0.03), (0.3, 0.5)),
}

#: Extrapolation families: each pushes one parameter (or several, jointly) beyond its margin
#: toward the case's limits (latitude 10-80, wind 2-20 m s-1, θs 270-310 K, amplitude
#: 0-15 K, lapse rate 3-8 K km-1, cooling 0.5-3 K day-1, relaxation 1-24 h, z0 1 mm-1 m).
EXTRAPOLATION_FAMILIES: dict[str, dict[str, tuple[tuple[float, float], ...]]] = {
    "strong_wind": {"geostrophic_wind": ((15.0, 20.0),)},
    "weak_wind": {"geostrophic_wind": ((2.0, 3.5),)},
    "latitude": {"latitude": ((10.0, 20.0), (70.0, 80.0))},
    "large_amplitude": {"diurnal_amplitude": ((12.0, 15.0),)},
    "roughness": {"roughness_length": ((0.001, 0.0017), (0.6, 1.0))},
    "stratification": {"lapse_rate": ((3.0, 3.4), (7.0, 8.0))},
    "radiation": {"cooling_rate": ((0.5, 0.7), (2.5, 3.0)),
                  "relaxation_time": ((1.0, 1.7), (18.0, 24.0))},
    "surface_temperature": {"surface_temperature": ((270.0, 275.0), (305.0, 310.0))},
    "joint": {"geostrophic_wind": ((14.0, 18.0),), "diurnal_amplitude": ((11.5, 14.0),),
              "latitude": ((66.0, 76.0),), "roughness_length": ((0.5, 0.8),),
              "lapse_rate": ((6.6, 7.5),)},
}


#: Scenario families by case, inside the cases' documented ranges (``case_parameters``).
#: GABLS1 (Beare et al. 2006; defaults 0.25 K h-1, 8 m s-1, z0 = 0.1 m): stability and shear
#: of the stable layer vary around the default; its extrapolation is a colder surface under a
#: stronger wind. Dry CBL (Sullivan & Patton 2011; defaults 0.24 K m s-1, 1 m s-1, 8 K,
#: 3 K km-1): weak to vigorous convection, with and without shear; its extrapolation is
#: stronger heating under an inversion weaker or stronger than in training (half each). The
#: bounds keep every layer well below the case's top, which no turbulent flux may cross: in
#: TKE runs of the corners over the case's length (64 and 128 levels) the GABLS1 stress-based
#: height stayed below 290 m of 400 m, and the dry CBL's updraft top below 1250 m (training)
#: and 1750 m (extrapolation) of 2000 m. Stronger heating under a weaker inversion than the
#: extrapolation corner (0.32 K m s-1, 4 K, 3 K km-1) reaches the top within the 4 h.
FAMILIES: dict[str, ScenarioFamily] = {
    "diurnal": ScenarioFamily(TRAINING_RANGES, EXTRAPOLATION_FAMILIES, MARGIN_RANGES,
                              frozenset({"roughness_length"})),
    "gabls1": ScenarioFamily(
        training={
            "surface_cooling_rate": (0.1, 0.5),  # K h-1
            "geostrophic_wind": (5.0, 10.0),  # m s-1
            "roughness_length": (0.02, 0.2),  # m, momentum and heat
        },
        extrapolation={"cold_windy": {
            "surface_cooling_rate": ((0.6, 1.0),),
            "geostrophic_wind": ((11.0, 14.0),),
        }},
    ),
    "dry_cbl": ScenarioFamily(
        training={
            "surface_heat_flux": (0.05, 0.25),  # K m s-1
            "geostrophic_wind": (1.0, 10.0),  # m s-1
            "inversion_jump": (6.0, 10.0),  # K
            "lapse_rate": (3.0, 6.0),  # K km-1
        },
        extrapolation={"strong_heating": {
            "surface_heat_flux": ((0.28, 0.32),),
            "inversion_jump": ((4.0, 5.0), (11.0, 12.0)),
        }},
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


def extrapolation_families(case: str = CASE) -> tuple[str, ...]:
    """The names of ``case``'s extrapolation families, in sampling order."""
    return tuple(scenario_family(case).extrapolation)


def _check_request(split: str, n, seed, families) -> tuple[str, ...] | None:
    check_choice("split", split, SPLITS)
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise ConfigurationError(f"number of scenarios must be an integer (got {n!r})")
    check_range("number of scenarios", n, 1, MAX_SCENARIOS)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ConfigurationError(f"seed must be an integer (got {seed!r})")
    check_range("seed", seed, 0, 2**63 - 1)
    return None if families is None else tuple(families)


def scenario_labels(split: str, n: int, *, case: str = CASE,
                    families: Sequence[str] | None = None) -> list[str]:
    """The family of each scenario ``sample_scenarios(split, n, ..., families=families)``
    returns, in the same order: the split's name for ``train`` and ``test``; ``validation``
    or ``margin_<parameter>`` for the validation set; the extrapolation family otherwise."""
    family = scenario_family(case)
    families = _check_request(split, n, 0, families)
    if split == "extrapolation":
        chosen = _chosen_families(family, families)
        return [name for name in chosen for _ in range(int(n))]
    if split != "validation" or not family.margin:
        return [split] * int(n)
    margins = list(family.margin)
    inside = -(-int(n) // 2)
    return ["validation"] * inside + [f"margin_{margins[i % len(margins)]}"
                                      for i in range(int(n) - inside)]


def _chosen_families(family: ScenarioFamily, families: tuple[str, ...] | None):
    if families is None:
        return tuple(family.extrapolation)
    for name in families:
        check_choice("extrapolation family", name, tuple(family.extrapolation))
    if not families:
        raise ConfigurationError("extrapolation families: name at least one")
    return families


def split_ranges(split: str, case: str = CASE,
                 label: str | None = None) -> dict[str, tuple[tuple[float, float], ...]]:
    """The bands each varied parameter of ``case`` is drawn from for scenarios of ``label``
    (a ``scenario_labels`` entry; default: the split's first) in ``split``:
    name → ((low, high), ...)."""
    check_choice("split", split, SPLITS)
    family = scenario_family(case)
    bands = {name: (limits,) for name, limits in family.training.items()}
    if split == "extrapolation":
        label = next(iter(family.extrapolation)) if label is None else label
        check_choice("extrapolation family", label, tuple(family.extrapolation))
        bands.update(family.extrapolation[label])
    elif label is not None and label.startswith("margin_"):
        name = label.removeprefix("margin_")
        check_choice("margin parameter", name, tuple(family.margin))
        bands[name] = family.margin[name]
    return bands


def sample_scenarios(split: str, n: int, seed: int = 0, *, case: str = CASE,
                     families: Sequence[str] | None = None) -> list[dict[str, float]]:
    """Scenarios of ``case`` in ``split`` (``SPLITS``), deterministic in ``(case, split, n,
    seed, families)``: Latin hypercubes over the bands of ``split_ranges``.

    ``n`` scenarios for ``train``, ``validation`` and ``test``; ``n`` per extrapolation family
    (``families``, default all, in their order) for ``extrapolation``. Returns parameter dicts
    for ``build_case(case, **scenario)`` holding every case parameter (the varied ones drawn,
    the others at the case defaults); ``scenario_labels`` gives their families.
    """
    family = scenario_family(case)
    families = _check_request(split, n, seed, families)
    labels = scenario_labels(split, n, case=case, families=families)
    key = (SPLITS.index(split), CASES.index(case))
    defaults = {name: float(spec[0]) for name, spec in case_parameters(case).items()}
    scenarios: list[dict[str, float]] = [dict(defaults) for _ in labels]
    # One stream per label (an extrapolation family, the margin scenarios of one parameter,
    # the rest), keyed by the label's place among all of the set's labels: choosing other
    # families or scenarios of another kind never moves a draw.
    every = ([split, *(f"margin_{name}" for name in family.margin)] if split != "extrapolation"
             else list(family.extrapolation))
    for label in dict.fromkeys(labels):
        members = [i for i, name in enumerate(labels) if name == label]
        stream = np.random.SeedSequence(int(seed), spawn_key=(*key, every.index(label)))
        rng = np.random.default_rng(stream)
        for name, bands in split_ranges(split, case, label).items():
            values = _bands(_latin_hypercube(rng, len(members)), bands,
                            name in family.log_scale)
            for member, value in zip(members, values, strict=True):
                scenarios[member][name] = float(value)
    return scenarios


def _latin_hypercube(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` numbers in [0, 1), one uniformly placed in each stratum [i/n, (i+1)/n), shuffled."""
    return (rng.permutation(n) + rng.uniform(size=n)) / n


def _bands(unit: np.ndarray, bands: tuple[tuple[float, float], ...],
           log_scale: bool = False) -> np.ndarray:
    """Map [0, 1) onto the union of ``bands`` laid end to end (uniform over the union, in the
    logarithm of the parameter when ``log_scale``)."""
    if log_scale:
        logs = tuple((math.log(low), math.log(high)) for low, high in bands)
        return np.exp(_bands(unit, logs))
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
    "EXTRAPOLATION_FAMILIES",
    "FAMILIES",
    "MARGIN_RANGES",
    "SPLITS",
    "TRAINING_RANGES",
    "ScenarioFamily",
    "extrapolation_families",
    "sample_scenarios",
    "scenario_family",
    "scenario_labels",
    "split_ranges",
    "stack_cases",
    "stack_pytrees",
]
