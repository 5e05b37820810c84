"""Column features for neural parameterizations, and their frozen normalization.

A network sees one column as a few O(1) profiles plus a few O(1) surface scalars:

- profiles (``PROFILE_NAMES``): the anomalies u − ⟨u⟩, v − ⟨v⟩ (m s-1) and θl − ⟨θl⟩ (K),
  where ⟨·⟩ is the mass-weighted column mean. Mixing depends on shear and stratification,
  not on the column's mean wind or temperature level, so the features are invariant under a
  uniform shift of either (Galilean invariance): a network trained at moderate winds does not
  see unseen absolute values at stronger ones. The surface exchange, which does depend on the
  absolute wind, stays with the physical surface layer;
- scalars (``SCALAR_NAMES``): the surface excess θs − θl₁ (K, surface temperature from the
  forcing minus the lowest level) and the friction velocity u* (m s-1) of the surface layer.

Each variable is normalized as (x − mean) / scale with ONE pooled mean and scale per variable
(over columns, times and levels): a per-level standard deviation is near zero aloft and blows
inputs up online (Rasp, Pritchard & Gentine 2018, PNAS 115, used one scale per level; pooling
is the safer choice for online coupling, cf. Brenowitz & Bretherton 2018, GRL 45).
The normalization is frozen: stored as arrays, passed through ``jax.lax.stop_gradient`` when
used, and excluded from training (see ``nn.parameterization.trainable_filter``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from scm.forcing import Forcing
from scm.grid import ColumnGrid
from scm.state import State, as_float

PROFILE_NAMES: tuple[str, ...] = ("u_anomaly", "v_anomaly", "thl_anomaly")
SCALAR_NAMES: tuple[str, ...] = ("surface_temperature_excess", "ustar")

#: Smallest pooled scale (units of each variable): a constant field does not divide by zero.
MIN_SCALE = 1.0e-3
#: Scalar normalization used when ``fit`` is given no scalar samples: (mean, scale) of
#: θs − θl₁ (K) and u* (m s-1), typical of a land boundary layer.
DEFAULT_SCALARS = ((0.0, 2.0), (0.3, 0.2))


def column_anomaly(x: Float[Array, "*b z"], grid: ColumnGrid) -> Float[Array, "*b z"]:
    """``x`` minus its mass-weighted column mean."""
    mean = grid.column_integral(x) / jnp.sum(grid.layer_mass)
    return x - mean[..., None]


def raw_profiles(state: State, grid: ColumnGrid) -> Float[Array, "*b 3 z"]:
    """Unnormalized profile features ``PROFILE_NAMES``, stacked on axis −2."""
    return jnp.stack([column_anomaly(x, grid) for x in (state.u, state.v, state.thl)], axis=-2)


def raw_scalars(state: State, forcing: Forcing, ustar) -> Float[Array, " 2"]:
    """Unnormalized surface features ``SCALAR_NAMES`` of one column."""
    excess = forcing.surface_temperature - state.thl[0]
    return jnp.stack([excess, jnp.asarray(ustar, excess.dtype)])


class Normalization(eqx.Module):
    """Frozen pooled (x − mean)/scale for the profile and scalar features."""

    profile_mean: Float[Array, " n_profiles"]
    profile_scale: Float[Array, " n_profiles"]
    scalar_mean: Float[Array, " n_scalars"]
    scalar_scale: Float[Array, " n_scalars"]

    @classmethod
    def fit(cls, states: State, grid: ColumnGrid, scalars=None) -> Normalization:
        """Pooled mean and standard deviation (floored at ``MIN_SCALE``) per variable.

        ``states``: a ``State`` with any leading axes (columns, times), e.g. a trajectory's
        ``state``; ``scalars``: optional samples ``(..., 2)`` of ``raw_scalars``; without them
        the documented ``DEFAULT_SCALARS`` are used. Runs eagerly; the result is frozen.
        """
        dtype = states.thl.dtype
        profiles = np.asarray(raw_profiles(states, grid))
        axes = tuple(i for i in range(profiles.ndim) if i != profiles.ndim - 2)
        p_mean = profiles.mean(axis=axes)
        p_scale = np.maximum(profiles.std(axis=axes), MIN_SCALE)
        if scalars is None:
            s_mean, s_scale = (np.array(v) for v in zip(*DEFAULT_SCALARS, strict=True))
        else:
            samples = np.asarray(scalars).reshape(-1, len(SCALAR_NAMES))
            s_mean, s_scale = samples.mean(axis=0), np.maximum(samples.std(axis=0), MIN_SCALE)
        to = lambda a: jnp.asarray(a, dtype)  # noqa: E731
        return cls(to(p_mean), to(p_scale), to(s_mean), to(s_scale))

    @classmethod
    def identity(cls, dtype=None) -> Normalization:
        """Mean 0, scale 1 (for tests and for features already O(1))."""
        dtype = as_float(0.0).dtype if dtype is None else dtype
        p, s = len(PROFILE_NAMES), len(SCALAR_NAMES)
        return cls(jnp.zeros(p, dtype), jnp.ones(p, dtype), jnp.zeros(s, dtype),
                   jnp.ones(s, dtype))

    def __call__(self, profiles: Float[Array, "c z"], scalars: Float[Array, " s"]):
        p_mean, p_scale, s_mean, s_scale = jax.lax.stop_gradient(
            (self.profile_mean, self.profile_scale, self.scalar_mean, self.scalar_scale))
        return ((profiles - p_mean[:, None]) / p_scale[:, None],
                (scalars - s_mean) / s_scale)


def column_features(normalization: Normalization, state: State, forcing: Forcing,
                    grid: ColumnGrid, ustar) -> tuple[Float[Array, "3 z"], Float[Array, " 2"]]:
    """Normalized ``(profiles (3, z), scalars (2,))`` of one column."""
    return normalization(raw_profiles(state, grid), raw_scalars(state, forcing, ustar))
