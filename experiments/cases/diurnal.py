"""A periodic dry diurnal cycle over land: the boundary layer heated by day and cooled by
night under a prescribed surface temperature, the free troposphere relaxed aloft (the case of
the turbulence-learning experiment)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from experiments.cases.base import DAY, HOUR, Definition, PublishedRange
from scm.constants import coriolis_parameter

if TYPE_CHECKING:
    import xarray as xr

def diurnal_profiles(grid_z, p):
    """Reference θ, relaxation rate (s-1) and prescribed cooling (K/s) of the diurnal case.

    The relaxation rate ramps linearly from zero at 2 km to 1/τ at 2.8 km and above; the
    uniform cooling acts below 2 km and ramps to zero across the same zone (a column relaxed
    only aloft keeps warming from the surface; the cooling closes the daily heat budget).
    """
    z = np.asarray(grid_z, float)
    theta_ref = p["surface_temperature"] + p["lapse_rate"] * 1.0e-3 * z
    ramp = np.clip((z - 2000.0) / 800.0, 0.0, 1.0)
    rate = ramp / (p["relaxation_time"] * HOUR)
    cooling = -(1.0 - ramp) * p["cooling_rate"] / DAY
    return theta_ref, rate, cooling


def build(p, levels, top, dt, hours, turbulence):
    """Dry diurnal cycle, periodic in time (one day of forcing nodes, ``period`` = 1 day).

    Surface potential temperature θs(t) = θ̄s + A sin(2π (t/day − 3/8)) (minimum 03 h,
    maximum 15 h local time; t = 0 is midnight), Monin–Obukhov exchange with the first level.
    Geostrophic wind (Ug, 0); f = 2Ω sin(latitude).
    """
    import scm.model
    from experiments.cases.building import initial_state, turbulence_scheme
    from physics.large_scale import LargeScaleForcing
    from physics.surface import MoninObukhovSurface
    from scm.forcing import Forcing, ForcingSeries
    from scm.grid import ColumnGrid

    grid = ColumnGrid.uniform(top, levels, 1.0e5,
                              lambda z: p["surface_temperature"] + p["lapse_rate"] * 1.0e-3 * z)
    z = np.asarray(grid.z)
    theta_ref, rate, cooling = diurnal_profiles(z, p)
    surface = MoninObukhovSurface(p["roughness_length"], p["roughness_length"],
                                  heat_boundary="temperature")
    closure = turbulence_scheme(turbulence, surface, dt, moist=False)
    model = scm.model.Model(grid, turbulence=closure,
                            large_scale=LargeScaleForcing())
    f = coriolis_parameter(p["latitude"])
    times = np.linspace(0.0, DAY, 49)

    def at(t):
        theta_s = p["surface_temperature"] + p["diurnal_amplitude"] * math.sin(
            2.0 * math.pi * (t / DAY - 0.375))
        return Forcing.create(grid.n_levels, coriolis_parameter=f,
                              geostrophic_u=p["geostrophic_wind"], thl_tendency=cooling,
                              relaxation_rate=rate, thl_reference=theta_ref,
                              surface_temperature=theta_s)

    forcing = ForcingSeries.from_list(times, [at(t) for t in times], period=DAY)
    state0 = initial_state(model, p["geostrophic_wind"], 0.0, theta_ref)
    return model, state0, forcing, {"surface_pressure": 1.0e5, "coriolis_parameter": f}


def measure(dataset: xr.Dataset) -> dict[str, float]:
    """Largest difference between the mean θ profiles of the last day and of day 10."""
    theta = dataset["theta"].isel(column=0).values
    day = np.floor((dataset["time"].values - 1e-6) / DAY)
    last = day.max()
    return {"periodicity": float(np.abs(theta[day == last].mean(0)
                                        - theta[day == 9].mean(0)).max())}


DEFINITION = Definition(
    name="diurnal",
    description="Periodic dry diurnal cycle: boundary layer over land heated by day and cooled "
                "by night (prescribed surface temperature), free troposphere relaxed aloft",
    levels=32, top=3200.0, dt=60.0, hours=720.0, turbulence="tke",
    parameters={
        "latitude": (45.0, 10.0, 80.0, "degrees_north", "latitude (sets f)"),
        "geostrophic_wind": (10.0, 2.0, 20.0, "m s-1", "eastward geostrophic wind Ug"),
        "surface_temperature": (290.0, 270.0, 310.0, "K", "daily-mean surface potential "
                                "temperature"),
        "diurnal_amplitude": (10.0, 0.0, 15.0, "K", "amplitude of the diurnal surface "
                              "temperature cycle (maximum at 15 h local time)"),
        "lapse_rate": (5.0, 3.0, 8.0, "K km-1", "initial and reference dθ/dz"),
        "cooling_rate": (1.5, 0.5, 3.0, "K day-1", "uniform cooling below the relaxation "
                         "zone (clear-sky radiation)"),
        "relaxation_time": (6.0, 1.0, 24.0, "h", "relaxation time scale aloft"),
        "roughness_length": (0.1, 1.0e-3, 1.0, "m", "roughness length (momentum and heat)"),
    },
    build=build,
    references=("this package: docs/cases.md, 'Periodic dry diurnal cycle'",),
    ranges=(PublishedRange("periodicity", 0.0, 1.0, "K",
                           "largest difference of the day-30 and day-10 mean theta profiles "
                           "(periodic by design)"),),
    measure=measure,
)
