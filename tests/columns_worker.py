"""A process of the column-runner tests (``tests/test_columns.py``), which start it with the
number of host devices they need: JAX fixes that number when it starts, so each device
count is a process of its own.

    python tests/columns_worker.py OUT.npz local 1 2 4       # one process, meshes of 1, 2, 4
    python tests/columns_worker.py OUT.npz distributed ADDRESS N RANK   # rank of N processes

It runs the same columns (an uneven number of GABLS1 columns, and the gradient of a
training-like loss of Ekman columns) through ``scm.columns`` and writes every result to
``OUT.npz`` (key ``<name>_<devices>``; in the distributed mode only rank 0 writes).
"""

from __future__ import annotations

import sys

import jax

MODE = sys.argv[2]
if MODE == "distributed":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(sys.argv[3], num_processes=int(sys.argv[4]),
                               process_id=int(sys.argv[5]))
jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.cases import build_case  # noqa: E402
from experiments.run import DEFAULT_PERTURBATION, initial_states, run_ensemble  # noqa: E402
from scm.columns import map_columns, to_host  # noqa: E402
from scm.integration import rollout  # noqa: E402

COLUMNS = 5  # uneven: padded on 2 and 4 devices


def ensemble(devices):
    """Final states and failure records of GABLS1 columns with the local closure (its
    surface-layer iteration and predictor solve: level primitives), 8 levels, 30 steps."""
    case = build_case("gabls1", levels=8, dt=60.0, turbulence="local")
    states = initial_states(case.state0, case.model.grid.z, COLUMNS, 3, DEFAULT_PERTURBATION)
    run = run_ensemble(case.model, case.forcing, states, case.dt, 0.0, 30, 30, progress=False,
                       devices=devices)
    return {"thl": np.asarray(run.state.thl), "u": np.asarray(run.state.u),
            "ustar": np.asarray(run.diagnostics["ustar"]),
            "failed_at": np.asarray(run.failed_at)}


def gradient(devices):
    """A loss summed over Ekman columns and its gradient with respect to the model (a
    reduction over the columns: the one place where the device count may move round-off)."""
    case = build_case("ekman", levels=8)
    states = initial_states(case.state0, case.model.grid.z, COLUMNS, 4, DEFAULT_PERTURBATION)

    @eqx.filter_jit
    def loss(model, states):
        def one(model, state):
            run = rollout(model, state, case.forcing, 0.0, case.dt, 10, 10)
            return jnp.sum(run.state.u[-1] ** 2)

        return jnp.sum(map_columns(one, (None, 0), model, states, devices=devices))

    value, grads = eqx.filter_value_and_grad(loss)(case.model, states)
    leaves = [np.asarray(g) for g in jax.tree.leaves(to_host(grads))]
    return {"loss": np.asarray(value), "gradient": np.concatenate([g.ravel() for g in leaves])}


def main():
    out = sys.argv[1]
    results = {}
    if MODE == "local":
        for count in map(int, sys.argv[3:]):
            devices = jax.devices()[:count]
            for name, value in {**ensemble(devices), **gradient(devices)}.items():
                results[f"{name}_{count}"] = value
    else:
        count = jax.device_count()
        for name, value in {**ensemble(None), **gradient(None)}.items():
            results[f"{name}_{count}"] = value
    if jax.process_index() == 0:
        np.savez(out, **results)


if __name__ == "__main__":
    main()
