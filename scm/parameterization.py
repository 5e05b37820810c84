"""The one interface shared by physics schemes and neural networks."""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from scm.forcing import Forcing
from scm.grid import ColumnGrid
from scm.state import State

#: Fields that the surface interface's diffusivity couples to the ground, where they are zero
#: (the ground does not move); scalars enter only through ``Tendency.flux[0]``.
GROUND_COUPLED_FIELDS = frozenset({"u", "v"})


class Tendency(eqx.Module):
    """What a parameterization returns for one column.

    - ``tendency``: explicit tendencies at centres (units of the state per second);
    - ``flux``: explicit upward kinematic fluxes on interfaces (state units × m s-1); the
      model turns them into tendencies with ``grid.tendency_from_flux``, so anything written
      as a flux conserves the column budget by construction. ``flux[0]`` is the surface flux;
    - ``diffusivity``: eddy diffusivities on interfaces (m2 s-1, ≥ 0), integrated implicitly.
      At the surface interface only momentum may be non-zero: it couples the lowest level to
      the ground, where the wind is zero (implicit surface drag ``u*² / |U|`` × z1). u and v
      share one eddy viscosity, ``diffusivity.u``: the solver diffuses the wind u + i v as
      one complex field (which keeps its Coriolis turning exact), so ``diffusivity.v`` must
      equal ``diffusivity.u``;
    - ``diagnostics``: scalars or profiles for output (e.g. ``ustar``), never fed back.
    """

    tendency: State
    flux: State
    diffusivity: State
    diagnostics: dict[str, Array] = eqx.field(default_factory=dict)

    @classmethod
    def zeros(cls, state: State) -> Tendency:
        n_interface = state.u.shape[-1] + 1
        return cls(state.zeros_like(), state.zeros_like(n_interface),
                   state.zeros_like(n_interface), {})

    def __add__(self, other: Tendency) -> Tendency:
        clash = set(self.diagnostics) & set(other.diagnostics)
        if clash:
            raise ValueError(f"two parameterizations both report diagnostics {sorted(clash)}")
        return Tendency(
            self.tendency + other.tendency,
            self.flux + other.flux,
            self.diffusivity + other.diffusivity,
            {**self.diagnostics, **other.diagnostics},
        )

    def explicit_rate(self, grid: ColumnGrid) -> State:
        """Explicit tendency plus the convergence of the explicit fluxes."""
        return self.tendency + jax.tree.map(grid.tendency_from_flux, self.flux)

    def diffusive_flux(self, state: State, grid: ColumnGrid) -> State:
        """Upward flux −K ∂x/∂z of each field on interfaces (the ground wind is zero)."""

        def flux(name, x, k):
            gradient = grid.gradient_at_interfaces(x)
            if name in GROUND_COUPLED_FIELDS:
                gradient = gradient.at[..., 0].set(x[..., 0] / grid.z[0])
            return -k * gradient

        fields, ks = state.fields(), self.diffusivity.fields()
        return State.from_fields({n: flux(n, fields[n], ks[n]) for n in fields})

    def total_flux(self, state: State, grid: ColumnGrid) -> State:
        """Explicit plus diffusive flux on interfaces (for output and budgets)."""
        return self.flux + self.diffusive_flux(state, grid)


class AbstractParameterization(eqx.Module):
    """A process written for one column: ``(state, forcing, grid) -> Tendency``.

    Physics schemes and neural networks both implement this. Concrete classes are final;
    change behaviour by wrapping one parameterization in another, never by subclassing.
    Parameters are array fields, so they can be calibrated and differentiated.
    """

    @abc.abstractmethod
    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        raise NotImplementedError

    def required_tracers(self) -> tuple[str, ...]:
        """Names of the prognostic tracers this scheme owns (e.g. ``("tke",)``)."""
        return ()

    def initial_tracers(self, grid: ColumnGrid) -> dict[str, Float[Array, " z"]]:
        """Default initial values of the tracers this scheme owns."""
        return {name: jnp.zeros_like(grid.z) for name in self.required_tracers()}
