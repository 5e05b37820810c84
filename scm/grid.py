"""Vertical grid of one column with its hydrostatic reference state."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from scm.constants import (
    DRY_AIR_GAS_CONSTANT,
    DRY_AIR_HEAT_CAPACITY,
    GRAVITY,
    KAPPA,
    MIN_LEVELS,
    REFERENCE_PRESSURE,
)
from scm.errors import ConfigurationError, check_range
from scm.state import as_float


class ColumnGrid(eqx.Module):
    """Height levels (index 0 at the surface) and a reference state fixed in time.

    The reference state is hydrostatic for the initial potential temperature profile θ0(z):
    the Exner function π = (p/p0)^(R/cp) obeys dπ/dz = −g/(cp θ0), and ρ = p/(R π θ0)
    (anelastic approximation, e.g. Ogura & Phillips 1962). Layer mass is ``rho * dz``.
    """

    z_interface: Float[Array, " n_interface"]
    rho: Float[Array, " z"]
    rho_interface: Float[Array, " n_interface"]
    pressure: Float[Array, " z"]
    pressure_interface: Float[Array, " n_interface"]
    exner: Float[Array, " z"]
    exner_interface: Float[Array, " n_interface"]

    @classmethod
    def from_interfaces(cls, z_interface, surface_pressure: float, theta_profile) -> ColumnGrid:
        """Build from interface heights (m, first = 0, increasing) and a θ0 profile.

        ``theta_profile`` is a function of height (m) returning potential temperature (K).
        Runs eagerly in NumPy: grids are built before anything is compiled.
        """
        zi = np.asarray(z_interface, dtype=float)
        validate_interfaces(zi)
        check_range("surface_pressure", surface_pressure, 5.0e4, 1.1e5, "Pa")
        z = 0.5 * (zi[1:] + zi[:-1])
        theta_c = np.asarray(theta_profile(z), dtype=float)
        check_range("reference potential temperature", theta_c, 150.0, 500.0, "K")
        pi_sfc = (surface_pressure / REFERENCE_PRESSURE) ** KAPPA
        dpi = GRAVITY * np.diff(zi) / (DRY_AIR_HEAT_CAPACITY * theta_c)
        exner_i = pi_sfc - np.concatenate([[0.0], np.cumsum(dpi)])
        exner_c = exner_i[:-1] - 0.5 * dpi
        if exner_i[-1] <= 0:
            raise ConfigurationError("grid top is above the top of the reference atmosphere")
        theta_i = np.concatenate([theta_c[:1], 0.5 * (theta_c[1:] + theta_c[:-1]), theta_c[-1:]])

        def pressure(exner):
            return REFERENCE_PRESSURE * exner ** (1.0 / KAPPA)

        def density(exner, theta):
            return pressure(exner) / (DRY_AIR_GAS_CONSTANT * exner * theta)

        to = as_float
        return cls(
            z_interface=to(zi),
            rho=to(density(exner_c, theta_c)),
            rho_interface=to(density(exner_i, theta_i)),
            pressure=to(pressure(exner_c)),
            pressure_interface=to(pressure(exner_i)),
            exner=to(exner_c),
            exner_interface=to(exner_i),
        )

    @classmethod
    def uniform(cls, top: float, n_levels: int, surface_pressure: float, theta_profile):
        check_range("top", top, 10.0, 1.0e5, "m")
        check_range("levels", n_levels, MIN_LEVELS, 100_000)
        return cls.from_interfaces(np.linspace(0.0, top, int(n_levels) + 1), surface_pressure,
                                   theta_profile)

    @classmethod
    def stretched(cls, top: float, n_levels: int, surface_pressure: float, theta_profile,
                  stretching: float = 1.02):
        """Layer thickness grows geometrically with height by ``stretching`` per level."""
        check_range("levels", n_levels, MIN_LEVELS, 100_000)
        check_range("stretching", stretching, 1.0, 1.2)
        widths = stretching ** np.arange(int(n_levels))
        zi = np.concatenate([[0.0], np.cumsum(widths)]) * top / widths.sum()
        return cls.from_interfaces(zi, surface_pressure, theta_profile)

    @property
    def n_levels(self) -> int:
        return self.z_interface.shape[-1] - 1

    @property
    def z(self) -> Float[Array, " z"]:
        """Layer-centre heights (m)."""
        return 0.5 * (self.z_interface[..., 1:] + self.z_interface[..., :-1])

    @property
    def dz(self) -> Float[Array, " z"]:
        """Layer thicknesses (m)."""
        return jnp.diff(self.z_interface, axis=-1)

    @property
    def dz_interface(self) -> Float[Array, " n_interface"]:
        """Distance between the centres on either side of each interface (m).

        At the surface it is the height of the first centre (the ground is the value below);
        at the top it repeats the last interior spacing (nothing crosses the top).
        """
        z = self.z
        inner = jnp.diff(z, axis=-1)
        return jnp.concatenate([z[..., :1], inner, inner[..., -1:]], axis=-1)

    @property
    def layer_mass(self) -> Float[Array, " z"]:
        """ρ Δz, kg m-2."""
        return self.rho * self.dz

    def tendency_from_flux(self, flux: Float[Array, "*b n_interface"]) -> Float[Array, "*b z"]:
        """Tendency −(1/ρ) ∂(ρF)/∂z at centres of an upward kinematic flux F on interfaces."""
        mass_flux = self.rho_interface * flux
        return -(mass_flux[..., 1:] - mass_flux[..., :-1]) / self.layer_mass

    def column_integral(self, x: Float[Array, "*b z"]) -> Float[Array, "*b"]:
        """∫ ρ x dz over the column (units of x times kg m-2)."""
        return jnp.sum(self.layer_mass * x, axis=-1)

    def gradient_at_interfaces(self, x: Float[Array, "*b z"]) -> Float[Array, "*b n_interface"]:
        """∂x/∂z at interfaces; zero at the surface and the top (no information beyond)."""
        inner = jnp.diff(x, axis=-1) / jnp.diff(self.z, axis=-1)
        zero = jnp.zeros_like(x[..., :1])
        return jnp.concatenate([zero, inner, zero], axis=-1)

    def to_interfaces(self, x: Float[Array, "*b z"]) -> Float[Array, "*b n_interface"]:
        """Linear interpolation to interfaces; the end values are copied from the end centres."""
        z, zi = self.z, self.z_interface
        w = (zi[1:-1] - z[:-1]) / jnp.diff(z)
        inner = x[..., :-1] + w * jnp.diff(x, axis=-1)
        return jnp.concatenate([x[..., :1], inner, x[..., -1:]], axis=-1)


def validate_interfaces(z_interface: np.ndarray) -> None:
    """Interfaces must start at 0, increase strictly, and resolve the column."""
    if z_interface.ndim != 1 or z_interface.size < MIN_LEVELS + 1:
        raise ConfigurationError(
            f"grid needs at least {MIN_LEVELS} levels (got {max(z_interface.size - 1, 0)})"
        )
    check_range("z_interface", z_interface, 0.0, 1.0e5, "m")
    if z_interface[0] != 0.0:
        raise ConfigurationError(f"z_interface[0] must be 0 m (got {z_interface[0]:g} m)")
    widths = np.diff(z_interface)
    if np.any(widths <= 0):
        k = int(np.argmax(widths <= 0))
        raise ConfigurationError(
            f"z_interface must increase strictly (interface {k + 1} at {z_interface[k + 1]:g} m "
            f"is not above interface {k} at {z_interface[k]:g} m)"
        )
    if widths.max() > 0.25 * z_interface[-1]:
        raise ConfigurationError(
            f"z_interface too coarse: a layer is {widths.max():g} m thick, the allowed maximum "
            f"is a quarter of the domain ({0.25 * z_interface[-1]:g} m)"
        )
