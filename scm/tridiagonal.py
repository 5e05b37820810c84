"""Tridiagonal solve (Thomas algorithm) with a hand-written adjoint.

The forward sweep is a ``lax.scan`` over levels with every other axis vectorized, which on
CPU beats ``lax.linalg.tridiagonal_solve`` by an order of magnitude for many columns. The
adjoint of ``x = A⁻¹ b`` is one solve with Aᵀ (λ = A⁻ᵀ x̄, b̄ = λ, Ā = −λ xᵀ on the three
diagonals), which is far cheaper than differentiating through the scan.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def _thomas(lower, diag, upper, rhs):
    """Solve along axis 0: ``lower[k] x[k-1] + diag[k] x[k] + upper[k] x[k+1] = rhs[k]``."""

    def forward(carry, row):
        c_prev, d_prev = carry
        a, b, c, d = row
        denom = b - a * c_prev
        c_new = c / denom
        d_new = (d - a * d_prev) / denom
        return (c_new, d_new), (c_new, d_new)

    zero = jnp.zeros_like(rhs[0])
    _, (c, d) = jax.lax.scan(forward, (zero, zero), (lower, diag, upper, rhs))

    def backward(x_next, row):
        c_k, d_k = row
        x = d_k - c_k * x_next
        return x, x

    _, x = jax.lax.scan(backward, zero, (c, d), reverse=True)
    return x


@jax.custom_vjp
def tridiagonal_solve(
    lower: Float[Array, " z *batch"],
    diag: Float[Array, " z *batch"],
    upper: Float[Array, " z *batch"],
    rhs: Float[Array, " z *batch"],
) -> Float[Array, " z *batch"]:
    """Solve tridiagonal systems along axis 0 (``lower[0]`` and ``upper[-1]`` are ignored)."""
    return _thomas(lower, diag, upper, rhs)


def _solve_fwd(lower, diag, upper, rhs):
    x = _thomas(lower, diag, upper, rhs)
    return x, (lower, diag, upper, x)


def _solve_bwd(residuals, x_bar):
    lower, diag, upper, x = residuals
    zero = jnp.zeros_like(x[:1])
    # Aᵀ has A's upper diagonal below and its lower diagonal above.
    lower_t = jnp.concatenate([zero, upper[:-1]])
    upper_t = jnp.concatenate([lower[1:], zero])
    lam = _thomas(lower_t, diag, upper_t, x_bar)
    x_below = jnp.concatenate([zero, x[:-1]])
    x_above = jnp.concatenate([x[1:], zero])
    return -lam * x_below, -lam * x, -lam * x_above, lam


tridiagonal_solve.defvjp(_solve_fwd, _solve_bwd)
