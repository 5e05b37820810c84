"""Out-of-distribution detection with a smooth fallback to physics.

``InputDistance`` measures, for one column at one instant, how far a network's inputs lie
from its training distribution. It is fitted on the same feature samples as the
normalization (``InputDistance.fit``): a mean and a standard deviation for every feature
value (each profile feature at each level, each scalar), the profile scales floored at
``SCALE_FLOOR`` × the variable's pooled scale so that quiet levels aloft do not dominate.
With z the standardized inputs, every feature contributes a group distance, the RMS of z
over the levels of a profile feature or |z| of a scalar, and the column's distance is their
power mean

    d = ( (1/G) Σ_g d_g^p )^(1/p),   p = ``POWER``,

near the largest group distance (one feature far outside its range is enough) yet smooth.
The ``threshold`` is the ``quantile`` of d over the training samples, and the weight of the
physics is w = σ((d − threshold) / width), width = ``softness`` × threshold: w ≈ 0 inside
the training distribution, ½ at the threshold, → 1 beyond it. Everything is differentiable.

``OODFallback(learned, detector, physics)`` blends with that weight: with ``physics``,
w · physics + (1 − w) · learned (``nn.wrappers.Blend``: a network that replaces a scheme
hands back to it; diagnostics reported by both are blended too); without,
(1 − w) · learned (a correction that fades out: put it inside ``nn.wrappers.Residual``).
It works in training and at run time; ``nn.artifact`` stores the detector with the network.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from nn.features import FeatureSet
from nn.wrappers import Blend
from physics.surface import AbstractSurfaceLayer
from scm.errors import check_range
from scm.forcing import Forcing
from scm.grid import ColumnGrid
from scm.parameterization import AbstractParameterization, Tendency
from scm.state import State, as_float

#: Exponent of the power mean over feature groups.
POWER = 8.0
#: Smallest per-level standard deviation of a profile feature, as a fraction of its pooled one.
SCALE_FLOOR = 0.1


class InputDistance(eqx.Module):
    """Standardized distance of one column's features from the training data (module
    docstring); frozen (``nn.parameterization.trainable_filter``)."""

    features: FeatureSet
    surface: AbstractSurfaceLayer | None
    profile_mean: Float[Array, "p z"]
    profile_scale: Float[Array, "p z"]
    scalar_mean: Float[Array, " s"]
    scalar_scale: Float[Array, " s"]
    threshold: Float[Array, ""]
    width: Float[Array, ""]

    @classmethod
    def fit(cls, features: FeatureSet, surface: AbstractSurfaceLayer | None,
            profiles: Float[Array, "n p z"], scalars: Float[Array, "n s"],
            quantile: float = 0.999, softness: float = 0.1) -> InputDistance:
        """Fitted on feature samples (``FeatureSet`` outputs stacked on a leading axis), the
        threshold at the ``quantile`` of their distances. Eager."""
        check_range("ood quantile", quantile, 0.5, 1.0)
        check_range("ood softness", softness, 1.0e-3, 10.0)
        profiles, scalars = np.asarray(profiles, float), np.asarray(scalars, float)
        pooled = profiles.std(axis=(0, 2))[:, None]
        floor = np.maximum(SCALE_FLOOR * pooled, 1.0e-6)
        p_scale = np.maximum(profiles.std(axis=0), floor)
        s_scale = np.maximum(scalars.std(axis=0), 1.0e-6)
        arrays = [as_float(a) for a in (profiles.mean(axis=0), p_scale, scalars.mean(axis=0),
                                        s_scale)]
        unfitted = cls(features, surface, *arrays, as_float(np.inf), as_float(1.0))
        distances = np.asarray(jax.jit(jax.vmap(unfitted.distance_of))(
            jnp.asarray(profiles, arrays[0].dtype), jnp.asarray(scalars, arrays[0].dtype)))
        threshold = float(np.quantile(distances, quantile))
        return eqx.tree_at(lambda d: (d.threshold, d.width), unfitted,
                           (as_float(threshold), as_float(softness * threshold)))

    def distance_of(self, profiles: Float[Array, "p z"], scalars: Float[Array, " s"]):
        """d of raw (unnormalized) features."""
        mean, scale, s_mean, s_scale = jax.lax.stop_gradient(
            (self.profile_mean, self.profile_scale, self.scalar_mean, self.scalar_scale))
        groups = [jnp.sqrt(jnp.mean(((profiles - mean) / scale) ** 2, axis=-1))]
        if scalars.size:
            groups.append(jnp.abs((scalars - s_mean) / s_scale))
        d = jnp.concatenate(groups)
        # scaled by the largest group before the power, so d^p cannot overflow in float32
        top = jax.lax.stop_gradient(jnp.max(d)) + 1.0e-6
        return top * jnp.mean((d / top) ** POWER) ** (1.0 / POWER)

    def distance(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Float[Array, ""]:
        """d of one column."""
        fluxes = None if self.surface is None else self.surface.fluxes(state, forcing, grid)
        return self.distance_of(*self.features(state, forcing, grid, fluxes))

    def physics_weight(self, distance) -> Float[Array, ""]:
        """w = σ((d − threshold) / width) ∈ (0, 1)."""
        threshold, width = jax.lax.stop_gradient((self.threshold, self.width))
        return jax.nn.sigmoid((distance - threshold) / width)


class OODFallback(AbstractParameterization):
    """``learned`` handing over to ``physics`` (or fading out) where ``detector`` finds its
    inputs outside the training distribution (module docstring). Tracers are ``physics``'s
    where it is given (the scheme a network replaced owns them), else ``learned``'s."""

    learned: AbstractParameterization
    detector: InputDistance
    physics: AbstractParameterization | None = None

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        w = self.detector.physics_weight(self.detector.distance(state, forcing, grid))
        b = self.learned(state, forcing, grid)
        if self.physics is None:
            scaled = jax.tree.map(lambda x: (1.0 - w) * x, (b.tendency, b.flux, b.diffusivity))
            return Tendency(*scaled, dict(b.diagnostics))
        return Blend(self.physics, _Evaluated(b), 1.0 - w)(state, forcing, grid)

    def required_tracers(self) -> tuple[str, ...]:
        return (self.learned if self.physics is None else self.physics).required_tracers()

    def initial_tracers(self, grid: ColumnGrid) -> dict[str, Float[Array, " z"]]:
        return (self.learned if self.physics is None else self.physics).initial_tracers(grid)


class _Evaluated(AbstractParameterization):
    """A tendency already computed, as a scheme (so ``Blend`` mixes it in)."""

    tendency: Tendency

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        return self.tendency


__all__ = ["InputDistance", "OODFallback", "POWER", "SCALE_FLOOR"]
