"""Columns over devices and hosts: the one column runner.

Columns are independent, so a batch of them is split evenly over every device of a
``jax.sharding.Mesh`` with one axis, ``"columns"`` (``jax.shard_map``): each device runs the
same per-column program (``jax.vmap`` of the scheme's code) on its share, and nothing is
exchanged between devices during a run. ``map_columns`` is that runner; ``run_ensemble``
(every ``scm`` command, the truth, the evaluations and the stability benchmark) and the
training loss go through it.

- **Devices.** By default every device of the default backend: every GPU of a GPU machine;
  on a CPU, XLA would present one device for all cores and run a batch of small level
  loops on one of them, so importing ``scm`` asks JAX for one host device per core before
  its backends start (through ``JAX_NUM_CPU_DEVICES`` when JAX is not loaded yet, else
  ``use_host_devices``). ``JAX_NUM_CPU_DEVICES=N`` or
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set before the start override it
  (N = 1: no splitting).
- **Blocks.** On a CPU a device runs a share of more than ``CPU_BLOCK`` columns in equal
  blocks, one after the other, each through the whole function (a rollout from start to
  end), so that its data stays in the caches; the results are those of one block.
- **Uneven batches** are padded to a multiple of the device count with copies of the last
  column, whose results are dropped.
- **Several hosts** (``jax.distributed``): call ``jax.distributed.initialize(...)`` in every
  process before anything else (on CPUs with ``jax_cpu_collectives_implementation`` set to
  ``"gloo"``); the mesh then spans the devices of every process, each host computes its
  share of the columns, and ``to_host`` gathers the results on every host. Every process
  passes the same inputs (the same case, the same seed), as a single-process run would.
- **Decomposition independence** (tested): the same columns on 1, 2 or 4 devices give the
  same results, bit for bit on XLA:CPU here (each device runs the same per-column
  arithmetic; a backend that vectorized differently for another share size could change
  the last bits, never more).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scm import available_cores, devices_forced_by_xla_flags

#: The name of the mesh axis the columns are split over.
COLUMNS = "columns"


def use_host_devices(count: int | None = None) -> int | None:
    """Ask JAX for ``count`` CPU devices (default: one per core available to this process),
    unless the backends have started already or the number was chosen otherwise
    (``jax_num_cpu_devices`` / ``JAX_NUM_CPU_DEVICES``, or
    ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``). Returns the number set, or
    None if it was left alone."""
    from jax._src import xla_bridge  # the only way to ask whether the backends started

    chosen = jax.config.jax_num_cpu_devices >= 0 or devices_forced_by_xla_flags()
    if chosen or xla_bridge.backends_are_initialized():
        return None
    if count is None:
        count = available_cores()
    jax.config.update("jax_num_cpu_devices", int(count))
    return int(count)


def column_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh (``COLUMNS``) of ``devices`` (default: all devices of every process)."""
    return Mesh(np.asarray(jax.devices() if devices is None else list(devices)), (COLUMNS,))


#: Columns a CPU device runs at once (``map_columns``): a larger share runs block by block.
#: GABLS1's rollout (64 levels, float32) on the 2-core CPU, split over both cores, ran with
#: 8192 columns at 2.2e5 column-steps/s in one block per core against 3.8-4.0e5 in blocks of
#: 1024 (same run), and at 4.0-4.2e5 in blocks of 512, 4.7-4.9e5 in blocks of 128, 4.7e5 in
#: blocks of 64; with 1024 columns, blocks of 32 ran at 4.0e5 against 4.8e5 in blocks of 64
#: (too few columns per kernel).
CPU_BLOCK = 128


def map_columns(fn: Callable, in_axes, *args, devices: Sequence[jax.Device] | None = None,
                block: int | None = None):
    """``jax.vmap(fn, in_axes)(*args)``, the columns split evenly over ``devices`` (default:
    all). ``in_axes`` is 0 (one entry per column) or None (shared by all columns) per
    argument, as for ``vmap``; arguments may be any pytrees (equinox modules with static
    fields too); every output has the column axis first. Call it inside ``jit``.

    A device whose share is more than ``block`` columns (default: ``CPU_BLOCK`` on CPUs,
    unlimited on GPUs and other accelerators) runs it in equal blocks of at most ``block``,
    one after the other, each block's columns through the whole of ``fn`` (a rollout from
    start to end): so that what a block's kernels pass between them stays in the CPU's
    caches instead of streaming through memory. With one device, one column and one block,
    this is plain ``vmap``."""
    in_axes = tuple(in_axes) if isinstance(in_axes, (tuple, list)) else (in_axes,) * len(args)
    mesh = column_mesh(devices)
    batched = [a for a, axis in zip(args, in_axes, strict=True) if axis is not None]
    n = jax.tree.leaves(batched)[0].shape[0]
    if block is None:
        block = CPU_BLOCK if mesh.devices.flat[0].platform == "cpu" else n
    share = -(-n // mesh.size)
    blocks = -(-share // max(int(block), 1))
    width = -(-share // blocks)  # columns per block, as even as the blocks can be
    if n == 1 or (mesh.size == 1 and blocks == 1):
        return jax.vmap(fn, in_axes)(*args)
    padded = width * blocks * mesh.size
    arrays, statics = eqx.partition(args, eqx.is_array)
    arrays = tuple(a if axis is None else jax.tree.map(lambda x: _pad(x, padded), a)
                   for a, axis in zip(arrays, in_axes, strict=True))

    def local(*arrays):  # one device's share of the columns, block by block
        run = jax.vmap(lambda *a: fn(*eqx.combine(a, statics)), in_axes)
        if blocks == 1:
            return run(*arrays)
        # the batched arguments as (blocks, width, ...), the shared ones left out of the map
        each = [None if axis is None else jax.tree.map(
            lambda x: x.reshape(blocks, width, *x.shape[1:]), a)
            for a, axis in zip(arrays, in_axes, strict=True)]

        def one_block(parts):
            return run(*(a if axis is None else p
                         for a, p, axis in zip(arrays, parts, in_axes, strict=True)))

        out = jax.lax.map(one_block, each)
        return jax.tree.map(lambda x: x.reshape(blocks * width, *x.shape[2:]), out)

    if mesh.size == 1:
        out = local(*arrays)
    else:
        specs = tuple(PartitionSpec() if axis is None else PartitionSpec(COLUMNS)
                      for axis in in_axes)
        # check_vma=False: the level primitives trace their loops per column inside a
        # batching rule, where JAX cannot tell loop carries that vary over the devices from
        # shared ones
        out = jax.shard_map(local, mesh=mesh, in_specs=specs,
                            out_specs=PartitionSpec(COLUMNS), check_vma=False)(*arrays)
    return jax.tree.map(lambda x: x[:n], out)


def replicate(tree, devices: Sequence[jax.Device] | None = None):
    """``tree``'s arrays placed on every device of the column mesh, once: what every column
    reads (training data, weights) then needs no copy at every call."""
    sharding = NamedSharding(column_mesh(devices), PartitionSpec())
    return jax.tree.map(lambda a: jax.device_put(a, sharding) if eqx.is_array(a) else a, tree)


def _pad(x, padded: int):
    """``x`` with copies of its last column appended up to ``padded`` columns."""
    extra = padded - x.shape[0]
    return x if extra == 0 else jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)])


def to_host(tree):
    """The arrays of ``tree`` as NumPy arrays on this host; those split over several hosts
    are gathered from every process first."""
    from jax.experimental import multihost_utils

    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            a = multihost_utils.process_allgather(a, tiled=True)
        return np.asarray(a)

    return jax.tree.map(one, tree)
