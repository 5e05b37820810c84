"""Dry convective boundary layer growing into an inversion (Sullivan & Patton 2011, JAS 68)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from experiments.cases.base import Definition, PublishedRange, piecewise, window_mean

if TYPE_CHECKING:
    import xarray as xr

WINDOW = (3.0, 4.0)


def build(p, levels, top, dt, hours, turbulence):
    """Dry CBL (Sullivan & Patton 2011, section 2): θ = 300 K to 974 m, an inversion of the
    given jump over 100 m, then the given lapse rate; fixed surface heat flux, MO momentum."""
    import scm.model
    from experiments.cases.building import constant_forcing, initial_state, turbulence_scheme
    from physics.large_scale import LargeScaleForcing
    from physics.surface import MoninObukhovSurface
    from scm.grid import ColumnGrid

    jump, gamma = p["inversion_jump"], p["lapse_rate"] * 1.0e-3
    theta = piecewise([0.0, 974.0, 1074.0, 1074.0 + 1000.0],
                      [300.0, 300.0, 300.0 + jump, 300.0 + jump + 1000.0 * gamma])
    grid = ColumnGrid.uniform(top, levels, 1.0e5, theta)
    surface = MoninObukhovSurface(p["roughness_length"], heat_boundary="flux")
    closure = turbulence_scheme(turbulence, surface, dt, moist=False)
    model = scm.model.Model(grid, turbulence=closure,
                            large_scale=LargeScaleForcing())
    forcing = constant_forcing(grid, coriolis_parameter=1.0e-4,
                               geostrophic_u=p["geostrophic_wind"],
                               surface_heat_flux=p["surface_heat_flux"],
                               surface_temperature=300.0)
    z = np.asarray(grid.z)
    state0 = initial_state(model, p["geostrophic_wind"], 0.0, theta(z), tke=0.1 * (z < 974.0))
    return model, state0, forcing, {"surface_pressure": 1.0e5, "coriolis_parameter": 1.0e-4}


def measure(dataset: xr.Dataset) -> dict[str, float]:
    """Hour 3–4 means: the entrainment ratio (smallest heat flux over the surface flux), the
    inversion (the interface of that smallest flux) and w*."""
    flux = window_mean(dataset, "heat_flux", WINDOW).values
    k = int(np.argmin(flux))
    return {
        "entrainment_ratio": float(flux[k] / flux[0]),
        "inversion_height": float(dataset["z_interface"].values[k]),
        "convective_velocity": float(window_mean(dataset, "convective_velocity", WINDOW)),
    }


DEFINITION = Definition(
    name="dry_cbl",
    description="Dry convective boundary layer growing into an 8 K inversion "
                "(Sullivan & Patton 2011)",
    levels=64, top=2000.0, dt=30.0, hours=4.0, turbulence="tke",
    parameters={
        "surface_heat_flux": (0.24, 0.01, 0.5, "K m s-1", "kinematic surface heat flux"),
        "geostrophic_wind": (1.0, 0.0, 15.0, "m s-1", "eastward geostrophic wind Ug"),
        "inversion_jump": (8.0, 1.0, 15.0, "K", "potential-temperature jump across the "
                           "100 m inversion above 974 m"),
        "lapse_rate": (3.0, 1.0, 10.0, "K km-1", "free-troposphere dθ/dz above the "
                       "inversion"),
        "roughness_length": (0.1, 1.0e-3, 1.0, "m", "roughness length"),
    },
    build=build,
    references=("Sullivan & Patton (2011), Journal of the Atmospheric Sciences 68, "
                "2395-2415",),
    window=WINDOW,
    ranges=(
        PublishedRange("entrainment_ratio", -0.25, -0.15, "1",
                       "smallest heat flux over the surface flux, hour 3-4 (LES: -0.2)"),
        PublishedRange("inversion_height", 1050.0, 1250.0, "m",
                       "height of the smallest heat flux, hour 3-4 (LES: 1.1-1.2 km at 4 h)"),
        PublishedRange("convective_velocity", 1.7, 2.4, "m s-1",
                       "convective velocity scale w*, hour 3-4 (LES: about 2 m/s)",
                       series="convective_velocity"),
    ),
    measure=measure,
)
