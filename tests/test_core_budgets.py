"""Conservation: flux form and the implicit solve close column budgets to round-off.

The budgets are checked on a stretched grid with the real (height-dependent) reference density,
so that layer mass ρΔz, interface density and the solver's conductances all have to agree.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scm.grid import ColumnGrid
from scm.integration import implicit_diffusion
from scm.state import State

DT, STEPS = 30.0, 240


@pytest.fixture(scope="module")
def grid():
    return ColumnGrid.stretched(2000.0, 32, 1.0e5, lambda z: 290.0 + 0.004 * z, stretching=1.08)


def initial_state(kit, g):
    z = np.asarray(g.z)
    return kit.state(
        g,
        u=5.0 + 0.002 * z,
        v=-2.0 + np.sin(z / 300.0),
        thl=290.0 + 0.004 * z,
        qt=0.01 * np.exp(-z / 1000.0),
        passive=np.exp(-(((z - 800.0) / 200.0) ** 2)),
    )


@pytest.fixture(scope="module")
def forced_run(kit, grid):
    """Implicit diffusion, no-slip drag and an explicit, state-dependent surface heat flux."""
    model = kit.model(grid, momentum=3.0, scalar=2.0, no_slip=1.0, exchange=0.01, depth=600.0)
    forcing = kit.forcing(
        grid, surface_temperature=305.0, surface_heat_flux=0.05, surface_moisture_flux=1.0e-4
    )
    return kit.run(model, initial_state(kit, grid), forcing, DT, STEPS, 1)


@pytest.mark.parametrize("name", ["thl", "qt"])
def test_surface_flux_in_equals_column_change(forced_run, grid, name):
    """Δ∫ρx dz = Δt Σₙ ρ_sfc F_sfc(xⁿ): the explicit surface flux of each step, in full."""
    x = np.asarray(getattr(forced_run.state, name))
    surface_flux = np.asarray(getattr(forced_run.flux, name))[:-1, 0]  # at each step's start
    change = float(grid.column_integral(x[-1]) - grid.column_integral(x[0]))
    inflow = float(grid.rho_interface[0]) * DT * surface_flux.sum()
    assert abs(inflow) > 1e-3 * float(grid.column_integral(np.abs(x[0]))) / STEPS
    assert change == pytest.approx(inflow, rel=1e-11)
    if name == "thl":  # the bulk heat flux depends on the state: it varied
        assert np.std(surface_flux) > 0.05 * np.abs(surface_flux).mean()


@pytest.mark.parametrize("name", ["u", "v"])
def test_momentum_change_equals_surface_stress(forced_run, grid, name):
    """No-slip drag is implicit: the stress of each step is that of the new state, which is what
    the trajectory saves after the step (K is constant, so the saved K is the one used)."""
    x = np.asarray(getattr(forced_run.state, name))
    stress = np.asarray(getattr(forced_run.flux, name))[1:, 0]  # at each step's end
    change = float(grid.column_integral(x[-1]) - grid.column_integral(x[0]))
    inflow = float(grid.rho_interface[0]) * DT * stress.sum()
    assert abs(change) > 1.0
    assert np.all(np.sign(stress) == -np.sign(x[1:, 0]))  # drag opposes the wind
    assert change == pytest.approx(inflow, rel=1e-11)


def test_passive_tracer_is_conserved(forced_run, grid):
    p = np.asarray(forced_run.state.tracers["passive"])
    totals = np.asarray(grid.column_integral(p))
    np.testing.assert_allclose(totals, totals[0], rtol=1e-13)
    assert np.abs(p[-1] - p[0]).max() > 0.05  # it did mix


def test_diffusion_alone_conserves_every_field(kit, grid):
    """Free-slip, no surface flux: the column integral of every field is constant in a rollout."""
    model = kit.model(grid, momentum=10.0, scalar=10.0)
    s0 = initial_state(kit, grid)
    run = kit.run(model, s0, kit.forcing(grid), DT, STEPS, 1)
    for name, x in run.state.fields().items():
        totals = np.asarray(grid.column_integral(x))
        np.testing.assert_allclose(totals, totals[0], rtol=1e-13, atol=1e-13, err_msg=name)
        assert np.abs(np.asarray(x[-1] - x[0])).max() > 1e-3 * np.abs(np.asarray(x[0])).max()


def test_implicit_solve_conserves_with_any_diffusivity(kit, grid, rng):
    """One backward-Euler step with random K ≥ 0 per field and interface and a huge Δt."""
    s0 = initial_state(kit, grid)
    n = grid.n_levels + 1
    k = State.from_fields({name: jnp.asarray(rng.uniform(0, 50, n)) for name in s0.fields()})
    k = eqx.tree_at(lambda d: d.v, k, k.u)  # one eddy viscosity for the wind
    solve = jax.jit(implicit_diffusion)
    for dt in (1.0, 3600.0, 1.0e6):
        new = solve(grid, s0, k, jnp.asarray(dt))
        for name in ("thl", "qt", "passive"):
            before = float(grid.column_integral(s0.fields()[name]))
            after = float(grid.column_integral(new.fields()[name]))
            # round-off grows with the condition number (Δt K / Δz² up to ~1e5 here)
            assert after == pytest.approx(before, rel=1e-11), (name, dt)
        # momentum leaks only through the surface interface (no-slip), never through the top
        for name in ("u", "v"):
            x0, x1 = s0.fields()[name], new.fields()[name]
            drag = dt * grid.rho_interface[0] * k.fields()[name][0] * x1[0] / grid.z[0]
            change = grid.column_integral(x1) - grid.column_integral(x0)
            assert float(change) == pytest.approx(-float(drag), rel=1e-10, abs=1e-9), (name, dt)
    # with K = 0 at the surface interface the momentum budget is closed too
    free = State.from_fields({name: a.at[0].set(0.0) for name, a in k.fields().items()})
    new = solve(grid, s0, free, jnp.asarray(3600.0))
    for name in ("u", "v"):
        before = float(grid.column_integral(s0.fields()[name]))
        assert float(grid.column_integral(new.fields()[name])) == pytest.approx(before, rel=1e-13)
