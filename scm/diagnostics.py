"""Diagnostics computed from any trajectory, whatever the schemes."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from scm.grid import ColumnGrid


def boundary_layer_height(
    grid: ColumnGrid, uw: Float[Array, " n_interface"], vw: Float[Array, " n_interface"]
) -> Float[Array, ""]:
    """Height where the stress magnitude first falls to 5 % of its surface value, / 0.95.

    The GABLS1 definition (Beare et al. 2006, section 3): the crossing is found by linear
    interpolation between interfaces; if the stress never falls that low, the domain top.
    """
    stress = jnp.hypot(uw, vw)
    threshold = 0.05 * stress[0]
    below = stress <= threshold
    below = below.at[0].set(False)
    k = jnp.where(below.any(), jnp.argmax(below), stress.shape[-1] - 1)
    z = grid.z_interface
    s_lo, s_hi = stress[k - 1], stress[k]
    w = jnp.clip((s_lo - threshold) / jnp.where(s_lo - s_hi == 0, 1.0, s_lo - s_hi), 0.0, 1.0)
    height = z[k - 1] + w * (z[k] - z[k - 1])
    return jnp.where(below.any(), height, z[-1]) / 0.95
