"""GABLS1: a moderately stable boundary layer over cooling ice at 73° N (Beare et al. 2006,
BLM 118; Cuxart et al. 2006, BLM 118)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from experiments.cases.base import HOUR, Definition, PublishedRange, piecewise, window_mean

if TYPE_CHECKING:
    import xarray as xr

WINDOW = (8.0, 9.0)


def build(p, levels, top, dt, hours, turbulence):
    """GABLS1 (Beare et al. 2006, section 2; Cuxart et al. 2006, section 2): θ = 265 K to
    100 m then +0.01 K/m, u = Ug, surface cooling at a prescribed rate, MO exchange with
    φm = 1 + 4.8 ζ, φh = 1 + 7.8 ζ, initial TKE 0.4 (1 − z/250 m)³."""
    import scm.model
    from experiments.cases.building import initial_state, turbulence_scheme
    from physics.large_scale import LargeScaleForcing
    from physics.surface import MoninObukhovSurface
    from scm.forcing import Forcing, ForcingSeries
    from scm.grid import ColumnGrid

    theta = piecewise([0.0, 100.0, 400.0], [265.0, 265.0, 268.0])
    grid = ColumnGrid.uniform(top, levels, 1.0e5, theta)
    surface = MoninObukhovSurface(p["roughness_length"], p["roughness_length"], beta_m=4.8,
                                  beta_h=7.8, heat_boundary="temperature")
    closure = turbulence_scheme(turbulence, surface, dt, moist=False)
    model = scm.model.Model(grid, turbulence=closure,
                            large_scale=LargeScaleForcing())
    horizon = hours * HOUR

    def at(t):
        return Forcing.create(grid.n_levels, coriolis_parameter=p["coriolis_parameter"],
                              geostrophic_u=p["geostrophic_wind"],
                              surface_temperature=265.0 - p["surface_cooling_rate"] * t / HOUR)

    forcing = ForcingSeries.from_list([0.0, horizon], [at(0.0), at(horizon)])
    z = np.asarray(grid.z)
    tke0 = 0.4 * np.clip(1.0 - z / 250.0, 0.0, 1.0) ** 3
    state0 = initial_state(model, p["geostrophic_wind"], 0.0, theta(z), tke=tke0)
    return model, state0, forcing, {"surface_pressure": 1.0e5}


def measure(dataset: xr.Dataset) -> dict[str, float]:
    """Hour 8–9 means of u*, the surface heat flux, the stress-based boundary-layer height and
    the low-level jet (the largest hour-mean wind speed)."""
    speed = np.hypot(dataset["u"], dataset["v"]).to_dataset(name="speed")
    return {
        "ustar": float(window_mean(dataset, "ustar", WINDOW)),
        "surface_heat_flux": float(window_mean(dataset, "surface_heat_flux", WINDOW)),
        "boundary_layer_height": float(window_mean(dataset, "boundary_layer_height", WINDOW)),
        "low_level_jet": float(window_mean(speed, "speed", WINDOW).max()),
    }


DEFINITION = Definition(
    name="gabls1",
    description="GABLS1 moderately stable boundary layer over cooling ice, 73 N "
                "(Beare et al. 2006)",
    levels=64, top=400.0, dt=30.0, hours=9.0, turbulence="tke",
    parameters={
        "surface_cooling_rate": (0.25, 0.0, 1.0, "K h-1", "cooling rate of the surface"),
        "geostrophic_wind": (8.0, 2.0, 15.0, "m s-1", "eastward geostrophic wind Ug"),
        "coriolis_parameter": (1.39e-4, 5.0e-5, 1.5e-4, "s-1", "Coriolis parameter f"),
        "roughness_length": (0.1, 1.0e-3, 0.5, "m", "roughness length (momentum and heat)"),
    },
    build=build,
    references=("Beare et al. (2006), Boundary-Layer Meteorology 118, 247-272",
                "Cuxart et al. (2006), Boundary-Layer Meteorology 118, 273-303"),
    window=WINDOW,
    ranges=(
        PublishedRange("ustar", 0.25, 0.30, "m s-1", "friction velocity, hour 8-9 (LES)",
                       series="ustar"),
        PublishedRange("surface_heat_flux", -0.013, -0.010, "K m s-1",
                       "surface kinematic heat flux, hour 8-9 (LES)", series="surface_heat_flux"),
        PublishedRange("boundary_layer_height", 150.0, 200.0, "m",
                       "height where the stress falls to 5 % of its surface value, / 0.95, "
                       "hour 8-9 (LES)", series="boundary_layer_height"),
        PublishedRange("low_level_jet", 9.0, 10.0, "m s-1",
                       "largest wind speed of the hour 8-9 mean profile (LES)"),
    ),
    measure=measure,
)
