"""Partial cloudiness: cloud fraction and cloud liquid of a layer from the subgrid spread of
its saturation deficit (a statistical cloud scheme), for the environment around a convective
updraft, plus the updraft's own cloud.

Saturation deficit and its spread (Sommeria & Deardorff 1977; Mellor 1977), linearized about
the liquid-water temperature Tl = Π θl:

    a = 1 / (1 + (Lv/cp) ∂qs/∂T|Tl),   s̄ = a (qt − qs(Tl, p)),   Q1 = s̄ / σs.

For saturated air s̄ is replaced by the exact excess qt − qs(T) of the saturation adjustment
(``physics.thermodynamics``): both vanish where qt = qs(Tl), so cloud fraction and liquid stay
continuous, and σs → 0 gives the all-or-nothing adjustment exactly.

Gaussian distribution of s (Sommeria & Deardorff 1977; Mellor 1977):

    C = ½ [1 + erf(Q1 / √2)],   ql = σs [C Q1 + exp(−Q1²/2) / √(2π)].

Spread σs from the vertical gradients of the conserved variables over the turbulent mixing
length ℓ (Bechtold et al. 1995; Chaboureau & Bechtold 2002, as in the Meso-NH and AROME
condensation scheme), with a floor of a small fraction of qs (PHYEX's ``PSIGQSAT``) so that
σs > 0 in well-mixed layers:

    σs² = (c_σ ℓ)² [a ∂qt/∂z − a Π (∂qs/∂T) ∂θl/∂z]² + (c_qs a qs)²,   c_σ = 0.2, c_qs = 0.01,

ℓ the turbulence closure's mixing length (without one, ℓ = min(z, 600 m), PHYEX's length when
the turbulence gives none). The variance that convection creates is not added here (as
Chaboureau & Bechtold 2005 do for a convection scheme whose cloud the distribution must
carry): the updraft's cloud is counted on its own. The floor c_qs = 0.01 is half AROME's
usual 0.02, a choice for the domains of a few kilometres the cases' LES represent: with 0.02
the DYCOMS-II RF01 stratocumulus stays only 88 % cloudy in its middle.

With an updraft of area a_u and liquid ql,u (EDMF), the scheme applies to the environment,
φe = (φ̄ − a_u φu)/(1 − a_u), and the updraft adds its own cloud (as in the EDMF of Tan et al. 2018,
JAMES 10): C = a_u H(ql,u) + (1 − a_u) Ce, ql = a_u ql,u + (1 − a_u) ql,e.
"""

from __future__ import annotations

import abc
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from physics.thermodynamics import (
    LATENT_OVER_CP,
    saturation_adjustment,
    saturation_specific_humidity,
)
from scm.errors import check_range
from scm.forcing import Forcing
from scm.grid import ColumnGrid
from scm.levels import recurrence
from scm.state import State, as_float

#: Smallest spread of the saturation deficit (kg/kg), where divisions by σs must stay finite.
MIN_SPREAD = 1.0e-10
#: Cloud fraction above which a level counts as cloudy for the cloud base and top.
CLOUDY_FRACTION = 0.01
#: Diagnostics that are NaN (undefined) where a column has no cloud.
WITHOUT_CLOUD = ("cloud_base_height", "cloud_top_height")


class Cloud(NamedTuple):
    """Cloud of a column, each ``(z,)``: cloud ``fraction`` (1), grid-mean cloud ``liquid``
    (kg/kg), and the two parts the microphysics treats separately: the updraft (``updraft_area``
    and its in-updraft liquid ``updraft_liquid``) and the environment's cloudy part
    (``environment_fraction`` of the environment, with in-cloud liquid
    ``environment_liquid``)."""

    fraction: Float[Array, " z"]
    liquid: Float[Array, " z"]
    updraft_area: Float[Array, " z"]
    updraft_liquid: Float[Array, " z"]
    environment_fraction: Float[Array, " z"]
    environment_liquid: Float[Array, " z"]


class AbstractCloudSource(eqx.Module):
    """Anything that diagnoses a column's ``Cloud`` from its state: the statistical scheme of
    the grid mean, or a closure that knows its updraft (``physics.turbulence.TKEClosure``).
    The microphysics and the radiation hold one, so they see the cloud the turbulence sees."""

    @abc.abstractmethod
    def cloud(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Cloud:
        raise NotImplementedError


class StatisticalCloud(AbstractCloudSource):
    """Gaussian statistical cloud scheme for the environment of an updraft (see the module
    docstring for the equations and sources); as a cloud source, that of the grid mean with
    no updraft."""

    spread_coefficient: Float[Array, ""]
    length_scale: Float[Array, ""]
    saturation_spread: Float[Array, ""]

    def __init__(self, spread_coefficient=0.2, length_scale=600.0, saturation_spread=0.01):
        check_range("spread_coefficient", spread_coefficient, 0.0, 5.0)
        check_range("length_scale", length_scale, 1.0, 1.0e4, "m")
        check_range("saturation_spread", saturation_spread, 0.0, 0.5)
        self.spread_coefficient = as_float(spread_coefficient)
        self.length_scale = as_float(length_scale)
        self.saturation_spread = as_float(saturation_spread)

    def environment(self, thl, qt, grid: ColumnGrid, length):
        """(cloud fraction, in-cloud liquid kg/kg) of air with θl, qt ``(z,)`` whose
        turbulence has the mixing length ``length`` (m, at centres)."""
        pressure, exner = grid.pressure, grid.exner
        qs_liquid, slope = saturation_specific_humidity(exner * thl, pressure)
        a = 1.0 / (1.0 + LATENT_OVER_CP * slope)
        _, excess = saturation_adjustment(thl, qt, pressure, exner)
        deficit = jnp.where(qt > qs_liquid, excess, a * (qt - qs_liquid))
        gradient = a * centred_gradient(qt, grid) - a * exner * slope * centred_gradient(thl, grid)
        variance = ((self.spread_coefficient * length * gradient) ** 2
                    + (self.saturation_spread * a * qs_liquid) ** 2)
        spread = jnp.sqrt(variance + MIN_SPREAD**2)
        fraction, scaled_liquid = gaussian_cloud(deficit / spread)
        in_cloud = spread * scaled_liquid / jnp.maximum(fraction, 1.0e-6)
        return fraction, jnp.where(fraction > 1.0e-6, in_cloud, 0.0)

    def __call__(self, thl, qt, grid: ColumnGrid, length=None, updraft_area=None,
                 updraft_thl=None, updraft_qt=None, updraft_liquid=None) -> Cloud:
        """The cloud of a column with grid means θl, qt, turbulent mixing length ``length``
        (m; default min(z, ``length_scale``)) and (optionally) an updraft of area a_u with
        θl,u, qt,u and ql,u, all at centres."""
        if length is None:
            length = jnp.minimum(grid.z, self.length_scale)
        if updraft_area is None:
            updraft_area = updraft_thl = updraft_qt = updraft_liquid = jnp.zeros_like(thl)
        environment_share = 1.0 - updraft_area
        thl_e = (thl - updraft_area * updraft_thl) / environment_share
        qt_e = (qt - updraft_area * updraft_qt) / environment_share
        fraction_e, liquid_e = self.environment(thl_e, qt_e, grid, length)
        updraft_cloudy = (updraft_liquid > 0.0).astype(thl.dtype)
        fraction = updraft_area * updraft_cloudy + environment_share * fraction_e
        liquid = updraft_area * updraft_liquid + environment_share * fraction_e * liquid_e
        return Cloud(fraction, liquid, updraft_area, updraft_liquid, fraction_e, liquid_e)

    def cloud(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Cloud:
        return self(state.thl, state.qt, grid)


def gaussian_cloud(q1):
    """(C, ql/σs) of a Gaussian distribution of the saturation deficit with normalized mean
    Q1: C = ½ [1 + erf(Q1/√2)], ql/σs = C Q1 + exp(−Q1²/2)/√(2π)."""
    fraction = 0.5 * (1.0 + jax.scipy.special.erf(q1 / math.sqrt(2.0)))
    return fraction, fraction * q1 + jnp.exp(-0.5 * q1**2) / math.sqrt(2.0 * math.pi)


def cloud_diagnostics(cloud: Cloud, grid: ColumnGrid) -> dict[str, Float[Array, "..."]]:
    """Output diagnostics of a cloud: the profiles ``ql`` (kg/kg) and ``cloud_fraction``;
    ``liquid_water_path`` ∫ ρ ql dz (kg m-2); ``cloud_cover`` (``cloud_cover``);
    ``cloud_base_height`` and
    ``cloud_top_height`` (m), the lowest and highest cloudy levels (NaN without cloud). A
    level is cloudy where the updraft condenses, however small its area (the deepest cumuli
    are few), or where the cloud fraction reaches ``CLOUDY_FRACTION``; base and top are
    interpolated to that fraction between levels."""
    z = grid.z
    updraft_cloudy = (cloud.updraft_liquid > 0) & (cloud.updraft_area > 0)
    fraction = jnp.where(updraft_cloudy, jnp.maximum(cloud.fraction, CLOUDY_FRACTION),
                         cloud.fraction)
    cloudy = fraction >= CLOUDY_FRACTION
    has_cloud = cloudy.any()
    n = z.shape[0]

    def crossing(k_inside, k_outside):
        inside, outside = fraction[k_inside], fraction[k_outside]
        weight = jnp.clip((inside - CLOUDY_FRACTION)
                          / jnp.maximum(inside - outside, 1.0e-12), 0.0, 1.0)
        return z[k_inside] + weight * (z[k_outside] - z[k_inside])

    lowest = jnp.argmax(cloudy)
    highest = n - 1 - jnp.argmax(cloudy[::-1])
    base = jnp.where(lowest > 0, crossing(lowest, jnp.maximum(lowest - 1, 0)), z[0])
    top = jnp.where(highest < n - 1, crossing(highest, jnp.minimum(highest + 1, n - 1)), z[-1])
    nan = jnp.full_like(z[0], jnp.nan)
    return {
        "ql": cloud.liquid,
        "cloud_fraction": cloud.fraction,
        "liquid_water_path": grid.column_integral(cloud.liquid),
        "cloud_cover": cloud_cover(cloud.fraction, grid),
        "cloud_base_height": jnp.where(has_cloud, base, nan),
        "cloud_top_height": jnp.where(has_cloud, top, nan),
    }


def cloud_cover(fraction, grid: ColumnGrid, decorrelation_length: float = 300.0):
    """Projected cloud cover of the column with exponential-random overlap (Hogan &
    Illingworth 2000, QJRMS 126): two adjacent levels Δz apart overlap as
    C₁₂ = α max(C₁, C₂) + (1 − α)(C₁ + C₂ − C₁C₂), α = exp(−Δz/L), and the clear fraction
    accumulates upward as clear_k = clear_(k−1) (1 − C_(k−1,k)) / (1 − C_(k−1)). L = 300 m,
    the decorrelation length of shallow cumulus in LES and ground-based radar (Corbetta et al.
    2015, GRL 42; cumuli overlap far less than maximally, Neggers et al. 2011, JGR 116); a
    layer of solid cloud gives a cover of one whatever L."""
    overlap = jnp.exp(-jnp.diff(grid.z) / decorrelation_length)

    def step(clear, level):
        below, here, alpha = level
        pair = alpha * jnp.maximum(below, here) + (1.0 - alpha) * (below + here - below * here)
        clear = clear * (1.0 - pair) / jnp.maximum(1.0 - below, 1.0e-12)
        return clear, None

    clear, _ = recurrence(step, 1.0 - fraction[0], (fraction[:-1], fraction[1:], overlap))
    return 1.0 - clear


def centred_gradient(x: Float[Array, " z"], grid: ColumnGrid) -> Float[Array, " z"]:
    """∂x/∂z at centres: the mean of the gradients on the interfaces above and below (one
    sided at the lowest and highest level)."""
    inner = jnp.diff(x) / jnp.diff(grid.z)
    below = jnp.concatenate([inner[:1], inner])
    above = jnp.concatenate([inner, inner[-1:]])
    return 0.5 * (below + above)
