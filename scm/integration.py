"""Time integration: the semi-implicit step as a diffrax solver, and the rollout loop.

One step (the standard single-column-model scheme): explicit tendencies and explicit
fluxes advance y to y* = yⁿ + Δt R(yⁿ); then one backward-Euler vertical-diffusion solve
(I − Δt D_K) yⁿ⁺¹ = y*, tridiagonal per variable, with the surface flux as the lower
boundary condition. The solve is written for the increment δ = yⁿ⁺¹ − y*, i.e.
(I − Δt D_K) δ = Δt D_K y*: solving for yⁿ⁺¹ directly loses the gradient in float32
(θ ≈ 300 K cancels inside the solve's adjoint). The Coriolis turning of the wind about the
geostrophic wind is part of the same solve, trapezoidal and so neutral (``implicit_diffusion``).
"""

from __future__ import annotations

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from scm.diagnostics import boundary_layer_height
from scm.errors import ConfigurationError
from scm.forcing import Forcing, ForcingSeries
from scm.grid import ColumnGrid
from scm.levels import tridiagonal_solve
from scm.model import Model
from scm.parameterization import Tendency
from scm.state import NON_NEGATIVE_TRACERS, State, field_metadata

#: Physical bounds a column must stay within (inclusive); leaving them counts as failure.
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "u": (-150.0, 150.0),
    "v": (-150.0, 150.0),
    "thl": (150.0, 500.0),
    "qt": (-1.0e-3, 0.1),
    "tke": (0.0, 500.0),
    "qr": (-1.0e-6, 0.05),
}


class ColumnTerm(diffrax.AbstractTerm):
    """The column's vector field for diffrax: all tendencies, diffusion included explicitly.

    ``SemiImplicitEuler`` instead asks for the ``Tendency`` and treats diffusion implicitly;
    any explicit diffrax solver (Heun, Tsit5) can integrate ``vf`` as a small-step reference.
    """

    model: Model
    forcing: ForcingSeries

    def tendency(self, t, y: State) -> Tendency:
        return self.model.tendency(y, self.forcing.at(t))

    def vf(self, t, y: State, args) -> State:
        grid, forcing = self.model.grid, self.forcing.at(t)
        tendency = self.model.tendency(y, forcing)
        diffusive = tendency.diffusive_flux(y, grid)
        return (tendency.explicit_rate(grid) + jax.tree.map(grid.tendency_from_flux, diffusive)
                + coriolis_rate(y, forcing))

    def contr(self, t0, t1, **kwargs):
        return t1 - t0

    def prod(self, vf: State, control) -> State:
        return vf * control


def coriolis_rate(state: State, forcing: Forcing) -> State:
    """The Coriolis acceleration about the geostrophic wind (Holton 2004, eq. 5.1), zero on
    every other field: ∂u/∂t = f (v − v_g), ∂v/∂t = −f (u − u_g), i.e. ∂W/∂t = −i f (W − W_g)
    for W = u + i v. ``SemiImplicitEuler`` integrates it inside the implicit solve (see
    ``implicit_diffusion``); this explicit form serves explicit reference solvers."""
    f = forcing.coriolis_parameter
    return eqx.tree_at(lambda s: (s.u, s.v), state.zeros_like(),
                       (f * (state.v - forcing.geostrophic_v),
                        -f * (state.u - forcing.geostrophic_u)))


def implicit_diffusion(grid: ColumnGrid, state: State, diffusivity: State, dt,
                       coriolis: tuple[Forcing, State] | None = None) -> State:
    """Backward-Euler solve of ∂x/∂t = (1/ρ) ∂/∂z(ρ K ∂x/∂z) for every field at once.

    Nothing crosses the top. At the surface only the wind couples (to a ground value of zero);
    scalar surface fluxes enter explicitly through ``Tendency.flux``. The horizontal wind is
    one complex field W = u + i v diffused with the eddy viscosity ``diffusivity.u`` (u and v
    share it, see ``Tendency``). With ``coriolis = (forcing, start)`` the wind also turns
    about the geostrophic wind W_g at the Coriolis rate f, trapezoidally (Crank–Nicolson):

        (I − Δt D_K + i fΔt/2) Wⁿ⁺¹ = W* − i fΔt/2 (Wⁿ − 2 W_g),

    W* being ``state``'s wind (after the explicit tendencies) and Wⁿ ``start``'s. A pure
    inertial oscillation is multiplied by (1 − i fΔt/2)/(1 + i fΔt/2) per step, of modulus
    exactly one: neutral, where the explicit term would grow it by √(1 + (fΔt)²) per step
    (29 % a day at 75° latitude and Δt = 300 s). The Ekman balance D_K W = i f (W − W_g)
    stays the steady state whatever Δt.
    """
    fields, k = state.fields(), diffusivity.fields()
    wind = fields.pop("u") + 1j * fields.pop("v")
    systems = {"wind": (wind, k["u"])} | {name: (x, k[name]) for name, x in fields.items()}
    dz = grid.dz_interface
    lower, diag, upper, rhs = [], [], [], []
    for name, (y, k_name) in systems.items():
        # Nothing crosses the top; at the surface only the wind couples (to a zero wind).
        k_name = k_name.at[-1].set(0.0)
        if name != "wind":
            k_name = k_name.at[0].set(0.0)
        conductance = grid.rho_interface * k_name / dz
        below = dt * conductance[:-1] / grid.layer_mass
        above = dt * conductance[1:] / grid.layer_mass
        y_below = jnp.concatenate([jnp.zeros_like(y[:1]), y[:-1]])
        y_above = jnp.concatenate([y[1:], y[-1:]])
        lower.append(-below)
        diag.append(1.0 + below + above)
        upper.append(-above)
        rhs.append(below * (y_below - y) + above * (y_above - y))
    if coriolis is not None:
        forcing, start = coriolis
        turn = 0.5j * dt * forcing.coriolis_parameter
        geostrophic = forcing.geostrophic_u + 1j * forcing.geostrophic_v
        diag[0] = diag[0] + turn
        rhs[0] = rhs[0] - turn * (wind + start.u + 1j * start.v - 2.0 * geostrophic)
    delta = tridiagonal_solve(tuple(lower), tuple(diag), tuple(upper), tuple(rhs))
    wind = wind + delta[0]
    solved = {name: x + d for (name, x), d in zip(fields.items(), delta[1:], strict=True)}
    return State.from_fields({"u": wind.real, "v": wind.imag} | solved)


class SemiImplicitEuler(diffrax.AbstractSolver):
    """Explicit tendencies, then implicit vertical diffusion (first order in time)."""

    term_structure = ColumnTerm
    interpolation_cls = diffrax.LocalLinearInterpolation

    def order(self, terms):
        return 1

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms: ColumnTerm, t0, t1, y0: State, args, solver_state, made_jump):
        dt = t1 - t0
        grid = terms.model.grid
        forcing = terms.forcing.at(t0)
        tendency = terms.model.tendency(y0, forcing)
        provisional = y0 + tendency.explicit_rate(grid) * dt
        y1 = implicit_diffusion(grid, provisional, tendency.diffusivity, dt, (forcing, y0))
        y1 = State.from_fields(
            {n: jnp.maximum(x, 0.0) if n in NON_NEGATIVE_TRACERS else x
             for n, x in y1.fields().items()}
        )
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

    def func(self, terms: ColumnTerm, t0, y0, args):
        return terms.vf(t0, y0, args)


class Trajectory(eqx.Module):
    """Saved output of one column's rollout (a leading column axis when vmapped).

    ``state`` at centres and ``flux`` (total upward flux, explicit plus diffusive) on
    interfaces, each with a leading time axis; ``diagnostics`` time series from the schemes
    plus ``boundary_layer_height``. ``failed_at`` is the time (s) at which the column first
    became non-finite or left its physical bounds (``inf`` if never), ``failed_level`` the
    index of the first offending level (−1 if never); after failure the state is held at its
    last valid value.
    """

    time: Float[Array, " time"]
    state: State
    flux: State
    diagnostics: dict[str, Array]
    failed_at: Float[Array, ""]
    failed_level: Int[Array, ""]


def first_violation(state: State, bounds: dict[str, tuple[float, float]]) -> Int[Array, ""]:
    """Index of the lowest level that is non-finite or out of bounds, −1 if none."""
    bad = jnp.zeros(state.u.shape, bool)
    for name, x in state.fields().items():
        low, high = bounds.get(name, (-jnp.inf, jnp.inf))
        bad = bad | ~jnp.isfinite(x) | (x < low) | (x > high)
    return jnp.where(bad.any(), jnp.argmax(bad), -1).astype(jnp.int32)


def check_state(state: State, bounds: dict[str, tuple[float, float]] = DEFAULT_BOUNDS) -> None:
    """Raise ``ConfigurationError`` naming the field, level and allowed range if an initial
    state is non-finite or out of bounds. Eager (NumPy): call it before compiling."""
    for name, x in state.fields().items():
        values = np.asarray(x)
        low, high = bounds.get(name, (-np.inf, np.inf))
        bad = ~np.isfinite(values) | (values < low) | (values > high)
        if bad.any():
            index = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), values.shape))
            units = field_metadata(name)["units"]
            raise ConfigurationError(
                f"initial {name} = {float(values[index]):g} {units} at index {index} is "
                f"outside the allowed range [{low:g}, {high:g}] {units} (or not finite)"
            )


def check_time_step(model: Model, dt) -> None:
    """Raise ``ConfigurationError`` if a scheme of ``model`` integrates its own terms over a
    ``time_step`` (s) other than ``dt``: such schemes (the TKE closure, the local closure's
    predictor, the microphysics) are built for one step length and are silently wrong at
    another. Nothing is checked when ``dt`` is not known yet (traced under ``jit``)."""
    if isinstance(dt, jax.core.Tracer):
        return
    dt = float(np.asarray(dt))

    def with_step(node):
        return isinstance(node, eqx.Module) and getattr(node, "time_step", None) is not None

    for node in jax.tree.leaves(model, is_leaf=with_step):
        if with_step(node) and not math.isclose(node.time_step, dt, rel_tol=1.0e-6):
            raise ConfigurationError(
                f"{type(node).__name__} was built for time_step = {node.time_step:g} s but the "
                f"model steps dt = {dt:g} s; build it with time_step = {dt:g} s")


def check_rollout_arguments(model: Model, state0: State, t0, dt, n_steps: int,
                            save_every: int) -> None:
    """Raise ``ConfigurationError`` naming the argument, its value and what is allowed for a
    rollout that cannot be right: a step count that is not a whole multiple of the output
    interval, a state on another number of levels than the grid, a time or time step that is
    not finite (``dt`` > 0). Values traced under ``jit`` are not known and not checked."""
    for name, value, least in (("n_steps", n_steps, 0), ("save_every", save_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            raise ConfigurationError(f"{name} must be an integer >= {least} (got {value!r})")
    if n_steps % save_every:
        raise ConfigurationError(
            f"n_steps ({n_steps}) must be a multiple of save_every ({save_every})")
    levels = model.grid.n_levels
    for name, x in state0.fields().items():
        if jnp.shape(x)[-1:] != (levels,):
            raise ConfigurationError(f"state0.{name} has shape {jnp.shape(x)} but the grid has "
                                     f"{levels} levels (one column: shape ({levels},))")
    for name, value in (("t0", t0), ("dt", dt)):
        if isinstance(value, jax.core.Tracer):
            continue
        numbers = np.asarray(value, dtype=float).ravel()
        bad = ~np.isfinite(numbers) | ((numbers <= 0.0) if name == "dt" else False)
        if bad.any():
            allowed = "a finite number > 0 s" if name == "dt" else "a finite number of s"
            raise ConfigurationError(f"{name} must be {allowed} (got {numbers[bad][0]:g})")


def guarded_step(solver: SemiImplicitEuler, term: ColumnTerm, state: State, t, dt,
                 bounds: dict[str, tuple[float, float]], failed_at, failed_level):
    """One step from t to t + dt that records the first failure instead of propagating it.

    Returns (state, failed_at, failed_level): a column that becomes non-finite or leaves
    ``bounds`` keeps its last valid state from then on, and the time and lowest offending
    level of its first failure are kept (``failed_at`` is ``inf`` while it has not failed).
    """
    new, *_ = solver.step(term, t, t + dt, state, None, None, False)
    level = first_violation(new, bounds)
    already = jnp.isfinite(failed_at)
    newly = (level >= 0) & ~already
    state = jax.tree.map(lambda a, b: jnp.where(already | newly, a, b), state, new)
    failed_at = jnp.where(newly, t + dt, failed_at)
    failed_level = jnp.where(newly, level, failed_level)
    return state, failed_at, failed_level


#: Loops of at most this many steps store every step's carry for reverse mode (the fastest
#: gradient, n carries of memory); longer ones store about 2√n (one forward pass more).
EVERY_CARRY_UP_TO = 100


def checkpointed_steps(step, carry, n: int, chunk: int | None = None):
    """Apply ``step`` n times, checkpointed so that reverse mode stores carries, never the
    steps' residuals.

    Every step is checkpointed on its own: its residuals (intermediate values, here about 16×
    its carry) are rebuilt from its input carry just before its adjoint runs, and dropped
    after it. With ``chunk`` = 1 the forward pass stores every step's input carry: the
    gradient costs one forward pass plus one forward-and-adjoint per step, and n carries of
    memory. With longer chunks (default ≈ √n) only each chunk's first carry is stored, and
    the backward pass first re-runs a chunk to store its carries: one forward pass more, for
    n/chunk + chunk carries of memory (least at √n). By default (``chunk=None``) loops of
    up to ``EVERY_CARRY_UP_TO`` steps store every carry and longer ones use chunks of √n.

    Why per step: the alternative, stacking a whole chunk's residuals in the forward pass and
    reading them back in the adjoint, moves those residuals through memory twice; for 128
    GABLS1 columns on one core it made the 200-step gradient 5.3 ms per step, against 3.8 ms
    with per-step checkpoints in chunks of 14 and 3.0 ms with every carry stored.

    The chunk is a divisor of n near the target, so the step is traced and compiled once; when
    n has none (a prime, say), chunks of the target length plus a remainder are used instead.
    """
    if chunk is None:
        chunk = 1 if n <= EVERY_CARRY_UP_TO else math.isqrt(n)
    target = max(1, min(n, int(chunk)))
    inner = max(d for d in range(1, target + 1) if n % d == 0)
    if 2 * inner < target:
        inner = target
    outer, remainder = divmod(n, inner)
    step = jax.checkpoint(step)

    def repeat(c, length):
        return jax.lax.scan(lambda c, _: (step(c), None), c, None, length=length)[0]

    if inner > 1:  # otherwise the outer loop's carries are every step's already
        repeat_chunk = jax.checkpoint(lambda c, _: (repeat(c, inner), None))
    else:
        repeat_chunk = lambda c, _: (step(c), None)  # noqa: E731
    carry = jax.lax.scan(repeat_chunk, carry, None, length=outer)[0]
    return repeat(carry, remainder) if remainder else carry


def rollout(
    model: Model,
    state0: State,
    forcing: ForcingSeries,
    t0,
    dt,
    n_steps: int,
    save_every: int = 1,
    bounds: dict[str, tuple[float, float]] = DEFAULT_BOUNDS,
    failed_at=jnp.inf,
    failed_level=-1,
) -> Trajectory:
    """Integrate one column for ``n_steps`` steps of ``dt`` seconds, saving every ``save_every``.

    The saved times are t0 and every ``save_every`` steps after it (``n_steps`` must be a
    multiple of ``save_every``); ``dt`` must be the ``time_step`` of every scheme that has one
    (``check_time_step``). Batch over columns with ``jax.vmap``. To continue an earlier
    rollout, pass its last state and its ``failed_at``/``failed_level``: a column that has
    already failed stays held.
    """
    check_rollout_arguments(model, state0, t0, dt, n_steps, save_every)
    check_time_step(model, dt)
    solver, term, grid = SemiImplicitEuler(), ColumnTerm(model, forcing), model.grid
    dtype = state0.u.dtype
    t0 = jnp.asarray(t0, dtype)
    dt = jnp.asarray(dt, dtype)

    def step(carry):
        state, k, failed_at, failed_level = carry
        state, failed_at, failed_level = guarded_step(
            solver, term, state, t0 + k * dt, dt, bounds, failed_at, failed_level)
        return state, k + 1, failed_at, failed_level

    def save(state, k):
        t = t0 + k * dt
        tendency = term.tendency(t, state)
        flux = tendency.total_flux(state, grid)
        diagnostics = dict(tendency.diagnostics)
        diagnostics["boundary_layer_height"] = boundary_layer_height(grid, flux.u, flux.v)
        return t, state, flux, diagnostics

    def save_interval(carry, _):
        carry = checkpointed_steps(step, carry, save_every)
        return carry, save(carry[0], carry[1])

    carry0 = (state0, jnp.asarray(0, jnp.int32), jnp.asarray(failed_at, dtype),
              jnp.asarray(failed_level, jnp.int32))
    carry, saved = jax.lax.scan(save_interval, carry0, None, length=n_steps // save_every)
    first = save(state0, carry0[1])
    time, state, flux, diagnostics = jax.tree.map(
        lambda a, b: jnp.concatenate([a[None], b]), first, saved
    )
    return Trajectory(time, state, flux, diagnostics, carry[2], carry[3])
