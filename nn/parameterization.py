"""``NeuralParameterization``: features → network → head, behind ``AbstractParameterization``.

Written for one column (batch with ``jax.vmap``). It fills the turbulence slot in place of a
closure and holds the same surface layer, so the physical surface fluxes still enter the
column (``surface_exchange=True``) and the diagnostics ``ustar``, ``surface_heat_flux`` and
``obukhov_length`` are reported as the closures report them. With ``surface_exchange=False``
the surface layer only provides the u* feature: that is the form to use as the correction in
``nn.wrappers.Residual`` (the physics already carries the surface exchange).

Only the network is trained; the normalization and the head's physical scales are frozen
(``trainable_filter`` gives the filter spec for ``eqx.partition`` and the optimizer).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from nn.features import PROFILE_NAMES, SCALAR_NAMES, Normalization, column_features
from nn.heads import AbstractHead
from nn.networks import ColumnMLP, LocalConvNet
from physics.surface import AbstractSurfaceLayer
from physics.turbulence import surface_diagnostics
from scm.forcing import Forcing
from scm.grid import ColumnGrid
from scm.parameterization import AbstractParameterization, Tendency
from scm.state import State


class NeuralParameterization(AbstractParameterization):
    """Tendency = head(network(normalization(features(state, forcing, u*)))).

    ``surface`` may be ``None`` (then u* = 0 as a feature and no surface exchange).
    """

    surface: AbstractSurfaceLayer | None
    normalization: Normalization
    network: eqx.Module
    head: AbstractHead
    surface_exchange: bool = eqx.field(static=True, default=True)

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        fluxes = None if self.surface is None else self.surface.fluxes(state, forcing, grid)
        ustar = jnp.zeros_like(state.thl[0]) if fluxes is None else fluxes.ustar
        profiles, scalars = column_features(self.normalization, state, forcing, grid, ustar)
        outputs = self.network(profiles, scalars)
        exchange = fluxes if self.surface_exchange else None
        tendency = self.head(outputs, state, grid, exchange)
        diagnostics = {} if exchange is None else surface_diagnostics(exchange)
        return Tendency(tendency.tendency, tendency.flux, tendency.diffusivity, diagnostics)


def make_network(kind: str, head: AbstractHead, n_levels: int, *, key: PRNGKeyArray,
                 **options) -> eqx.Module:
    """A ``"mlp"`` (``ColumnMLP``) or ``"conv"`` (``LocalConvNet``) sized for ``head``."""
    c_in, s_in = len(PROFILE_NAMES), len(SCALAR_NAMES)
    # Built by one compiled call (the same weights): run eagerly, each layer's random
    # initialization compiles a program of its own, ≈ 0.4 s apiece.
    if kind == "mlp":
        return eqx.filter_jit(ColumnMLP)(c_in, s_in, n_levels, head.out_channels,
                                         head.out_length(n_levels), key=key, **options)
    if kind == "conv":
        return eqx.filter_jit(LocalConvNet)(c_in, s_in, head.out_channels,
                                            on_interfaces=head.on_interfaces, key=key,
                                            **options)
    raise ValueError(f"network kind must be 'mlp' or 'conv' (got {kind!r})")


def trainable_filter(tree):
    """Filter spec (same structure as ``tree``): True on the floating arrays of every
    ``NeuralParameterization.network`` inside ``tree``, False elsewhere (frozen scales and
    normalization, physics parameters)."""
    def is_neural(x):
        return isinstance(x, NeuralParameterization)

    def spec(x):
        if is_neural(x):
            false = jax.tree.map(lambda _: False, x)
            return eqx.tree_at(lambda p: p.network, false,
                               jax.tree.map(eqx.is_inexact_array, x.network))
        return False

    return jax.tree.map(spec, tree, is_leaf=is_neural)
