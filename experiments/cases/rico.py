"""RICO: precipitating trade-wind cumulus over a warm ocean (vanZanten et al. 2011, JAMES 3;
the Rain in Cumulus over the Ocean campaign, Rauber et al. 2007)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from experiments.cases.base import (
    DAY,
    Definition,
    PublishedRange,
    piecewise,
    window_max,
    window_mean,
)
from scm.constants import KAPPA

if TYPE_CHECKING:
    import xarray as xr

WINDOW = (20.0, 24.0)
SURFACE_PRESSURE = 1.0154e5

THL = piecewise([0.0, 740.0, 4000.0], [297.9, 297.9, 317.0])
QT = piecewise([0.0, 740.0, 3260.0, 4000.0], [16.0e-3, 13.8e-3, 2.4e-3, 1.8e-3])


def build(p, levels, top, dt, hours, turbulence):
    """RICO (vanZanten et al. 2011, section 2 and appendix): θl = 297.9 K to 740 m, then
    linear to 317 K at 4 km; qt through 16, 13.8, 2.4 and 1.8 g/kg at 0, 740, 3260 and 4000 m;
    u = ug = −9.9 + 2 × 10⁻³ z, v = vg = −3.8 m/s; f = 4.5 × 10⁻⁵ s⁻¹; subsidence
    −0.005 z/2260 m/s up to 2260 m, −0.005 m/s above, on every prognostic field; θl cooled by
    2.5 K/day (radiation and advection together); qt tendency −1 g/kg/day at the surface,
    linear to +0.3456 g/kg/day at 2980 m and constant above; bulk surface fluxes from the
    sea-surface temperature (Cm, Ch, Cq at 20 m, moved to the first level with the neutral
    log law, z0 = 1.5 × 10⁻⁴ m); warm rain with Nc = 70 cm⁻³; ps = 1015.4 hPa."""
    import scm.model
    from experiments.cases.building import (
        cloud_source,
        initial_state,
        moist_grid,
        turbulence_scheme,
    )
    from physics.large_scale import LargeScaleForcing
    from physics.microphysics import WarmRain
    from physics.radiation import PrescribedRadiation
    from physics.surface import BulkSurface
    from scm.forcing import Forcing, ForcingSeries
    from scm.state import as_float

    grid = moist_grid(np.linspace(0.0, top, levels + 1), SURFACE_PRESSURE, THL, QT)
    z = np.asarray(grid.z)
    closure = turbulence_scheme(turbulence, BulkSurface(), dt)
    model = scm.model.Model(
        grid, turbulence=closure,
        microphysics=WarmRain(cloud_source(closure), p["droplet_number"], time_step=dt),
        radiation=PrescribedRadiation(as_float(np.full_like(z, -2.5 / DAY))),
        large_scale=LargeScaleForcing(subside_momentum=True))
    moistening = piecewise([0.0, 2980.0], [-1.0e-3, 0.3456e-3], extend=False)(z) / DAY
    forcing = ForcingSeries.constant(Forcing.create(
        grid.n_levels, coriolis_parameter=4.5e-5, geostrophic_u=-9.9 + 2.0e-3 * z,
        geostrophic_v=-3.8, subsidence=-0.005 * np.minimum(z, 2260.0) / 2260.0,
        qt_tendency=moistening,
        surface_temperature=p["sea_surface_temperature"]
        * (1.0e5 / SURFACE_PRESSURE) ** KAPPA))
    state0 = initial_state(model, -9.9 + 2.0e-3 * z, -3.8, THL(z), QT(z),
                           tke=np.clip(1.0 - z / 3000.0, 0.0, 1.0))
    return model, state0, forcing, {"surface_pressure": SURFACE_PRESSURE}


def measure(dataset: xr.Dataset) -> dict[str, float]:
    """The last 4 h: mean cloud base, highest cloud top, mean cloud cover and mean surface
    precipitation (mm/day)."""
    top = window_max(dataset, "cloud_top_height", WINDOW)
    return {
        "cloud_base_height": float(window_mean(dataset, "cloud_base_height", WINDOW)),
        "cloud_top_height": top,
        "cloud_cover": float(window_mean(dataset, "cloud_cover", WINDOW)),
        "surface_precipitation": float(window_mean(dataset, "surface_precipitation", WINDOW))
        * DAY,
    }


DEFINITION = Definition(
    name="rico",
    description="RICO precipitating trade-wind cumulus over a warm ocean "
                "(vanZanten et al. 2011)",
    levels=100, top=4000.0, dt=60.0, hours=24.0, turbulence="tke",
    parameters={
        "sea_surface_temperature": (299.8, 290.0, 305.0, "K", "sea-surface temperature"),
        "droplet_number": (70.0, 10.0, 1000.0, "cm-3", "cloud droplet number Nc"),
    },
    build=build,
    references=("vanZanten et al. (2011), Journal of Advances in Modeling Earth Systems 3, "
                "M06001",
                "Rauber et al. (2007), Bulletin of the American Meteorological Society 88, "
                "1912-1928"),
    window=WINDOW,
    ranges=(
        PublishedRange("cloud_base_height", 500.0, 800.0, "m", "mean cloud base, hours 20-24",
                       series="cloud_base_height"),
        PublishedRange("cloud_top_height", 1800.0, 3200.0, "m",
                       "highest cloud top, hours 20-24", series="cloud_top_height"),
        PublishedRange("cloud_cover", 0.05, 0.25, "1", "mean cloud cover, hours 20-24",
                       series="cloud_cover"),
        PublishedRange("surface_precipitation", 0.05, 1.5, "mm day-1",
                       "mean surface precipitation, hours 20-24 (LES spread)",
                       series="surface_precipitation", factor=DAY),
    ),
    measure=measure,
)
