"""Large-scale forcing imposed on the column: subsidence, prescribed tendencies and Newtonian
relaxation (nudging). The geostrophic pressure gradient and Coriolis turning of the wind are
the column's dynamics, integrated by the time step itself (``scm.integration``)."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from scm.forcing import Forcing
from scm.grid import ColumnGrid
from scm.parameterization import AbstractParameterization, Tendency
from scm.state import State


class LargeScaleForcing(AbstractParameterization):
    """All large-scale terms read from the ``Forcing``; a zero field contributes nothing.

    - Subsidence by the large-scale vertical velocity w (on θl, qt and tracers; on u, v when
      ``subside_momentum``): ∂x/∂t = −w ∂x/∂z, written in flux form with first-order upwind
      interface values, −(1/ρ)∂(ρ w x_up)/∂z + x (1/ρ)∂(ρ w)/∂z, so a uniform field is
      untouched and the scheme is monotone for |w| Δt / Δz ≤ 1.
    - Prescribed tendencies of θl and qt (radiative cooling, advection).
    - Newtonian relaxation toward reference profiles, ∂x/∂t = −r(z) (x − x_ref), r = 1/τ.
    """

    subside_momentum: bool = eqx.field(static=True, default=False)

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        w = grid.to_interfaces(forcing.subsidence).at[0].set(0.0)

        def subsidence(x):
            x_below = jnp.concatenate([x[:1], x])
            x_above = jnp.concatenate([x, x[-1:]])
            upwind = jnp.where(w < 0, x_above, x_below)
            return grid.tendency_from_flux(w * upwind) - x * grid.tendency_from_flux(w)

        def relaxation(x, reference):
            return -forcing.relaxation_rate * (x - reference)

        fields = state.fields()
        tendency = {n: subsidence(x) for n, x in fields.items()}
        if not self.subside_momentum:
            tendency["u"] = tendency["v"] = jnp.zeros_like(state.u)
        tendency["thl"] = (tendency["thl"] + forcing.thl_tendency
                           + relaxation(state.thl, forcing.thl_reference))
        tendency["qt"] = (tendency["qt"] + forcing.qt_tendency
                          + relaxation(state.qt, forcing.qt_reference))
        zeros = Tendency.zeros(state)
        return Tendency(State.from_fields(tendency), zeros.flux, zeros.diffusivity, {})
