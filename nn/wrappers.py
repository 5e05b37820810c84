"""Generic combinations of two parameterizations (any ``AbstractParameterization``).

- ``Residual(physics, correction)``: physics plus a learned correction (hybrid modelling). A
  zero-initialized correction leaves the physics bit for bit unchanged.
- ``Blend(physics, network, weight)``: a convex combination, e.g. to ramp a network in
  during online training or to hedge an unstable network with its physics baseline.

Both wrap (never subclass), as ``AbstractParameterization`` asks.
"""

from __future__ import annotations

from typing import ClassVar

import jax
from jaxtyping import Array, Float

from scm.errors import check_range
from scm.forcing import Forcing
from scm.grid import ColumnGrid
from scm.parameterization import AbstractParameterization, Tendency
from scm.state import State, as_float


class Residual(AbstractParameterization):
    """Tendency, flux and diffusivity of ``physics`` plus those of ``correction``.

    Diagnostics are the physics's only: ``Tendency.__add__`` refuses two schemes that report
    the same diagnostic, and a correction that holds the physics's surface layer would report
    ``ustar`` etc. again; the correction's own diagnostics are dropped. Use a correction that
    does not add the surface exchange a second time (for ``NeuralParameterization``:
    ``surface_exchange=False``). Tracers are the physics's.
    """

    physics: AbstractParameterization
    correction: AbstractParameterization

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        base = self.physics(state, forcing, grid)
        extra = self.correction(state, forcing, grid)
        return Tendency(base.tendency + extra.tendency, base.flux + extra.flux,
                        base.diffusivity + extra.diffusivity, dict(base.diagnostics))

    def required_tracers(self) -> tuple[str, ...]:
        return self.physics.required_tracers()

    def initial_tracers(self, grid: ColumnGrid) -> dict[str, Float[Array, " z"]]:
        return self.physics.initial_tracers(grid)


class Blend(AbstractParameterization):
    """weight · network + (1 − weight) · physics, for tendency, flux and diffusivity.

    ``weight`` is a scalar array in [0, 1] (checked when concrete; not clipped, so its
    gradient is kept). A convex combination of non-negative diffusivities stays non-negative.
    Diagnostics reported by both are blended the same way; those reported by one pass through.
    """

    physics: AbstractParameterization
    network: AbstractParameterization
    weight: Float[Array, ""]
    #: The weight is set, not learned (``nn.parameterization.trainable_filter``).
    frozen_fields: ClassVar[tuple[str, ...]] = ("weight",)

    def __init__(self, physics: AbstractParameterization, network: AbstractParameterization,
                 weight=0.5):
        if not isinstance(weight, jax.core.Tracer):
            check_range("weight", weight, 0.0, 1.0)
        self.physics, self.network = physics, network
        self.weight = as_float(weight)

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        a = self.physics(state, forcing, grid)
        b = self.network(state, forcing, grid)
        w = self.weight

        def mix(x, y):
            return jax.tree.map(lambda p, n: w * n + (1.0 - w) * p, x, y)

        diagnostics = {**a.diagnostics, **b.diagnostics}
        for name in set(a.diagnostics) & set(b.diagnostics):
            diagnostics[name] = mix(a.diagnostics[name], b.diagnostics[name])
        return Tendency(mix(a.tendency, b.tendency), mix(a.flux, b.flux),
                        mix(a.diffusivity, b.diffusivity), diagnostics)

    def required_tracers(self) -> tuple[str, ...]:
        names = self.physics.required_tracers() + self.network.required_tracers()
        return tuple(dict.fromkeys(names))

    def initial_tracers(self, grid: ColumnGrid) -> dict[str, Float[Array, " z"]]:
        return {**self.network.initial_tracers(grid), **self.physics.initial_tracers(grid)}
