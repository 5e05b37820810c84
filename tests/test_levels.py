"""Level primitives (``scm.levels``): the recurrence keeps the contract of ``lax.scan`` and
its derivatives, under ``vmap`` too; every Pallas kernel, run by the interpreter on the CPU,
equals the XLA kernel in values and gradients, and lowers for NVIDIA GPUs (Triton)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.cases import build_case
from physics.surface import MoninObukhovSurface
from scm.integration import ColumnTerm, SemiImplicitEuler
from scm.levels import any_column, recurrence, tridiagonal_solve, use_kernel

KERNELS = ("xla", "pallas_interpret")


def plume(params, x0, forcing, scan=recurrence, reverse=False, stops=False):
    """A plume-like loop: a nonlinear carry, a boolean that switches it off for good, an
    integer counter, two stacked outputs and parameters closed over. With ``stops`` the loop
    ends where the boolean switches off (``recurrence``'s ``active``; for ``lax.scan`` the
    same written out: the carry kept and zero outputs from there on), and a higher threshold
    stops the columns of the ``columns`` fixture at levels 0, 3 and 6 of 11 going up (each
    before the top, so the batched loop ends early), at 0, 6 and 11 going down."""
    a, b = params
    threshold = 0.0 if stops else -0.8

    def step(carry, level):
        h, alive, count = carry
        x, y = level
        new = jnp.tanh(a * h + b * x) + 0.1 * y * h
        alive = alive & (new > threshold)
        return (jnp.where(alive, new, h), alive, count + alive), (new * new, alive)

    def stopped(carry, level):
        new, ys = step(carry, level)
        keep = carry[1]
        return (jax.tree.map(lambda n, c: jnp.where(keep, n, c), new, carry),
                jax.tree.map(lambda y: jnp.where(keep, y, jnp.zeros_like(y)), ys))

    init = (x0, jnp.asarray(True), jnp.asarray(0))
    if not stops:
        run = scan(step, init, forcing, reverse=reverse)
    elif scan is recurrence:
        run = recurrence(step, init, forcing, reverse=reverse, active=lambda c: c[1])
    else:
        run = scan(stopped, init, forcing, reverse=reverse)
    (h, alive, count), (ys, flags) = run
    return h + jnp.sum(ys) + 0.01 * count + 0.1 * jnp.sum(flags)


@pytest.fixture
def columns(rng):
    params = (jnp.asarray(0.7), jnp.asarray(-0.3))
    x0 = jnp.asarray(rng.normal(size=6))
    forcing = (jnp.asarray(rng.normal(size=(6, 11))), jnp.asarray(rng.normal(size=(6, 11))))
    return params, x0, forcing


def batched(scan, reverse=False, stops=False):
    return lambda p, x0, f: jax.vmap(lambda x, g: plume(p, x, g, scan, reverse, stops))(x0, f)


@pytest.mark.parametrize(("reverse", "stops"), [(False, False), (True, False), (False, True),
                                                (True, True)])
def test_recurrence_equals_scan_with_its_derivatives(columns, reverse, stops):
    params, x0, forcing = columns
    want, got = batched(jax.lax.scan, reverse, stops), batched(recurrence, reverse, stops)
    np.testing.assert_allclose(jax.jit(got)(params, x0, forcing), want(params, x0, forcing),
                               rtol=1e-15)
    # one column, no vmap
    one = (params, x0[0], jax.tree.map(lambda a: a[0], forcing))
    np.testing.assert_allclose(plume(*one, recurrence, reverse, stops),
                               plume(*one, jax.lax.scan, reverse, stops), rtol=1e-15)
    # reverse mode, forward mode, vmap of grad
    sums = (lambda f: lambda *a: jnp.sum(f(*a)))  # noqa: E731
    g_want = jax.grad(sums(want), argnums=(0, 1, 2))(params, x0, forcing)
    g_got = jax.jit(jax.grad(sums(got), argnums=(0, 1, 2)))(params, x0, forcing)
    j_want = jax.jacfwd(want, argnums=(0, 1))(params, x0, forcing)
    j_got = jax.jit(jax.jacfwd(got, argnums=(0, 1)))(params, x0, forcing)
    for a, b in zip(jax.tree.leaves((g_got, j_got)), jax.tree.leaves((g_want, j_want)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)
    per_column = jax.jit(jax.vmap(jax.grad(
        lambda p, x, f: plume(p, x, f, recurrence, reverse, stops)), in_axes=(None, 0, 0)))(
            params, x0, forcing)
    per_column_want = jax.vmap(jax.grad(
        lambda p, x, f: plume(p, x, f, jax.lax.scan, reverse, stops)), in_axes=(None, 0, 0))(
            params, x0, forcing)
    for a, b in zip(jax.tree.leaves(per_column), jax.tree.leaves(per_column_want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)


def test_recurrence_gradient_matches_finite_differences(columns):
    params, x0, forcing = columns
    loss = lambda a: jnp.sum(batched(recurrence)((a, params[1]), x0, forcing))  # noqa: E731
    step = 1e-6
    fd = (loss(params[0] + step) - loss(params[0] - step)) / (2 * step)
    np.testing.assert_allclose(jax.grad(loss)(params[0]), fd, rtol=1e-7)


def test_recurrence_without_inputs_and_nested_vmap(rng):
    # a fixed number of iterations (the surface layer's bisection), vmapped twice, with an
    # integer closed over from the outer vmap
    targets = jnp.asarray(rng.uniform(-1.0, 1.0, (3, 4)))
    shifts = jnp.arange(3)

    def root(target, shift, scan):
        def bisect(bracket, _):
            lo, hi = bracket
            mid = 0.5 * (lo + hi)
            above = mid**3 + mid - target + 0.0 * shift > 0
            return (jnp.where(above, lo, mid), jnp.where(above, mid, hi)), mid

        (lo, hi), mids = scan(bisect, (jnp.asarray(-2.0), jnp.asarray(2.0)), None, length=30)
        return 0.5 * (lo + hi) + jnp.sum(mids) * 0 + shift

    def both(scan):
        return jax.vmap(lambda t, s: jax.vmap(lambda u: root(u, s, scan))(t))(targets, shifts)

    np.testing.assert_array_equal(jax.jit(lambda: both(recurrence))(), both(jax.lax.scan))


def test_stopping_recurrence_under_nested_vmap(rng):
    # batched twice, the inner batching rule's while loop and its shortcut are vmapped again
    params = (jnp.asarray(0.7), jnp.asarray(-0.3))
    x0 = jnp.asarray(rng.normal(size=(3, 4)))
    forcing = (jnp.asarray(rng.normal(size=(3, 4, 11))), jnp.asarray(rng.normal(size=(3, 4, 11))))

    def both(scan, params):
        inner = lambda x, f: plume(params, x, f, scan, stops=True)  # noqa: E731
        return jax.vmap(jax.vmap(inner))(x0, forcing)

    np.testing.assert_allclose(jax.jit(lambda p: both(recurrence, p))(params),
                               both(jax.lax.scan, params), rtol=1e-14)
    gradient = jax.jit(jax.grad(lambda p: jnp.sum(both(recurrence, p))))(params)
    want = jax.grad(lambda p: jnp.sum(both(jax.lax.scan, p)))(params)
    for a, b in zip(gradient, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13)


def test_recurrence_refuses_a_carry_that_changes_type():
    with pytest.raises(TypeError, match="carry"):
        recurrence(lambda c, x: (c.astype(jnp.float32), x), jnp.asarray(0), jnp.ones(3))


def test_recurrence_refuses_an_active_that_is_not_a_boolean_of_the_carry():
    step = lambda c, x: (c + x, c)  # noqa: E731
    with pytest.raises(TypeError, match="one boolean"):
        recurrence(step, jnp.asarray(0.0), jnp.ones(3), active=lambda c: c)
    with pytest.raises(TypeError, match="carry alone"):
        jax.jit(lambda limit: recurrence(step, jnp.asarray(0.0), jnp.ones(3),
                                         active=lambda c: c < limit))(2.0)


# ---------------------------------------------------------------------------------------------
# any_column: a branch that a whole batch skips


def guarded(x):
    """Work that only columns with x[0] > 0 need, under ``any_column``: the taken branch gives,
    where the flag is false, what the skipped one gives (zeros)."""
    flag = x[0] > 0
    return jax.lax.cond(any_column(flag), lambda: jnp.where(flag, jnp.sin(x) * x[0], 0.0),
                        lambda: jnp.zeros_like(x))


def test_any_column_keeps_the_branch_under_vmap_with_the_values_and_derivatives(rng):
    x = jnp.asarray(rng.normal(size=(5, 3)))
    x = x.at[:, 0].set(jnp.asarray([1.0, -1.0, 2.0, -0.5, 0.3]))
    assert "cond[" in str(jax.make_jaxpr(jax.vmap(guarded))(x))  # not a select of both
    want = jnp.where(x[:, :1] > 0, jnp.sin(x) * x[:, :1], 0.0)
    np.testing.assert_array_equal(jax.jit(jax.vmap(guarded))(x), want)
    for c in range(x.shape[0]):  # one column alone: the flag itself
        np.testing.assert_array_equal(guarded(x[c]), want[c])
    loss = lambda x: jnp.sum(jnp.sin(x) * jnp.where(x[:, :1] > 0, x[:, :1], 0.0))  # noqa: E731
    np.testing.assert_allclose(jax.jit(jax.grad(lambda x: jnp.sum(jax.vmap(guarded)(x))))(x),
                               jax.grad(loss)(x), rtol=1e-14)
    np.testing.assert_allclose(jax.vmap(jax.grad(lambda c: jnp.sum(guarded(c))))(x),
                               jax.grad(loss)(x), rtol=1e-14)
    tangent = jnp.ones_like(x)
    np.testing.assert_allclose(jax.jvp(jax.vmap(guarded), (x,), (tangent,))[1],
                               jax.jvp(lambda x: jnp.sin(x) * jnp.where(
                                   x[:, :1] > 0, x[:, :1], 0.0), (x,), (tangent,))[1],
                               rtol=1e-14)
    # batched twice: any column of the inner batch, then of the outer; a batch of columns
    # none of which needs the work gets the other branch
    both = jnp.stack([x, -jnp.abs(x)])
    np.testing.assert_array_equal(jax.jit(jax.vmap(jax.vmap(guarded)))(both),
                                  jnp.stack([want, jnp.zeros_like(x)]))


# ---------------------------------------------------------------------------------------------
# Pallas kernels against the XLA kernel


def under(kernel, fn, *args):
    """``fn(*args)`` traced with ``kernel`` for every batched loop (a fresh function, so
    that no program traced with another kernel is reused)."""
    with use_kernel(kernel):
        return jax.jit(lambda *a: fn(*a))(*args)


@pytest.mark.parametrize("stops", [False, True])
def test_pallas_recurrence_equals_xla(columns, stops):
    params, x0, forcing = columns
    run = batched(recurrence, stops=stops)
    loss = lambda p, x, f: jnp.sum(run(p, x, f) ** 2)  # noqa: E731
    gradient = jax.grad(loss, argnums=(0, 1, 2))
    tangent = lambda p, x, f: jax.jvp(lambda x: run(p, x, f), (x,),  # noqa: E731
                                      (jnp.ones_like(x),))
    results = {k: (under(k, run, params, x0, forcing),
                   under(k, gradient, params, x0, forcing),
                   under(k, tangent, params, x0, forcing)) for k in KERNELS}
    for a, b in zip(*(jax.tree.leaves(results[k]) for k in KERNELS), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)


def test_pallas_tridiagonal_solve_equals_xla(rng):
    # one complex system (the wind with Coriolis) among real ones, 5 columns of 12 levels
    shape = (5, 12)
    lower, upper = rng.uniform(-1.0, 0.0, (2, 3, *shape))
    diag = 1.0 + np.abs(lower) + np.abs(upper) + rng.uniform(0.0, 1.0, (3, *shape))
    rhs = rng.normal(size=(3, *shape))
    turn = 0.3j * rng.uniform(size=shape)

    def solve(lower, diag, upper, rhs):
        systems = (tuple(lower), (diag[0] + turn, *diag[1:]), tuple(upper),
                   (rhs[0] * (1 + 0.5j), *rhs[1:]))
        return jax.vmap(tridiagonal_solve, in_axes=(1, 1, 1, 1))(*systems)

    def loss(*args):
        x = solve(*args)
        return sum(jnp.sum(jnp.abs(s) ** 2) for s in x)

    args = tuple(jnp.asarray(a) for a in (lower, diag, upper, rhs))
    results = {k: (under(k, solve, *args), under(k, jax.grad(loss, argnums=(0, 1, 3)), *args))
               for k in KERNELS}
    for a, b in zip(*(jax.tree.leaves(results[k]) for k in KERNELS), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)


@pytest.fixture(scope="module")
def case_step():
    """One model step of RICO's physics with a Monin-Obukhov surface layer, over 3 columns
    of 8 levels: every loop of every scheme (the surface-layer iteration, the updraft, the
    cloud overlap, sedimentation, the implicit solve) in one program."""
    case = build_case("rico", levels=8)
    surface = MoninObukhovSurface(z0m=2.0e-4)
    model = eqx.tree_at(lambda m: (m.turbulence.surface, m.microphysics.cloud.surface),
                        case.model, (surface, surface))
    noise = np.random.default_rng(1).normal(0.0, 0.05, (3, 8))
    states = jax.tree.map(lambda a: jnp.broadcast_to(a, (3, *a.shape)), case.state0)
    states = eqx.tree_at(lambda s: s.thl, states, states.thl + noise)

    def step(model, states):
        term = ColumnTerm(model, case.forcing)
        return jax.vmap(lambda s: SemiImplicitEuler().step(term, 0.0, case.dt, s, None, None,
                                                           False)[0])(states)

    def loss(model, states):
        new = step(model, states)
        return jnp.sum((new.thl - states.thl) ** 2) + jnp.sum(new.u**2) + jnp.sum(
            new.tracers["qr"])

    return model, states, step, loss


def test_pallas_kernels_equal_xla_in_a_case_step(case_step, rng):
    # values and a directional derivative (forward mode: the tangent recurrences); the
    # adjoint kernels are compared on the synthetic plume above and lowered below
    model, states, step, loss = case_step
    direction = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), states)

    def both(states, direction):
        return jax.jvp(lambda s: step(model, s), (states,), (direction,))

    results = {k: under(k, both, states, direction) for k in KERNELS}
    for a, b in zip(*(jax.tree.leaves(results[k]) for k in KERNELS), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    assert np.any(np.asarray(results["xla"][1].thl) != 0)


def test_pallas_kernels_lower_for_nvidia_gpus(case_step):
    # the Triton lowering runs without a GPU: it type-checks every kernel for the device
    model, states, step, loss = case_step
    params, static = eqx.partition(model, eqx.is_inexact_array)
    grad = jax.grad(lambda p, s: loss(eqx.combine(p, static), s))
    with use_kernel("pallas"):
        lowered = jax.jit(grad).trace(params, states).lower(lowering_platforms=("cuda",))
    assert lowered.as_text().count("__gpu$xla.gpu.triton") >= 10
