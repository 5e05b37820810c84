"""The cheaper forms of the slow elementary functions (``scm.fastmath``) against the forms
they replace: values to a few float32 ulp over many decades, float64 to round-off, and their
derivatives."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scm import fastmath

POSITIVE = np.concatenate([np.geomspace(1.0e-12, 1.0e6, 20001), np.linspace(0.0, 10.0, 10001)])

#: (cheap form, old form, arguments, largest error in float32 ulp of the exact value)
CASES = {
    "fourth_root": (fastmath.fourth_root, lambda x: x**0.25, POSITIVE, 1.0),
    "inverse_fourth_root": (fastmath.inverse_fourth_root, lambda x: x**-0.25,
                            POSITIVE[POSITIVE > 0], 2.0),
    "three_halves_power": (fastmath.three_halves_power, lambda x: x**1.5, POSITIVE, 1.5),
    "cube_root": (fastmath.cube_root, lambda x: x ** (1.0 / 3.0), POSITIVE, 1.0),
    "arctan": (fastmath.arctan, jnp.arctan, np.concatenate([-POSITIVE, POSITIVE]), 3.0),
}


@pytest.mark.parametrize("name", CASES)
def test_cheap_forms_equal_the_old_ones(name):
    cheap, old, x, ulps = CASES[name]
    x = x.astype(np.float32).astype(np.float64)  # arguments that float32 holds exactly
    exact = np.asarray(old(x))  # float64
    got32 = np.asarray(jax.jit(cheap)(jnp.asarray(x, jnp.float32)), np.float64)
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got32 - exact) / spacing) <= ulps
    np.testing.assert_allclose(jax.jit(cheap)(jnp.asarray(x)), exact, rtol=1e-15, atol=0.0)


@pytest.mark.parametrize("name", CASES)
def test_cheap_forms_have_the_old_derivatives(name):
    cheap, old, x, _ = CASES[name]
    x = x[(np.abs(x) > 1.0e-6) & (np.abs(x) < 1.0e5)]
    for dtype, rtol in ((jnp.float64, 1e-14), (jnp.float32, 2e-6)):
        args = jnp.asarray(x, dtype)
        got = jax.jit(jax.vmap(jax.grad(cheap)))(args)
        want = jax.vmap(jax.grad(old))(jnp.asarray(x))
        np.testing.assert_allclose(got, want, rtol=rtol)


def test_cube_root_of_zero():
    assert float(fastmath.cube_root(jnp.asarray(0.0, jnp.float32))) == 0.0
    assert float(fastmath.cube_root(0.0)) == 0.0
