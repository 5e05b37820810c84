"""The column runner (``scm.columns``): columns split over devices and hosts give the same
results whatever the split (the CESM ERP/PEM test).

The device count of a JAX process is fixed when it starts, so the runs on 1, 2 and 4 devices
are made by a separate process (``tests/columns_worker.py``) started with four host devices,
and the run over two hosts by two processes joined by ``jax.distributed``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.cases import build_case
from experiments.run import DEFAULT_PERTURBATION, initial_states
from scm.columns import column_mesh, map_columns, use_host_devices
from scm.integration import rollout

WORKER = Path(__file__).with_name("columns_worker.py")
ROOT = WORKER.parent.parent


def worker(out: Path, *args: str, devices: int) -> subprocess.Popen:
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(WORKER), str(out), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 600.0) -> None:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory) -> dict:
    """The worker's results on meshes of 1, 2 and 4 of its 4 host devices."""
    out = tmp_path_factory.mktemp("columns") / "local.npz"
    finish(worker(out, "local", "1", "2", "4", devices=4))
    return dict(np.load(out))


def test_same_columns_on_1_2_4_devices_agree_to_round_off(local_runs):
    # 5 columns: one device, then 3 + 3 (one padding copy) and 2 + 2 + 2 + 2 (three). Each
    # device runs the per-column program on its share; a share of another size is another
    # program, which XLA:CPU may vectorize differently (measured: a few states differ in
    # the last bit, 2e-16 relative, after 30 steps in float64)
    for name in ("thl", "u", "ustar", "failed_at"):
        reference = local_runs[f"{name}_1"]
        assert np.all(np.isfinite(reference)) or name == "failed_at"
        for count in (2, 4):
            np.testing.assert_allclose(local_runs[f"{name}_{count}"], reference, rtol=1e-13,
                                       atol=0.0, err_msg=f"{name} on {count} devices")
    # a sum over the columns: only the order of the additions may differ
    for count in (2, 4):
        np.testing.assert_allclose(local_runs[f"loss_{count}"], local_runs["loss_1"],
                                   rtol=1e-13)
        np.testing.assert_allclose(local_runs[f"gradient_{count}"], local_runs["gradient_1"],
                                   rtol=1e-12, atol=1e-14)
    assert np.any(local_runs["gradient_1"] != 0.0)


def test_columns_over_two_processes_equal_one_process(local_runs, tmp_path):
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("localhost", 0))
        address = f"localhost:{s.getsockname()[1]}"
    out = tmp_path / "distributed.npz"
    processes = [worker(out, "distributed", address, "2", str(rank), devices=1)
                 for rank in range(2)]
    for process in processes:
        finish(process)
    distributed = dict(np.load(out))
    # two processes of one device each run the program of one process with two devices:
    # bit for bit
    for name in ("thl", "u", "ustar", "failed_at"):
        np.testing.assert_array_equal(distributed[f"{name}_2"], local_runs[f"{name}_2"],
                                      err_msg=name)
    np.testing.assert_allclose(distributed["gradient_2"], local_runs["gradient_2"],
                               rtol=1e-12, atol=1e-14)


class Scaled(eqx.Module):
    """A module with a static field, as schemes have (they cross shard_map split off)."""

    weight: jax.Array
    power: int = eqx.field(static=True)

    def __call__(self, x, y):
        return self.weight * x**self.power + y


@pytest.mark.parametrize("block", [None, 1, 2, 3])
def test_map_columns_equals_vmap_for_any_column_count(block):
    # block: columns a device runs at once (a larger share in blocks, padded to equal ones)
    module = Scaled(jnp.asarray(1.5), 2)
    for n in (1, 3, len(jax.devices()) + 1, 8):
        x = jnp.arange(n * 4.0).reshape(n, 4)
        y = jnp.asarray(0.25)
        got = jax.jit(lambda m, x, y: map_columns(lambda m, a, b: m(a, b), (None, 0, None),
                                                  m, x, y, block=block))(module, x, y)
        np.testing.assert_array_equal(got, jax.vmap(module, (0, None))(x, y))
        # and its gradient with respect to what the columns share
        grad = jax.grad(lambda m, x: jnp.sum(map_columns(lambda m, a: m(a, 0.0), (None, 0), m,
                                                         x, block=block)))(module, x)
        np.testing.assert_allclose(grad.weight, jnp.sum(x**2), rtol=1e-14)


def test_columns_run_block_by_block_give_the_same_rollouts():
    # 5 GABLS1 columns (local closure: its surface-layer iteration and solve) run in blocks
    # of 2 columns per device against one block: the same program per column, bit for bit
    case = build_case("gabls1", levels=8, dt=60.0, turbulence="local")
    states = initial_states(case.state0, case.model.grid.z, 5, 3, DEFAULT_PERTURBATION)

    def run(block):
        def one(model, state):
            return rollout(model, state, case.forcing, 0.0, case.dt, 20, 20).state

        return jax.jit(lambda m, s: map_columns(one, (None, 0), m, s, block=block))(
            case.model, states)

    for a, b in zip(jax.tree.leaves(run(2)), jax.tree.leaves(run(100)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_host_devices_are_left_alone_once_jax_started():
    # the test session has started JAX: nothing changes, and the mesh has every device
    assert use_host_devices(3) is None
    assert column_mesh().devices.size == jax.device_count()
