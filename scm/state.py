"""Prognostic state of one column, and the metadata (units, CF names) of every field."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

#: CF metadata of every prognostic field, the single source for I/O and error messages.
FIELD_METADATA: dict[str, dict[str, str]] = {
    "u": {"units": "m s-1", "long_name": "eastward wind", "standard_name": "eastward_wind"},
    "v": {"units": "m s-1", "long_name": "northward wind", "standard_name": "northward_wind"},
    "thl": {
        "units": "K",
        "long_name": "liquid-water potential temperature (potential temperature when dry)",
    },
    "qt": {
        "units": "kg kg-1",
        "long_name": "total water specific humidity",
        "standard_name": "mass_fraction_of_water_in_air",
    },
    "tke": {
        "units": "m2 s-2",
        "long_name": "turbulence kinetic energy",
        "standard_name": "specific_turbulent_kinetic_energy_of_air",
    },
    "qr": {
        "units": "kg kg-1",
        "long_name": "rain water specific humidity",
        "standard_name": "mass_fraction_of_liquid_precipitation_in_air",
    },
}


class State(eqx.Module):
    """Prognostic fields of one column, each ``(z,)`` with index 0 at the surface.

    The same pytree holds tendencies (units per second), interface fluxes (``(n_interface,)``,
    kinematic, upward positive) and interface diffusivities (m2 s-1): one structure for
    everything that is defined per prognostic variable.
    """

    u: Float[Array, "*batch z"]
    v: Float[Array, "*batch z"]
    thl: Float[Array, "*batch z"]
    qt: Float[Array, "*batch z"]
    tracers: dict[str, Float[Array, "*batch z"]] = eqx.field(default_factory=dict)

    def fields(self) -> dict[str, Array]:
        """All fields by name, tracers included (``u, v, thl, qt, *tracers``)."""
        return {"u": self.u, "v": self.v, "thl": self.thl, "qt": self.qt, **self.tracers}

    @classmethod
    def from_fields(cls, fields: dict[str, Array]) -> State:
        base = ("u", "v", "thl", "qt")
        return cls(*(fields[k] for k in base), {k: a for k, a in fields.items() if k not in base})

    def zeros_like(self, n: int | None = None) -> State:
        """Zeros with this state's structure; with ``n`` the last axis has length ``n``."""
        if n is None:
            return jax.tree.map(jnp.zeros_like, self)
        return jax.tree.map(lambda a: jnp.zeros(a.shape[:-1] + (n,), a.dtype), self)

    def __add__(self, other: State) -> State:
        return jax.tree.map(jnp.add, self, other)

    def __mul__(self, scalar) -> State:
        return jax.tree.map(lambda a: a * scalar, self)

    __rmul__ = __mul__


def as_float(value) -> Array:
    """``value`` as an array of JAX's default float type (float32, or float64 with x64)."""
    return jnp.asarray(value, dtype=jnp.result_type(float))


def field_metadata(name: str) -> dict[str, str]:
    """CF metadata of a prognostic field (tracers without an entry get a plain description)."""
    return FIELD_METADATA.get(name, {"units": "1", "long_name": name})

#: Tracers that are physically non-negative; the time step clips them at zero.
NON_NEGATIVE_TRACERS = frozenset({"tke", "qr"})
