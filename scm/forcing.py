"""Everything imposed on the column from outside, at one instant and as a time series."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from scm.errors import ConfigurationError
from scm.state import as_float


class Forcing(eqx.Module):
    """External forcing at one instant. Profiles are at layer centres, ``(z,)``.

    Units: ``coriolis_parameter`` s-1; geostrophic wind m s-1; ``subsidence`` (large-scale
    vertical velocity, negative downward) m s-1; prescribed tendencies K s-1 and kg kg-1 s-1;
    ``relaxation_rate`` s-1 (1/τ, zero where the column is free); surface values at z = 0:
    potential temperature K, kinematic heat flux K m s-1, moisture flux kg kg-1 m s-1,
    friction velocity m s-1 (used only by schemes that prescribe it); ``time`` (s since the
    case's start) is the instant itself, set by ``ForcingSeries.at`` (for schemes that depend
    on the time of day, such as networks given it as a feature).
    """

    coriolis_parameter: Float[Array, ""]
    geostrophic_u: Float[Array, " z"]
    geostrophic_v: Float[Array, " z"]
    subsidence: Float[Array, " z"]
    thl_tendency: Float[Array, " z"]
    qt_tendency: Float[Array, " z"]
    relaxation_rate: Float[Array, " z"]
    thl_reference: Float[Array, " z"]
    qt_reference: Float[Array, " z"]
    surface_temperature: Float[Array, ""]
    surface_heat_flux: Float[Array, ""]
    surface_moisture_flux: Float[Array, ""]
    surface_friction_velocity: Float[Array, ""]
    time: Float[Array, ""]

    @classmethod
    def create(cls, n_levels: int, **values) -> Forcing:
        """A forcing with every field zero except those given (scalars or profiles)."""
        known = sorted(cls.__dataclass_fields__)
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigurationError(f"unknown forcing field(s) {unknown}; known: {known}")
        fields = {}
        for name, spec in cls.__dataclass_fields__.items():
            profile = "z" in str(spec.type)
            value = as_float(values.get(name, 0.0))
            if profile:
                value = jnp.broadcast_to(value, (n_levels,))
            fields[name] = value
        return cls(**fields)


class ForcingSeries(eqx.Module):
    """Forcing at a sequence of times, linearly interpolated in between.

    ``forcing`` has a leading time axis on every field. Outside ``[times[0], times[-1]]`` the
    end values are held; with ``period`` set, time is taken modulo the period (a diurnal
    cycle needs one day of nodes, with the last equal to the first).
    """

    times: Float[Array, " time"]
    forcing: Forcing
    period: float | None = eqx.field(static=True, default=None)

    @classmethod
    def constant(cls, forcing: Forcing) -> ForcingSeries:
        stacked = jax.tree.map(lambda a: a[None], forcing)
        return cls(jnp.zeros((1,), forcing.coriolis_parameter.dtype), stacked)

    @classmethod
    def from_list(cls, times, forcings: list[Forcing], period: float | None = None):
        t = np.asarray(times, dtype=float)
        if t.ndim != 1 or len(t) != len(forcings) or np.any(np.diff(t) <= 0):
            raise ConfigurationError("forcing times must increase strictly, one per forcing")
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *forcings)
        return cls(jnp.asarray(t, stacked.coriolis_parameter.dtype), stacked, period)

    def at(self, t) -> Forcing:
        times = self.times
        now = jnp.asarray(t, times.dtype)
        if times.shape[0] == 1:
            forcing = jax.tree.map(lambda a: a[0], self.forcing)
        else:
            if self.period is not None:
                t = times[0] + jnp.mod(t - times[0], self.period)
            t = jnp.clip(t, times[0], times[-1])
            i = jnp.clip(jnp.searchsorted(times, t, side="right") - 1, 0, times.shape[0] - 2)
            w = (t - times[i]) / (times[i + 1] - times[i])
            forcing = jax.tree.map(lambda a: a[i] + w * (a[i + 1] - a[i]), self.forcing)
        return eqx.tree_at(lambda f: f.time, forcing, now)
