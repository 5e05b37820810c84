"""Level primitives: the vertical loops of every scheme, written for one column.

Schemes are written for one column and batched with ``jax.vmap``; their loops over levels
go through the two primitives here, so that the batched kernel behind each loop is chosen in
one place for every scheme (today the XLA path on every backend):

- ``tridiagonal_solve``: the implicit vertical solves (Thomas algorithm);
- ``recurrence``: any other loop over levels or iterations, upward or downward, with the
  contract of ``jax.lax.scan`` (the updraft plume, sedimentation, the surface-layer
  iteration).

Tridiagonal solve. The sweep is a ``lax.scan`` over levels; several systems (one per
prognostic variable) travel through the same scan as a tuple, so under ``vmap`` each step of
the scan works on contiguous ``(columns,)`` vectors. The solve has a custom JVP: its
derivative with respect to the right-hand side and to the matrix is one more solve,
ẋ = A⁻¹ (ḃ − Ȧ x), written as ``lax.custom_linear_solve`` so that reverse mode transposes it
into a solve with Aᵀ (λ = A⁻ᵀ x̄ and Ā = −λ xᵀ on the three diagonals), not autodiff through
the scan; forward mode (``jax.jvp``, ``jax.jacfwd``) works too.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

Systems = tuple[Float[Array, " z"], ...]


def _shift_down(x):
    """x[k − 1] at level k (zero below the first level)."""
    return jnp.concatenate([jnp.zeros_like(x[:1]), x[:-1]])


def _shift_up(x):
    """x[k + 1] at level k (zero above the last level)."""
    return jnp.concatenate([x[1:], jnp.zeros_like(x[:1])])


def _thomas(lower: Systems, diag: Systems, upper: Systems, rhs: Systems) -> Systems:
    """Solve ``lower[k] x[k-1] + diag[k] x[k] + upper[k] x[k+1] = rhs[k]`` for each system."""

    def forward(carry, row):
        new = []
        for (c_prev, d_prev), a, b, c, d in zip(carry, *row, strict=True):
            inverse = 1.0 / (b - a * c_prev)
            new.append((c * inverse, (d - a * d_prev) * inverse))
        return tuple(new), tuple(new)

    zeros = tuple((jnp.zeros_like(r[0]), jnp.zeros_like(r[0])) for r in rhs)
    _, factors = jax.lax.scan(forward, zeros, (lower, diag, upper, rhs))

    def backward(x_next, row):
        x = tuple(d - c * xn for xn, (c, d) in zip(x_next, row, strict=True))
        return x, x

    _, x = jax.lax.scan(backward, tuple(z for z, _ in zeros), factors, reverse=True)
    return x


def tridiagonal_solve(lower, diag, upper, rhs):
    """Solve tridiagonal systems along axis 0 (``lower[0]`` and ``upper[-1]`` are ignored).

    Each argument is an array with the level axis first, or a tuple of such arrays (one
    system per entry, solved in one sweep); the result has the structure of ``rhs``.
    """
    if not isinstance(rhs, tuple):
        return tridiagonal_solve((lower,), (diag,), (upper,), (rhs,))[0]
    lower = tuple(jnp.asarray(a).at[0].set(0.0) for a in lower)
    upper = tuple(jnp.asarray(c).at[-1].set(0.0) for c in upper)
    return _solve(lower, tuple(diag), upper, tuple(rhs))


def _matvec(lower, diag, upper, x):
    return tuple(b * xi + a * _shift_down(xi) + c * _shift_up(xi)
                 for a, b, c, xi in zip(lower, diag, upper, x, strict=True))


@jax.custom_jvp
def _solve(lower, diag, upper, rhs):
    return _thomas(lower, diag, upper, rhs)


@_solve.defjvp
def _solve_jvp(primals, tangents):
    """ẋ = A⁻¹ (ḃ − Ȧ x): one more solve, linear in the tangents, so reverse mode transposes
    it into a solve with Aᵀ (``lax.custom_linear_solve``) instead of differentiating the
    sweep. (A ``custom_jvp`` around the linear solve, rather than ``custom_linear_solve``
    alone, also accepts systems whose tangents are partly zero.)"""
    lower, diag, upper, rhs = primals
    x = _thomas(lower, diag, upper, rhs)
    rhs_dot = tuple(r - ax for r, ax in zip(tangents[3], _matvec(*tangents[:3], x),
                                           strict=True))

    def solve(_, b):
        return _thomas(lower, diag, upper, b)

    def transpose_solve(_, b):
        # Aᵀ has A's upper diagonal below the main one and its lower diagonal above.
        return _thomas(tuple(map(_shift_down, upper)), diag, tuple(map(_shift_up, lower)), b)

    x_dot = jax.lax.custom_linear_solve(lambda v: _matvec(lower, diag, upper, v), rhs_dot,
                                        solve, transpose_solve)
    return x, x_dot


def recurrence(step: Callable, init, xs=None, length: int | None = None, reverse: bool = False):
    """``carry, ys = recurrence(step, init, xs)``: ``step(carry, x) -> (carry, y)`` applied
    level by level along the leading axis of ``xs`` (bottom to top; top to bottom with
    ``reverse``), or ``length`` times without inputs; the ``ys`` are stacked. The contract
    of ``jax.lax.scan``, and its derivatives (forward and reverse mode)."""
    return jax.lax.scan(step, init, xs, length=length, reverse=reverse)
