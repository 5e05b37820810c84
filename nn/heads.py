"""Heads: network outputs (O(1), ``(channels, length)``) → a physical ``Tendency``.

Physical scales are frozen arrays (``jax.lax.stop_gradient``; excluded from training): the
network's numbers stay O(1) and Adam never has to move a 1e-5 K/s parameter.

``surface`` is the ``SurfaceFluxes`` of the held surface layer, or ``None`` for a correction
that must not add the surface exchange a second time (``Residual``). With it, the scalar
surface fluxes go into ``flux[0]`` (θl, qt) and the momentum drag into the surface-interface
diffusivity ``drag · z1`` of u and v, exactly as the physical closures do.

- ``FluxHead``: interface fluxes of θl, u, v; zero at the top, the surface flux at index 0, so
  the column budget changes only by the surface flux, by construction.
- ``DiffusivityHead``: K_m, K_h = scale · softplus(output) ≥ 0 on the interior interfaces,
  integrated implicitly (unconditionally stable mixing; the property that kept online runs
  stable in this project's prototype, cf. Brenowitz & Bretherton 2018, GRL 45).
- ``TendencyHead``: plain tendencies of θl, u, v (for comparison; conserves nothing).
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from physics.surface import SurfaceFluxes
from scm.grid import ColumnGrid
from scm.parameterization import Tendency
from scm.state import State, as_float


def softplus(x):
    """log(1 + eˣ), as logaddexp(x, 0): no overflow for large |x|, and the derivative is
    the logistic function everywhere (a max(x, 0) + log1p(e^−|x|) form has a zero derivative
    at x = 0, where a zero-initialized last layer puts every output, so it never learns)."""
    return jnp.logaddexp(x, 0.0)


def softplus_inverse(y):
    """The x with softplus(x) = y > 0, as y + log(−expm1(−y)): finite for large y, where the
    naive log(eʸ − 1) overflows (float32 above y ≈ 88)."""
    return y + jnp.log(-jnp.expm1(-y))


def _with_surface(flux: State, diffusivity: State, grid: ColumnGrid,
                  surface: SurfaceFluxes | None) -> tuple[State, State]:
    """Write the surface exchange (scalar fluxes, implicit momentum drag) at index 0."""
    if surface is None:
        return flux, diffusivity
    dtype = diffusivity.u.dtype
    drag = (surface.drag * grid.z[0]).astype(dtype)
    flux = State(flux.u, flux.v, flux.thl.at[0].set(surface.heat_flux.astype(dtype)),
                 flux.qt.at[0].set(surface.moisture_flux.astype(dtype)), flux.tracers)
    diffusivity = State(diffusivity.u.at[0].set(drag), diffusivity.v.at[0].set(drag),
                        diffusivity.thl, diffusivity.qt, diffusivity.tracers)
    return flux, diffusivity


class AbstractHead(eqx.Module):
    """Maps ``outputs`` of shape ``(out_channels, n + 1 if on_interfaces else n)``."""

    out_channels: eqx.AbstractClassVar[int]
    on_interfaces: eqx.AbstractClassVar[bool]

    def out_length(self, n_levels: int) -> int:
        return n_levels + 1 if self.on_interfaces else n_levels

    @abc.abstractmethod
    def __call__(self, outputs: Float[Array, "c length"], state: State, grid: ColumnGrid,
                 surface: SurfaceFluxes | None) -> Tendency:
        raise NotImplementedError


class FluxHead(AbstractHead):
    """Interface fluxes F = scale · output of (θl, u, v) (K m s-1, m2 s-2), zero at the top
    interface; index 0 is the surface flux of the held surface layer (zero without one).
    The column integral of the resulting tendency is ρ_sfc F_sfc to round-off."""

    scale: Float[Array, " 3"]
    out_channels = 3
    on_interfaces = True

    def __init__(self, thl_scale=0.1, momentum_scale=0.1):
        self.scale = as_float([thl_scale, momentum_scale, momentum_scale])

    def __call__(self, outputs, state, grid, surface):
        scale = jax.lax.stop_gradient(self.scale)
        f = (outputs * scale[:, None]).at[:, 0].set(0.0).at[:, -1].set(0.0)
        zeros = Tendency.zeros(state)
        flux = State(f[1], f[2], f[0], zeros.flux.qt, zeros.flux.tracers)
        flux, diffusivity = _with_surface(flux, zeros.diffusivity, grid, surface)
        return Tendency(zeros.tendency, flux, diffusivity, {})


class DiffusivityHead(AbstractHead):
    """K_m (u, v) and K_h (θl, qt, tracers) = scale · softplus(output) ≥ 0 (m2 s-1) on the
    interior interfaces, zero at the top; the momentum surface interface carries the surface
    layer's drag · z1. A zero output gives K = scale · ln 2 (≈ 6.9 m2 s-1 at the default
    scale): meant to replace a closure, not to correct one (a K correction cannot be zero)."""

    scale: Float[Array, ""]
    out_channels = 2
    on_interfaces = True

    def __init__(self, scale=10.0):
        self.scale = as_float(scale)

    def __call__(self, outputs, state, grid, surface):
        scale = jax.lax.stop_gradient(self.scale)
        k = (scale * softplus(outputs)).at[:, 0].set(0.0).at[:, -1].set(0.0)
        k_m, k_h = k[0], k[1]
        zeros = Tendency.zeros(state)
        diffusivity = State(k_m, k_m, k_h, k_h, {n: k_h for n in state.tracers})
        flux, diffusivity = _with_surface(zeros.flux, diffusivity, grid, surface)
        return Tendency(zeros.tendency, flux, diffusivity, {})


class TendencyHead(AbstractHead):
    """Tendencies = scale · output of (θl, u, v) at centres (K s-1, m s-2), plus the surface
    exchange of the held surface layer (if any) as fluxes and drag."""

    scale: Float[Array, " 3"]
    out_channels = 3
    on_interfaces = False

    def __init__(self, thl_scale=1.0e-4, momentum_scale=1.0e-4):
        self.scale = as_float([thl_scale, momentum_scale, momentum_scale])

    def __call__(self, outputs, state, grid, surface):
        scale = jax.lax.stop_gradient(self.scale)
        t = outputs * scale[:, None]
        zeros = Tendency.zeros(state)
        tendency = State(t[1], t[2], t[0], zeros.tendency.qt, zeros.tendency.tracers)
        flux, diffusivity = _with_surface(zeros.flux, zeros.diffusivity, grid, surface)
        return Tendency(tendency, flux, diffusivity, {})
