"""Analytic solutions: Ekman layer, diffusion of a Gaussian and of a mode, Newtonian relaxation,
and the convergence order of the semi-implicit step in time and space (docs/cases.md, "Exact
analytic tests").

All runs share one grid family (4 km, ρ = 1, as the analytic solutions assume a Boussinesq
fluid) and one rollout shape: 1440 steps saved every 90, so a handful of compilations serve
every test. With Δt = 240, 120, 60, 30, 15 s the saved index 1, 2, 4, 8, 16 is t = 6 h.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import numpy as np
import pytest
from scipy.special import erfc

from scm.integration import ColumnTerm

TOP, STEPS, SAVE_EVERY = 4000.0, 1440, 90
SIX_HOURS = 21600.0
K, F = 5.0, 1.0e-4  # eddy viscosity (m2 s-1) and Coriolis parameter (s-1)
DELTA = np.sqrt(2.0 * K / F)  # Ekman depth, 316 m
UG, VG = 8.0, -6.0  # |Ug| = 10 m s-1


def index_at(time, dt):
    i = round(time / (dt * SAVE_EVERY))
    assert i * dt * SAVE_EVERY == time
    return i


def ekman_impulsive(z, t, ug=UG, vg=VG):
    """Wind after an impulsive start from u = ug, v = vg over a no-slip ground (docs/cases.md)."""
    w0 = -(ug + 1j * vg)
    lam = (1 + 1j) / DELTA
    s = (1 + 1j) * np.sqrt(F * t / 2)
    a = z / (2 * np.sqrt(K * t))
    w = w0 * 0.5 * (np.exp(-lam * z) * erfc(a - s) + np.exp(lam * z) * erfc(a + s))
    return ug + w.real, vg + w.imag


def ekman_steady(z, ug=UG, vg=VG):
    e, c, s = np.exp(-z / DELTA), np.cos(z / DELTA), np.sin(z / DELTA)
    return ug * (1 - e * c) - vg * e * s, vg * (1 - e * c) + ug * e * s


@pytest.fixture(scope="module")
def grids(kit):
    return {n: kit.grid(TOP, n) for n in (40, 80, 160)}


def ekman_run(kit, g, dt, ug=UG, vg=VG, steady=False):
    model = kit.model(g, momentum=K, no_slip=1.0)
    forcing = kit.forcing(g, coriolis_parameter=F, geostrophic_u=ug, geostrophic_v=vg)
    u, v = ekman_steady(np.asarray(g.z), ug, vg) if steady else (ug, vg)
    return kit.run(model, kit.state(g, u=u, v=v), forcing, dt, STEPS, SAVE_EVERY)


def wind(run, i):
    return np.asarray(run.state.u[i]) + 1j * np.asarray(run.state.v[i])


@pytest.fixture(scope="module")
def ekman_by_dt(kit, grids):
    """Wind at 6 h on the 80-level grid for Δt = 240 … 15 s."""
    runs = {dt: ekman_run(kit, grids[80], dt) for dt in (240.0, 120.0, 60.0, 30.0, 15.0)}
    return {dt: wind(r, index_at(SIX_HOURS, dt)) for dt, r in runs.items()}


def test_ekman_impulsive_start_matches_analytic(ekman_by_dt, grids):
    u, v = ekman_impulsive(np.asarray(grids[80].z), SIX_HOURS)
    error = np.abs(ekman_by_dt[15.0] - (u + 1j * v)).max()
    # Δz = 50 m = 0.16 δ; the error is the O(Δz²) one of the lowest levels (see the next tests)
    assert error < 0.01 * np.hypot(UG, VG)
    assert np.abs(ekman_by_dt[15.0] - (UG + 1j * VG)).max() > 0.3 * np.hypot(UG, VG)  # it moved


def test_ekman_first_order_in_time(ekman_by_dt):
    """Self-convergence on one grid isolates the time error: ‖U_Δt − U_Δt/2‖ ∝ Δt."""
    dts = (240.0, 120.0, 60.0, 30.0)
    differences = [np.abs(ekman_by_dt[dt] - ekman_by_dt[dt / 2]).max() for dt in dts]
    orders = np.log2(np.asarray(differences[:-1]) / np.asarray(differences[1:]))
    assert np.all((orders > 0.9) & (orders < 1.1)), orders


def test_ekman_second_order_in_space(kit, grids):
    """Error against the analytic solution at 6 h with Δt = 15 s (time error ≪ space error)."""
    errors = []
    for n in (40, 80, 160):
        z = np.asarray(grids[n].z)
        u, v = ekman_impulsive(z, SIX_HOURS)
        run = ekman_run(kit, grids[n], 15.0)
        errors.append(np.abs(wind(run, index_at(SIX_HOURS, 15.0)) - (u + 1j * v)).max())
    orders = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
    assert np.all((orders > 1.7) & (orders < 2.3)), (errors, orders)


def test_steady_ekman_spiral(kit, grids):
    """Started on the analytic spiral, the column stays there for a day; 45° turning at the
    ground, surface stress |Ug|√(Kf), and v max = 0.3224 ug at z = (π/4)δ."""
    g, ug = grids[160], 10.0
    z, dz = np.asarray(g.z), float(g.dz[0])
    run = ekman_run(kit, g, 60.0, ug=ug, vg=0.0, steady=True)
    u, v = ekman_steady(z, ug, 0.0)
    deviation = np.abs(np.asarray(run.state.u) - u) + np.abs(np.asarray(run.state.v) - v)
    assert deviation.max() < 2.5e-3 * ug
    # it settles within hours (the O(Δz²) offset excites a small, damped inertial oscillation)
    settled = np.abs(run.state.u[4:] - run.state.u[-1]) + np.abs(run.state.v[4:] - run.state.v[-1])
    assert np.asarray(settled).max() < 1e-4 * ug
    # surface stress (−flux) from the no-slip drag of the lowest level
    stress = -(np.asarray(run.flux.u[-1, 0]) + 1j * np.asarray(run.flux.v[-1, 0]))
    assert abs(stress) == pytest.approx(ug * np.sqrt(K * F), rel=0.01)
    assert np.degrees(np.angle(stress)) == pytest.approx(45.0, abs=0.5)
    # maximum of v by a parabola through the three highest levels
    vs = np.asarray(run.state.v[-1])
    k = int(np.argmax(vs))
    c = np.polyfit(z[k - 1 : k + 2], vs[k - 1 : k + 2], 2)
    z_max = -c[1] / (2 * c[0])
    assert np.polyval(c, z_max) / ug == pytest.approx(0.3224, abs=1.5e-3)
    assert z_max == pytest.approx(np.pi / 4 * DELTA, abs=0.5 * dz)


def test_gaussian_spreads_with_variance_2kt(kit, grids):
    """Away from the walls the discrete second moment grows by exactly 2KΔt per step."""
    g, k_h, sigma0, amplitude, centre = grids[80], 1.0, 150.0, 2.0, 0.5 * TOP
    z, dz = np.asarray(g.z), float(g.dz[0])
    thl0 = 300.0 + amplitude * np.exp(-((z - centre) ** 2) / (2 * sigma0**2))
    run = kit.run(
        kit.model(g, scalar=k_h), kit.state(g, thl=thl0), kit.forcing(g), 15.0, STEPS, SAVE_EVERY
    )
    t, x = np.asarray(run.time), np.asarray(run.state.thl) - 300.0
    mass = x.sum(axis=1) * dz
    mean = (x * z).sum(axis=1) * dz / mass
    variance = (x * (z - centre) ** 2).sum(axis=1) * dz / mass
    np.testing.assert_allclose(mass, mass[0], rtol=1e-11)
    np.testing.assert_allclose(mean, centre, rtol=1e-12)
    np.testing.assert_allclose(variance - variance[0], 2 * k_h * t, rtol=1e-9, atol=1e-9)
    assert variance[0] == pytest.approx(sigma0**2, rel=1e-3)  # sampling changes it a little
    sigma2 = sigma0**2 + 2 * k_h * t[-1]
    analytic = amplitude * sigma0 / np.sqrt(sigma2) * np.exp(-((z - centre) ** 2) / (2 * sigma2))
    assert np.abs(x[-1] - analytic).max() < 5e-3 * analytic.max()


def test_modes_decay_as_exp_minus_k_k2_t(kit, grids):
    """u = sin(kz) with no slip below and no flux at the top, a tracer cos(kz) between two
    no-flux walls; the tracer's cosine is an exact eigenvector of the discrete operator, so its
    decay is the backward-Euler factor (1 + 4KΔt/Δz² sin²(kΔz/2))⁻ⁿ to round-off."""
    g, k_h, dt = grids[80], 1.0, 30.0
    z, dz = np.asarray(g.z), float(g.dz[0])
    k_u, k_s = 3 * np.pi / (2 * TOP), 2 * np.pi / TOP
    model = kit.model(g, momentum=K, scalar=k_h, no_slip=1.0)
    s0 = kit.state(g, u=np.sin(k_u * z), passive=np.cos(k_s * z))
    run = kit.run(model, s0, kit.forcing(g), dt, STEPS, SAVE_EVERY)
    t = np.asarray(run.time)[:, None]
    u_exact = np.exp(-K * k_u**2 * t) * np.sin(k_u * z)
    assert np.exp(-K * k_u**2 * t[-1]) < 0.8
    assert np.abs(np.asarray(run.state.u) - u_exact).max() < 2e-4
    tracer = np.asarray(run.state.tracers["passive"])
    factor = 1.0 + 4.0 * k_h * dt / dz**2 * np.sin(k_s * dz / 2) ** 2
    np.testing.assert_allclose(tracer, factor ** (-t / dt) * np.cos(k_s * z), atol=1e-12)
    assert np.abs(tracer - np.exp(-k_h * k_s**2 * t) * np.cos(k_s * z)).max() < 1e-4


def test_newtonian_relaxation(kit, grids):
    """x_ref + (x0 − x_ref) e^(−t/τ) where relaxed, untouched above; first order in Δt."""
    g, tau = grids[80], 3 * 3600.0
    z = np.asarray(g.z)
    relaxed = z < 3000.0
    reference = 290.0 + 0.003 * z
    forcing = kit.forcing(
        g,
        relaxation_rate=np.where(relaxed, 1 / tau, 0.0),
        thl_reference=reference,
        qt_reference=0.005,
    )
    errors = []
    for dt in (240.0, 120.0, 60.0):
        run = kit.run(
            kit.model(g), kit.state(g, thl=300.0, qt=0.01), forcing, dt, STEPS, SAVE_EVERY
        )
        i = index_at(SIX_HOURS, dt)
        thl, qt = np.asarray(run.state.thl[i]), np.asarray(run.state.qt[i])
        decay = np.exp(-SIX_HOURS / tau)
        errors.append(np.abs(thl - (reference + (300.0 - reference) * decay))[relaxed].max())
        np.testing.assert_array_equal(thl[~relaxed], 300.0)
        np.testing.assert_allclose(qt[relaxed], 0.005 + 0.005 * decay, rtol=5e-3)
    assert errors[-1] < 0.01
    orders = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
    assert np.all((orders > 0.9) & (orders < 1.1)), orders


def test_diffrax_solver_on_column_term_agrees_to_first_order(kit, grids):
    """Tsit5 on ``ColumnTerm`` (diffusion explicit) is the small-step reference: the semi-implicit
    rollout differs from it by O(Δt), so both integrate one vector field."""
    g = grids[80]
    z = np.asarray(g.z)
    model = kit.model(g, momentum=K, scalar=1.0, no_slip=1.0, exchange=0.01, depth=500.0)
    forcing = kit.forcing(
        g, coriolis_parameter=F, geostrophic_u=UG, geostrophic_v=VG, surface_temperature=303.0
    )
    s0 = kit.state(g, u=UG, v=VG, thl=300.0 + 0.003 * z, passive=np.exp(-z / 500.0))
    end = 5400.0

    @eqx.filter_jit
    def reference(model, s0, forcing):
        solution = diffrax.diffeqsolve(
            ColumnTerm(model, forcing),
            diffrax.Tsit5(),
            0.0,
            end,
            30.0,
            s0,
            saveat=diffrax.SaveAt(t1=True),
            max_steps=1000,
        )
        return jax.tree.map(lambda a: a[0], solution.ys)

    want = reference(model, s0, forcing)
    errors = []
    for dt in (60.0, 30.0, 15.0):
        run = kit.run(model, s0, forcing, dt, STEPS, SAVE_EVERY)
        i = index_at(end, dt)
        got = {n: np.asarray(a[i]) for n, a in run.state.fields().items()}
        scale = {"u": 10.0, "v": 10.0, "thl": 1.0, "qt": 1.0, "passive": 1.0}
        errors.append(max(np.abs(got[n] - want.fields()[n]).max() / s for n, s in scale.items()))
    assert errors[-1] < 0.01
    orders = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
    assert np.all((orders > 0.9) & (orders < 1.1)), orders
