"""Column networks: ``(profiles (c_in, z), scalars (s,)) -> outputs (c_out, length)``.

``length`` is ``z`` (centres) or ``z + 1`` (interfaces), set by the head. Both networks start
with their LAST layer at exactly zero (weights and bias), so an untrained network outputs
zeros and a hybrid model starts as its physics baseline.

- ``ColumnMLP``: the whole column flattened into one vector, a dense MLP, reshaped to the
  output column (non-local: every output sees every level; Rasp, Pritchard & Gentine 2018,
  PNAS 115, 9684; Brenowitz & Bretherton 2018, GRL 45, 6289).
- ``LocalConvNet``: 1-D convolutions over levels (edge-replicated padding), so each level sees
  only its neighbours within the receptive field; the surface scalars enter as extra
  channels at every level. The same weights serve any number of levels.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


def zero_last_layer(layer):
    """The same layer (``eqx.nn.Linear`` or ``eqx.nn.Conv1d``) with zero weight and bias."""
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer,
                       (jnp.zeros_like(layer.weight), jnp.zeros_like(layer.bias)))


class ColumnMLP(eqx.Module):
    """Flattened column → tanh MLP (``depth`` hidden layers of ``width``) → output column."""

    layers: tuple[eqx.nn.Linear, ...]
    out_channels: int = eqx.field(static=True)
    out_length: int = eqx.field(static=True)

    def __init__(self, in_channels: int, n_scalars: int, n_levels: int, out_channels: int,
                 out_length: int, *, width: int = 64, depth: int = 2, key: PRNGKeyArray):
        sizes = [in_channels * n_levels + n_scalars] + [width] * depth
        keys = jax.random.split(key, depth + 1)
        layers = [eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys[:-1],
                                                                strict=True)]
        layers.append(zero_last_layer(eqx.nn.Linear(sizes[-1], out_channels * out_length,
                                                    key=keys[-1])))
        self.layers = tuple(layers)
        self.out_channels, self.out_length = out_channels, out_length

    def __call__(self, profiles: Float[Array, "c z"], scalars: Float[Array, " s"]):
        x = jnp.concatenate([profiles.reshape(-1), scalars])
        for layer in self.layers[:-1]:
            x = jnp.tanh(layer(x))
        return self.layers[-1](x).reshape(self.out_channels, self.out_length)


class LocalConvNet(eqx.Module):
    """1-D convolutions over levels: ``depth`` tanh layers of kernel ``kernel_size`` (odd),
    then a last layer to centres (kernel 1) or interfaces (kernel 2 over the centres either
    side, the end centres repeated beyond the column)."""

    layers: tuple[eqx.nn.Conv1d, ...]
    kernel_size: int = eqx.field(static=True)
    on_interfaces: bool = eqx.field(static=True)

    def __init__(self, in_channels: int, n_scalars: int, out_channels: int, *,
                 on_interfaces: bool, width: int = 32, depth: int = 2, kernel_size: int = 3,
                 key: PRNGKeyArray):
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (got {kernel_size})")
        channels = [in_channels + n_scalars] + [width] * depth
        keys = jax.random.split(key, depth + 1)
        layers = [eqx.nn.Conv1d(a, b, kernel_size, key=k)
                  for a, b, k in zip(channels[:-1], channels[1:], keys[:-1], strict=True)]
        last = eqx.nn.Conv1d(channels[-1], out_channels, 2 if on_interfaces else 1,
                             key=keys[-1])
        layers.append(zero_last_layer(last))
        self.layers = tuple(layers)
        self.kernel_size, self.on_interfaces = kernel_size, on_interfaces

    def __call__(self, profiles: Float[Array, "c z"], scalars: Float[Array, " s"]):
        n = profiles.shape[-1]
        x = jnp.concatenate([profiles, jnp.broadcast_to(scalars[:, None], (scalars.size, n))])
        half = self.kernel_size // 2
        for layer in self.layers[:-1]:
            x = jnp.tanh(layer(jnp.pad(x, ((0, 0), (half, half)), mode="edge")))
        if self.on_interfaces:
            x = jnp.pad(x, ((0, 0), (1, 1)), mode="edge")
        return self.layers[-1](x)
