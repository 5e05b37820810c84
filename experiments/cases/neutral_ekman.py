"""Neutral Ekman boundary layer over a rough surface (Andrén et al. 1994, QJRMS 120)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from experiments.cases.base import Definition, window_mean

if TYPE_CHECKING:
    import xarray as xr

WINDOW = (23.0, 24.0)


def build(p, levels, top, dt, hours, turbulence):
    """Ug, f, z0, constant θ, zero heat flux (Andrén et al. 1994, section 2)."""
    import scm.model
    from experiments.cases.building import constant_forcing, initial_state, turbulence_scheme
    from physics.large_scale import LargeScaleForcing
    from physics.surface import MoninObukhovSurface
    from scm.grid import ColumnGrid

    theta = p["potential_temperature"]
    grid = ColumnGrid.uniform(top, levels, 1.0e5, lambda z: np.full_like(z, theta))
    surface = MoninObukhovSurface(p["roughness_length"], heat_boundary="flux")
    closure = turbulence_scheme(turbulence, surface, dt, moist=False)
    model = scm.model.Model(grid, turbulence=closure,
                            large_scale=LargeScaleForcing())
    forcing = constant_forcing(grid, coriolis_parameter=p["coriolis_parameter"],
                               geostrophic_u=p["geostrophic_wind"], surface_temperature=theta)
    z = np.asarray(grid.z)
    state0 = initial_state(model, p["geostrophic_wind"], 0.0, theta,
                           tke=0.4 * np.clip(1 - z / 500, 0, 1))
    return model, state0, forcing, {"surface_pressure": 1.0e5}


def measure(dataset: xr.Dataset) -> dict[str, float]:
    """u* and the stress-based boundary-layer height over the last hour."""
    return {name: float(window_mean(dataset, name, WINDOW))
            for name in ("ustar", "boundary_layer_height")}


DEFINITION = Definition(
    name="neutral_ekman",
    description="Neutral Ekman boundary layer over a rough surface (Andren et al. 1994)",
    levels=64, top=1500.0, dt=30.0, hours=24.0, turbulence="tke",
    parameters={
        "geostrophic_wind": (10.0, 1.0, 25.0, "m s-1", "eastward geostrophic wind Ug"),
        "coriolis_parameter": (1.0e-4, 2.0e-5, 1.5e-4, "s-1", "Coriolis parameter f"),
        "roughness_length": (0.1, 1.0e-4, 1.0, "m", "roughness length z0"),
        "potential_temperature": (300.0, 250.0, 320.0, "K", "uniform potential temperature"),
    },
    build=build,
    references=("Andren, Brown, Graf, Mason, Moeng, Nieuwstadt & Schumann (1994), QJRMS 120, "
                "1457-1484",),
    window=WINDOW,
    measure=measure,
)
