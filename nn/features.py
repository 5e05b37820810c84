"""Column features for neural parameterizations, and their frozen normalization.

A network sees one column as a few O(1) profiles ``(P, z)`` plus a few O(1) scalars
``(S,)``, chosen by name from two registries (``FeatureSet``; ``DEFAULT_FEATURES`` when none
are named):

- dimensional profiles: the column anomalies ``u_anomaly``, ``v_anomaly``, ``thl_anomaly``,
  ``qt_anomaly`` (x − ⟨x⟩, ⟨·⟩ the mass-weighted column mean: mixing depends on shear and
  stratification, not on the column's mean wind or temperature, so these are invariant under
  a uniform shift of either), and the departures from the geostrophic wind ``u_departure``,
  ``v_departure`` (m s-1, from the forcing);
- physically scaled, non-dimensional profiles (surface-layer and rotation scales; u*ₛ is the
  surface layer's u* with a floor ``USTAR_FLOOR`` where the wind is calm): the velocity defect
  ``u_defect``, ``v_defect`` = (u − u_g)/u*ₛ (Rossby similarity: one curve whatever the
  geostrophic wind), the Rossby-scaled height ``rotation_height`` = z |f| / u*ₛ, the local
  gradient Richardson number ``richardson`` and the bulk Richardson number from the ground
  ``bulk_richardson`` = g (θl − θs) z / (θs (|U|² + u*ₛ²)), both bounded as x / (1 + |x|), and
  the scaled shear ``shear_scaled`` = ln(1 + κ z S / u*ₛ) (φm in a surface layer);
- scalars: the surface excess ``surface_temperature_excess`` θs − θl₁ (K), ``ustar``
  (m s-1), the surface ``surface_heat_flux`` (K m s-1), the bounded stability parameter
  ``stability`` ζ₁/(1 + |ζ₁|), ζ₁ = z₁/L, the forcing's ``coriolis_parameter`` (s-1) and
  ``geostrophic_speed`` (m s-1), and the time of day ``time_of_day_cos``,
  ``time_of_day_sin`` (of 2π t / day, t from ``Forcing.time``; the cases start at midnight).

Each variable is normalized as (x − mean) / scale with ONE pooled mean and scale per
variable (over columns, times and levels), fitted on samples of the training data
(``Normalization.from_samples``): a per-level standard deviation is near zero aloft and blows
inputs up online (Rasp, Pritchard & Gentine 2018, PNAS 115, used one scale per level; pooling
is the safer choice for online coupling, cf. Brenowitz & Bretherton 2018, GRL 45).
The normalization is frozen: stored as arrays, passed through ``jax.lax.stop_gradient`` when
used, and excluded from training (see ``nn.parameterization.trainable_filter``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from physics.surface import SurfaceFluxes
from physics.thermodynamics import diagnose
from physics.turbulence import MIN_SHEAR2, buoyancy_frequency_squared, shear_squared
from scm.constants import GRAVITY, VON_KARMAN
from scm.errors import ConfigurationError
from scm.forcing import Forcing
from scm.grid import ColumnGrid
from scm.state import State, as_float

#: Smallest pooled scale (units of each variable): a constant field does not divide by zero.
MIN_SCALE = 1.0e-3
#: Floor (m s-1) on u* where a feature divides by it, as √(u*² + floor²): a calm night's
#: u* → 0 must not blow the scaled features up.
USTAR_FLOOR = 0.05
DAY = 86400.0


class FeatureInputs(NamedTuple):
    """What a feature is computed from: one column's state, the forcing at the instant, the
    grid, and the surface layer's fluxes (``None`` without a surface layer)."""

    state: State
    forcing: Forcing
    grid: ColumnGrid
    surface: SurfaceFluxes | None


def column_anomaly(x: Float[Array, "*b z"], grid: ColumnGrid) -> Float[Array, "*b z"]:
    """``x`` minus its mass-weighted column mean."""
    mean = grid.column_integral(x) / jnp.sum(grid.layer_mass)
    return x - mean[..., None]


def bounded(x):
    """x / (1 + |x|): monotone, odd, in (−1, 1), so unbounded ratios stay O(1)."""
    return x / (1.0 + jnp.abs(x))


def _ustar(inputs: FeatureInputs):
    zero = jnp.zeros_like(inputs.state.thl[0])
    return zero if inputs.surface is None else jnp.asarray(inputs.surface.ustar, zero.dtype)


def _velocity_scale(inputs: FeatureInputs):
    return jnp.sqrt(_ustar(inputs) ** 2 + USTAR_FLOOR**2)


def _to_centres(x: Float[Array, " n_interface"]) -> Float[Array, " z"]:
    """Interior-interface values to centres: the mean of each centre's two interfaces, the
    end interfaces (where gradients are not defined) replaced by their neighbours."""
    x = x.at[0].set(x[1]).at[-1].set(x[-2])
    return 0.5 * (x[:-1] + x[1:])


def _richardson(inputs: FeatureInputs):
    state, grid = inputs.state, inputs.grid
    n2 = buoyancy_frequency_squared(state, grid, diagnose(state, grid))
    return _to_centres(bounded(n2 / (shear_squared(state, grid) + MIN_SHEAR2)))


def _shear_scaled(inputs: FeatureInputs):
    grid = inputs.grid
    shear = jnp.sqrt(shear_squared(inputs.state, grid) + MIN_SHEAR2)
    return _to_centres(jnp.log1p(VON_KARMAN * grid.z_interface * shear
                                 / _velocity_scale(inputs)))


def _bulk_richardson(inputs: FeatureInputs):
    state, forcing, z = inputs.state, inputs.forcing, inputs.grid.z
    speed2 = state.u**2 + state.v**2 + _velocity_scale(inputs) ** 2
    theta_s = forcing.surface_temperature
    return bounded(GRAVITY * (state.thl - theta_s) * z / (theta_s * speed2))


def _time_of_day(inputs: FeatureInputs, phase: Callable):
    return phase(2.0 * math.pi * inputs.forcing.time / DAY).astype(inputs.state.thl.dtype)


def _stability(inputs: FeatureInputs):
    zero = jnp.zeros_like(inputs.state.thl[0])
    if inputs.surface is None:
        return zero
    return bounded(inputs.grid.z[0] / inputs.surface.obukhov_length).astype(zero.dtype)


#: Profile features (each ``(z,)`` at the layer centres), by name.
PROFILE_FEATURES: dict[str, Callable[[FeatureInputs], Array]] = {
    "u_anomaly": lambda i: column_anomaly(i.state.u, i.grid),
    "v_anomaly": lambda i: column_anomaly(i.state.v, i.grid),
    "thl_anomaly": lambda i: column_anomaly(i.state.thl, i.grid),
    "qt_anomaly": lambda i: column_anomaly(i.state.qt, i.grid),
    "u_departure": lambda i: i.state.u - i.forcing.geostrophic_u,
    "v_departure": lambda i: i.state.v - i.forcing.geostrophic_v,
    "u_defect": lambda i: (i.state.u - i.forcing.geostrophic_u) / _velocity_scale(i),
    "v_defect": lambda i: (i.state.v - i.forcing.geostrophic_v) / _velocity_scale(i),
    "rotation_height": lambda i: i.grid.z * jnp.abs(i.forcing.coriolis_parameter)
    / _velocity_scale(i),
    "richardson": _richardson,
    "bulk_richardson": _bulk_richardson,
    "shear_scaled": _shear_scaled,
}

#: Scalar features (each ``()``), by name.
SCALAR_FEATURES: dict[str, Callable[[FeatureInputs], Array]] = {
    "surface_temperature_excess": lambda i: i.forcing.surface_temperature - i.state.thl[0],
    "ustar": _ustar,
    "surface_heat_flux": lambda i: (jnp.zeros_like(i.state.thl[0]) if i.surface is None
                                    else jnp.asarray(i.surface.heat_flux, i.state.thl.dtype)),
    "stability": _stability,
    "coriolis_parameter": lambda i: i.forcing.coriolis_parameter,
    "geostrophic_speed": lambda i: jnp.mean(jnp.hypot(i.forcing.geostrophic_u,
                                                      i.forcing.geostrophic_v)),
    "time_of_day_cos": lambda i: _time_of_day(i, jnp.cos),
    "time_of_day_sin": lambda i: _time_of_day(i, jnp.sin),
}

#: The features of the experiment's first networks (and the default).
DEFAULT_FEATURES: tuple[str, ...] = ("u_anomaly", "v_anomaly", "thl_anomaly",
                                     "surface_temperature_excess", "ustar")
#: The physically scaled, non-dimensional set (with θs − θl₁ and u* for the surface state).
SCALED_FEATURES: tuple[str, ...] = ("u_defect", "v_defect", "thl_anomaly", "richardson",
                                    "bulk_richardson", "rotation_height",
                                    "surface_temperature_excess", "ustar", "stability")
#: The canonical experiment's features: the scaled set, the surface heat flux and the time of
#: day (chosen on the validation set, docs/training.md).
EXPERIMENT_FEATURES: tuple[str, ...] = (*SCALED_FEATURES, "surface_heat_flux",
                                        "time_of_day_cos", "time_of_day_sin")


class FeatureSet(eqx.Module):
    """Named profile and scalar features (``PROFILE_FEATURES``, ``SCALAR_FEATURES``)."""

    profiles: tuple[str, ...] = eqx.field(static=True)
    scalars: tuple[str, ...] = eqx.field(static=True)

    @classmethod
    def from_names(cls, names: Sequence[str] = DEFAULT_FEATURES) -> FeatureSet:
        """The features ``names`` (profiles and scalars in any order, each kept in the order
        given); ``ConfigurationError`` naming the known ones for an unknown name."""
        names = tuple(names)
        unknown = [n for n in names if n not in PROFILE_FEATURES and n not in SCALAR_FEATURES]
        if unknown or len(set(names)) != len(names):
            known = ", ".join([*PROFILE_FEATURES, *SCALAR_FEATURES])
            problem = f"unknown {unknown}" if unknown else "a name given twice"
            raise ConfigurationError(f"features: {problem}; known features: {known}")
        profiles = tuple(n for n in names if n in PROFILE_FEATURES)
        if not profiles:
            raise ConfigurationError("features: name at least one profile feature "
                                     f"({', '.join(PROFILE_FEATURES)})")
        return cls(profiles, tuple(n for n in names if n in SCALAR_FEATURES))

    @property
    def names(self) -> tuple[str, ...]:
        return self.profiles + self.scalars

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid,
                 surface: SurfaceFluxes | None) -> tuple[Float[Array, "p z"], Float[Array, " s"]]:
        """Unnormalized ``(profiles (P, z), scalars (S,))`` of one column."""
        inputs = FeatureInputs(state, forcing, grid, surface)
        dtype = state.thl.dtype
        profiles = jnp.stack([PROFILE_FEATURES[n](inputs).astype(dtype)
                              for n in self.profiles])
        scalars = jnp.stack([jnp.asarray(SCALAR_FEATURES[n](inputs), dtype)
                             for n in self.scalars]) if self.scalars else jnp.zeros((0,), dtype)
        return profiles, scalars


class Normalization(eqx.Module):
    """Frozen pooled (x − mean)/scale for the profile and scalar features."""

    profile_mean: Float[Array, " n_profiles"]
    profile_scale: Float[Array, " n_profiles"]
    scalar_mean: Float[Array, " n_scalars"]
    scalar_scale: Float[Array, " n_scalars"]

    @classmethod
    def from_samples(cls, profiles: Float[Array, "n p z"],
                     scalars: Float[Array, "n s"]) -> Normalization:
        """Pooled mean and standard deviation (floored at ``MIN_SCALE``) per variable of
        feature samples (``FeatureSet`` outputs stacked on a leading axis). Eager."""
        profiles, scalars = np.asarray(profiles, float), np.asarray(scalars, float)
        dtype = as_float(0.0).dtype
        p_mean = profiles.mean(axis=(0, 2))
        p_scale = np.maximum(profiles.std(axis=(0, 2)), MIN_SCALE)
        s_mean = scalars.mean(axis=0)
        s_scale = np.maximum(scalars.std(axis=0), MIN_SCALE)
        return cls(*(jnp.asarray(a, dtype) for a in (p_mean, p_scale, s_mean, s_scale)))

    @classmethod
    def fit(cls, states: State, grid: ColumnGrid, scalars=None) -> Normalization:
        """The default features' normalization from states alone (any leading axes): the
        profile anomalies pooled from ``states``; the scalars from ``scalars`` samples
        ``(..., 2)`` of (θs − θl₁, u*) or, without them, mean 0 and scale 1 (use
        ``from_samples`` with the training data's features to fit them too)."""
        profiles = np.stack([np.asarray(column_anomaly(x, grid)) for x in
                             (states.u, states.v, states.thl)], axis=-2)
        profiles = profiles.reshape(-1, *profiles.shape[-2:])
        if scalars is not None:
            return cls.from_samples(profiles, np.asarray(scalars).reshape(-1, 2))
        fitted = cls.from_samples(profiles, np.zeros((1, 2)))
        return eqx.tree_at(lambda n: n.scalar_scale, fitted, jnp.ones_like(fitted.scalar_scale))

    @classmethod
    def identity(cls, features: FeatureSet | None = None) -> Normalization:
        """Mean 0, scale 1 (for tests and for features already O(1))."""
        features = FeatureSet.from_names() if features is None else features
        dtype = as_float(0.0).dtype
        p, s = len(features.profiles), len(features.scalars)
        return cls(jnp.zeros(p, dtype), jnp.ones(p, dtype), jnp.zeros(s, dtype),
                   jnp.ones(s, dtype))

    def __call__(self, profiles: Float[Array, "c z"], scalars: Float[Array, " s"]):
        p_mean, p_scale, s_mean, s_scale = jax.lax.stop_gradient(
            (self.profile_mean, self.profile_scale, self.scalar_mean, self.scalar_scale))
        return ((profiles - p_mean[:, None]) / p_scale[:, None],
                (scalars - s_mean) / s_scale)


__all__ = [
    "DEFAULT_FEATURES",
    "EXPERIMENT_FEATURES",
    "FeatureInputs",
    "FeatureSet",
    "Normalization",
    "PROFILE_FEATURES",
    "SCALAR_FEATURES",
    "SCALED_FEATURES",
    "column_anomaly",
]
