"""Level primitives: the vertical loops of every scheme, written for one column.

Schemes are written for one column and batched with ``jax.vmap``; every loop over levels (or
over iterations) goes through one of the two loop primitives here, so that the batched kernel
behind each loop is chosen in one place for every scheme:

- ``tridiagonal_solve``: the implicit vertical solves (Thomas algorithm);
- ``recurrence``: any other loop over levels or iterations, upward or downward, with the
  contract of ``jax.lax.scan`` (the updraft plume, sedimentation, cloud overlap, the
  surface-layer iteration).

**Batching.** Called for one column, a loop is a plain ``lax.scan``. Under ``vmap`` a batching
rule (``jax.custom_batching.custom_vmap``) receives the whole (columns, levels) problem and
runs a batched kernel chosen for the backend when the program is lowered
(``jax.lax.platform_dependent``, staged out where the process has an NVIDIA GPU):

- the XLA kernel (the reference, and the kernel on the CPU and every other backend): one
  ``lax.scan`` over levels whose body is the author's step function vmapped over the
  columns, the columns last, so that every number of a level is one contiguous vector; the
  solve's systems are stacked on one more axis and both sweeps run on whole stacks;
- on NVIDIA GPUs, a Pallas kernel (Triton; ``_scan_pallas``): one kernel per loop (per sweep
  for the solve), each program instance owning a block of columns and stepping through the
  levels with the carry in registers, the author's step function unchanged inside it. The
  tests run it with ``interpret=True`` on the CPU against the XLA kernel (``use_kernel``)
  and lower it for CUDA, which the Triton lowering allows without a GPU.

**Derivatives** are by rule, forward and reverse mode, never by differentiating a kernel
(Pallas kernels have no transpose rule):

- the solve: ẋ = A⁻¹ (ḃ − Ȧ x) is one more solve, written as ``lax.custom_linear_solve`` so
  that reverse mode transposes it into a solve with Aᵀ (λ = A⁻ᵀ x̄, Ā = −λ xᵀ on the three
  diagonals);
- the recurrence: its tangent is the recurrence of the step's JVP along the stored carries
  (forward mode), and its adjoint the reverse recurrence of the step's VJP (reverse mode: the
  step's residuals are rebuilt level by level from the stored carries, so its memory is the
  carries alone). Both are first derivatives; the pair is tied together as a linear map with
  a custom transpose (``lax.custom_linear_solve`` with an identity operator), so that JAX's
  own transposition picks the adjoint kernel. Inputs that nothing differentiates (a
  bisection's bracket, under ``stop_gradient``) get no tangent or adjoint loop at all.

**Loops that stop** (``recurrence(..., active=)``, the updraft plume): a level is stepped only
while the carry entering it is active, and a batched loop is a ``while`` loop that ends at the
last level some column steps, its tangent and adjoint loops stepping only the levels the
primal loop stepped; where no column steps at all (no plume anywhere, as in every stable
column) the XLA kernel returns at once, without moving inputs and outputs between layouts.
The Pallas kernel steps every level under the same guard (the same results).

**Work that no column of a batch needs** (``any_column``): ``lax.cond`` on a per-column
flag runs both branches for every column once batched; on ``any_column(flag)`` it stays a
branch, taken for the whole batch when the flag holds in some column of it (the updraft's
plume, skipped wherever every column of a batch is stably stratified).

Every kernel runs the same step functions, so the backends differ by round-off only (the
XLA kernels give the results of a plain ``lax.scan`` under ``vmap`` bit for bit, measured).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
from jaxtyping import Array, Float

Systems = tuple[Float[Array, " z"], ...]

#: Columns per Pallas program instance (fewer when there are fewer columns).
PALLAS_BLOCK = 128

# A kernel forced for every loop traced from now on (``use_kernel``); None: chosen per backend.
_forced_kernel: str | None = None


@contextlib.contextmanager
def use_kernel(name: str | None):
    """Trace every batched loop inside the block with the kernel ``name``: ``"xla"``,
    ``"pallas"`` or ``"pallas_interpret"`` (the Pallas kernel run by the interpreter, which
    works on any backend: how the tests check it on the CPU); ``None`` chooses per backend.
    It acts when a function is traced, so use it around tracing (a fresh ``jit``)."""
    if name not in (None, "xla", "pallas", "pallas_interpret"):
        raise ValueError(f"unknown level kernel {name!r}")
    global _forced_kernel
    previous, _forced_kernel = _forced_kernel, name
    try:
        yield
    finally:
        _forced_kernel = previous


# ---------------------------------------------------------------------------------------------
# work that no column of a batch needs


@jax.custom_batching.custom_vmap
def any_column(flag):
    """``flag`` of one column; under ``vmap``, whether it holds in any column of the batch
    (one unbatched boolean). As the predicate of ``lax.cond`` it skips, for a whole batch,
    work that no column of it needs: ``lax.cond(any_column(rises), plume, no_plume)`` stays
    a branch when batched, where ``lax.cond(rises, ...)`` would run both branches for every
    column and select. The taken branch then runs for every column of the batch, so the
    work it guards must give, in a column whose flag is false, what the other branch gives
    (the plume of a column that does not rise is no plume)."""
    return flag


@any_column.def_vmap
def _any_column_rule(axis_size, in_batched, flag):
    return (jnp.any(flag) if in_batched[0] else flag), False


# ---------------------------------------------------------------------------------------------
# recurrence


def recurrence(step: Callable, init, xs=None, length: int | None = None, reverse: bool = False,
               active: Callable | None = None):
    """``carry, ys = recurrence(step, init, xs)``: ``step(carry, x) -> (carry, y)`` applied
    level by level along the leading axis of ``xs`` (bottom to top; top to bottom with
    ``reverse``), or ``length`` times without inputs; the ``ys`` are stacked. The contract
    of ``jax.lax.scan``, with first derivatives in forward and reverse mode by rule (module
    docstring); ``step`` may close over arrays and tracers (they become inputs).

    ``active(carry) -> bool`` (a function of the carry alone) makes a loop that can stop, such
    as a plume that has run out of buoyancy: ``step`` is applied only while the carry entering
    a level is active; from the first level where it is not, the carry is kept and that
    level's outputs and every later level's are zero. Under ``vmap`` the batched loop (and
    its tangent and adjoint loops) then ends at the last level where some column is still
    active, instead of stepping every level for columns that have all stopped."""
    init = jax.tree.map(jnp.asarray, init)
    xs = jax.tree.map(jnp.asarray, xs)
    leaves = jax.tree.leaves(xs)
    if length is None:
        if not leaves:
            raise ValueError("recurrence needs xs or a length")
        length = leaves[0].shape[0]
    x = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), xs)
    fn, consts = _explicit(step, init, x)
    if active is not None:
        active = _carry_predicate(active, init)
    return _differentiable_scan(fn, int(length), bool(reverse), active)(consts, init, xs)


def _carry_predicate(active: Callable, init) -> Callable:
    """``active`` checked to be a boolean of the carry alone (closed-over tracers would be
    invisible to the batching rules), evaluated from its jaxpr."""
    closed, out = jax.make_jaxpr(active, return_shape=True)(init)
    if out.shape != () or out.dtype != jnp.bool_:
        raise TypeError(f"recurrence: active must return one boolean; got {out}")
    if any(isinstance(c, jax.core.Tracer) for c in closed.consts):
        raise TypeError("recurrence: active must be a function of the carry alone (it closes "
                        "over a traced value; carry that value instead)")

    def predicate(carry):
        return jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *jax.tree.leaves(carry))[0]

    return predicate


def _explicit(step, init, x):
    """``step`` as ``fn(consts, carry, x)`` with everything it closes over as ``consts``.

    Batching rules must see every batched value as an input, and closed-over tracers of
    any type (integers too) would be invisible to them: the step is traced once and then
    evaluated from its jaxpr, which is also cheaper than tracing the Python again."""
    closed, out_shape = jax.make_jaxpr(step, return_shape=True)(init, x)
    carry_shape = jax.tree.map(lambda a: (a.shape, a.dtype), out_shape[0])
    if carry_shape != jax.tree.map(lambda a: (a.shape, a.dtype), init):
        raise TypeError("recurrence: the step must return a carry of the structure, shapes and "
                        f"dtypes of init; got {carry_shape} for {init}")
    jaxpr, out_tree = closed.jaxpr, jax.tree.structure(out_shape)

    def fn(consts, carry, x):
        out = jax.core.eval_jaxpr(jaxpr, consts, *jax.tree.leaves((carry, x)))
        return jax.tree.unflatten(out_tree, out)

    return fn, list(closed.consts)


def _differentiable_scan(fn, length: int, reverse: bool, active: Callable | None):
    """The scan of ``fn`` with its derivative rule (a ``custom_jvp`` of its arrays)."""

    @jax.custom_jvp
    def run(consts, init, xs):
        return _scan(fn, length, reverse, consts, init, xs, active=active)[:2]

    def run_jvp(primals, tangents):
        consts, init, xs = primals
        args = (consts, init, xs)
        # inputs with a tangent: inexact, and not a symbolic zero (what JAX passes for an
        # input that nothing differentiates, such as a bracket under stop_gradient); the
        # carry's tangent evolves from the inputs', so every inexact carry number has one
        zero = lambda t: isinstance(t, SymbolicZero)  # noqa: E731
        perturbed = [[not zero(t) for t in jax.tree.leaves(tree, is_leaf=zero)]
                     for tree in tangents]
        inexact = _differentiable(args)
        diff_in = ([d and p for d, p in zip(inexact[0], perturbed[0], strict=True)], inexact[1],
                   [d and p for d, p in zip(inexact[2], perturbed[2], strict=True)])
        if not any(perturbed[0] + perturbed[1] + perturbed[2]):
            outs = run(*primals)
            return outs, jax.tree.map(SymbolicZero.from_primal_value, outs)
        tangents = jax.tree.map(lambda t: np.zeros(t.aval.shape, t.aval.dtype) if zero(t)
                                else t, tangents, is_leaf=zero)

        def with_history(k, c, x):  # the carry entering each level, for the derivatives
            new, y = fn(k, c, x)
            return new, (y, c)

        # the tangent and adjoint loops step the levels the primal loop stepped, no others
        carry, (ys, history), stepped = _scan(with_history, length, reverse, consts, init, xs,
                                              active=active)
        along, against = ((None, None) if active is None else
                          ((stepped, True), (stepped, False)))
        outs = (carry, ys)
        diff_out = _differentiable(outs)

        def tangent_map(dk, dc, dxs):
            def tangent_step(k, dc, level):
                c, x, dx = level
                primal = (k[0], c, x)
                tangent = _with_zeros(primal, diff_in, (k[1], dc, dx))
                _, out_dot = jax.jvp(fn, primal, tangent)
                return _select(out_dot, diff_out)

            return _scan(tangent_step, length, reverse, (consts, dk), dc, (history, xs, dxs),
                         limit=along)[:2]

        def adjoint_map(gcarry, gys):
            # each level's pullback is rebuilt from the stored carry: storing the pullbacks'
            # residuals instead made the gradient of a GABLS1 rollout 20 % slower on the CPU
            def adjoint_step(k, carry, level):
                gc, gk = carry
                c, x, gy = level

                def restricted(dk, dc, dx):  # fn of its perturbed inputs only
                    full = _merge((k, c, x), diff_in, (dk, dc, dx))
                    return _select(fn(*full), diff_out)

                _, vjp = jax.vjp(restricted, *_select((k, c, x), diff_in))
                dk, dc, dx = vjp((gc, gy))
                return (dc, jax.tree.map(jnp.add, gk, dk)), dx

            gk0 = _zeros_like(_select((consts,), diff_in[:1])[0])
            (gc0, gk), gxs, _ = _scan(adjoint_step, length, not reverse, consts,
                                      (gcarry, gk0), (history, xs, gys), limit=against)
            return gk, gc0, gxs

        # tangent_map and adjoint_map are transposes of each other. lax.custom_linear_solve
        # with the identity as its operator applies the first and transposes into the
        # second; it takes one space for both sides and a right-hand side that is all
        # tangent, so inputs and outputs travel as one flat vector, [inputs, outputs].
        d_ins = _select(tangents, diff_in)  # the perturbed ones only
        ins, outs_flat = _Flat(d_ins), _Flat(_select(outs, diff_out))
        dtype = jnp.result_type(ins.dtype, outs_flat.dtype)

        def forward(_, v):
            d_outs = tangent_map(*ins.unravel(v[:ins.size]))
            return jnp.concatenate([jnp.zeros(ins.size, dtype), outs_flat.ravel(d_outs, dtype)])

        def backward(_, v):
            d_ins = adjoint_map(*outs_flat.unravel(v[ins.size:]))
            return jnp.concatenate([ins.ravel(d_ins, dtype), jnp.zeros(outs_flat.size, dtype)])

        b = jnp.concatenate([ins.ravel(d_ins, dtype), jnp.zeros(outs_flat.size, dtype)])
        v = jax.lax.custom_linear_solve(lambda v: v, b, forward, backward)
        return outs, _with_zeros(outs, diff_out, outs_flat.unravel(v[ins.size:]))

    run.defjvp(run_jvp, symbolic_zeros=True)
    return run


def _differentiable(trees):
    """Per top-level entry of ``trees``, which of its leaves carry derivatives (the inexact
    ones; integer and boolean leaves have none)."""
    return tuple([jnp.issubdtype(jnp.result_type(a), jnp.inexact) for a in jax.tree.leaves(t)]
                 for t in trees)


def _select(trees, mask):
    """Per top-level entry of ``trees``, the list of its leaves where ``mask`` is true."""
    return tuple([a for a, m in zip(jax.tree.leaves(t), ms, strict=True) if m]
                 for t, ms in zip(trees, mask, strict=True))


def _fill(trees, mask, selected, other):
    """``trees`` with the leaves where ``mask`` is true taken from ``selected`` (lists, as
    ``_select`` gives them) and the others replaced by ``other(leaf)``."""
    out = []
    for tree, ms, chosen in zip(trees, mask, selected, strict=True):
        leaves, treedef = jax.tree.flatten(tree)
        chosen = iter(chosen)
        out.append(jax.tree.unflatten(treedef, [next(chosen) if m else other(a)
                                                for a, m in zip(leaves, ms, strict=True)]))
    return tuple(out)


def _merge(trees, mask, selected):
    return _fill(trees, mask, selected, lambda a: a)


def _with_zeros(trees, mask, selected):
    """Tangents of ``trees``: ``selected`` where ``mask`` is true, zeros elsewhere (float0
    for integers and booleans)."""
    def zero(a):
        if jnp.issubdtype(jnp.result_type(a), jnp.inexact):
            return jnp.zeros_like(a)
        return np.zeros(np.shape(a), jax.dtypes.float0)

    return _fill(trees, mask, selected, zero)


def _zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


class _Flat:
    """A pytree of arrays as one flat vector (``ravel``) and back (``unravel``)."""

    def __init__(self, tree):
        leaves, self.tree = jax.tree.flatten(tree)
        self.shapes = [jnp.shape(a) for a in leaves]
        self.dtypes = [jnp.result_type(a) for a in leaves]
        self.size = sum(int(np.prod(s)) for s in self.shapes)
        self.dtype = jnp.result_type(*self.dtypes) if leaves else jnp.float32

    def ravel(self, tree, dtype):
        leaves = [jnp.ravel(a).astype(dtype) for a in jax.tree.leaves(tree)]
        return jnp.concatenate(leaves) if leaves else jnp.zeros(0, dtype)

    def unravel(self, vector):
        leaves, start = [], 0
        for shape, dtype in zip(self.shapes, self.dtypes, strict=True):
            n = int(np.prod(shape))
            part = vector[start:start + n]
            part = part if jnp.issubdtype(dtype, jnp.complexfloating) else jnp.real(part)
            leaves.append(jnp.reshape(part, shape).astype(dtype))
            start += n
        return jax.tree.unflatten(self.tree, leaves)


# ---------------------------------------------------------------------------------------------
# the batched scan and its kernels


def _scan(fn, length: int, reverse: bool, consts, init, xs, active=None, limit=None):
    """``lax.scan(fn(consts, ·, ·), init, xs)`` for one column; under ``vmap``, the batched
    kernel of the backend on the whole (columns, levels) problem. Returns (carry, ys, number
    of levels stepped).

    With ``active`` (a predicate of the carry, see ``recurrence``) a level is stepped only
    while the carry entering it is active. With ``limit = (stepped, along)`` only the first
    ``stepped`` levels of an earlier loop with ``active`` are stepped, by a loop that runs
    ``along`` that loop's direction (its tangent) or against it (its adjoint). A level not
    stepped keeps the carry and has zero outputs; the XLA kernel skips the levels that no
    column steps."""
    if active is None and limit is None:
        guarded, count = fn, None
    else:
        # each level's position in the order of the loop that decided which levels to step
        first_reverse = reverse if active is not None or limit[1] else not reverse
        positions = np.arange(length, dtype=np.int32)
        positions = positions[::-1].copy() if first_reverse else positions
        count = jnp.zeros((), jnp.int32) if limit is None else limit[0]

        def guarded(k, c, x):
            (k, bound), (c, n), (x, position) = k, c, x
            on = active(c) if active is not None else position < bound
            new, y = fn(k, c, x)
            new = jax.tree.map(lambda a, b: jnp.where(on, a, b), new, c)
            y = jax.tree.map(lambda a: jnp.where(on, a, jnp.zeros_like(a)), y)
            return (new, n + on.astype(jnp.int32)), y

        consts, init, xs = (consts, count), (init, jnp.zeros((), jnp.int32)), (xs, positions)

    @jax.custom_batching.custom_vmap
    def run(consts, init, xs):
        return jax.lax.scan(functools.partial(guarded, consts), init, xs, length=length,
                            reverse=reverse)

    @run.def_vmap
    def rule(axis_size, in_batched, consts, init, xs):
        consts_batched, init_batched, xs_batched = in_batched
        init = jax.tree.map(lambda a, b: a if b else jnp.broadcast_to(a, (axis_size, *a.shape)),
                            init, init_batched)
        skip = None if count is None else (active, first_reverse)
        kernel = functools.partial(_xla_kernel, guarded, length, reverse, consts_batched,
                                   xs_batched, skip)
        pallas = functools.partial(_scan_pallas, guarded, length, reverse, consts_batched,
                                   xs_batched)
        out = _choose(kernel, pallas, consts, init, xs)
        return out, jax.tree.map(lambda _: True, out)

    carry, ys = run(consts, init, xs)
    return (carry, ys, None) if count is None else (carry[0], ys, carry[1])


def _choose(xla: Callable, pallas: Callable, *args):
    """``xla(*args)`` or ``pallas(*args, interpret=...)``: the kernel of the backend the
    program is lowered for (NVIDIA GPUs: Pallas), unless ``use_kernel`` forces one. The
    Pallas kernel is staged out only in a process with an NVIDIA GPU: tracing it as well
    made tracing a GABLS1 rollout's gradient take half as long again (21 against 14 s)."""
    if _forced_kernel == "xla":
        return xla(*args)
    if _forced_kernel is not None:
        return pallas(*args, interpret=_forced_kernel == "pallas_interpret")
    if not _has_cuda():
        return xla(*args)
    return jax.lax.platform_dependent(*args, cuda=functools.partial(pallas, interpret=False),
                                      default=xla)


@functools.cache
def _has_cuda() -> bool:
    try:
        return bool(jax.devices("cuda"))
    except RuntimeError:
        return False


def _scan_xla(fn, length, reverse, consts_batched, xs_batched, skip, consts, init, xs):
    """The XLA kernel: a scan over levels whose body is ``fn`` vmapped over the columns.

    ``init`` has the columns first and ``xs`` (batched leaves) are ``(columns, levels,
    ...)``; inside, the levels go first and the columns last, so that every number of a
    level is one contiguous vector over the columns. With ``skip = (active, first_reverse)``
    (a guarded loop of ``_scan``) it is a while loop over the levels that some column steps
    (``_while_stepped``)."""
    axes = jax.tree.map(lambda b: -1 if b else None, (consts_batched, xs_batched))
    consts = jax.tree.map(lambda a, b: jnp.moveaxis(a, 0, -1) if b else a, consts,
                          consts_batched)
    step = functools.partial(jax.vmap(fn, in_axes=(axes[0], -1, axes[1]), out_axes=-1), consts)
    xs = jax.tree.map(lambda a, b: jnp.moveaxis(jnp.moveaxis(a, 1, 0), 1, -1) if b else a,
                      xs, xs_batched)
    carry = jax.tree.map(lambda a: jnp.moveaxis(a, 0, -1), init)
    if skip is None:
        carry, ys = jax.lax.scan(step, carry, xs, length=length, reverse=reverse)
    else:
        carry, ys = _while_stepped(step, length, reverse, *skip, consts[1], carry, xs)
    return (jax.tree.map(lambda a: jnp.moveaxis(a, -1, 0), carry),
            jax.tree.map(lambda a: jnp.moveaxis(a, -1, 0), ys))


def _xla_kernel(fn, length, reverse, consts_batched, xs_batched, skip, consts, init, xs):
    """``_scan_xla``, except that a guarded loop no column steps at all (no plume anywhere)
    returns at once, without moving its inputs and outputs between the layouts (which costs
    as much as stepping half the levels)."""
    kernel = functools.partial(_scan_xla, fn, length, reverse, consts_batched, xs_batched,
                               skip, consts)
    if skip is None:
        return kernel(init, xs)
    active, _ = skip
    if active is not None:
        some = jnp.any(jax.vmap(active)(init[0]))
    else:
        some = jnp.max(consts[1]) > 0
    out_shape = jax.eval_shape(kernel, init, xs)

    def nothing(init, xs):
        return init, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), out_shape[1])

    return jax.lax.cond(some, kernel, nothing, init, xs)


def _while_stepped(step, length, reverse, active, first_reverse, bound, carry, xs):
    """The levels of a guarded loop (``_scan``) that some column steps, in a while loop
    (levels first, columns last): while some carry is ``active``, or the positions below the
    largest ``bound`` in the order of the loop that decided them (``first_reverse``: top
    down). The outputs of the levels it skips are zero, as the guard makes them."""
    if active is not None:  # the deciding loop: on while some column is still active
        trips = length

        def more(carry):
            return jnp.any(jax.vmap(active, in_axes=-1)(carry[0]))
    else:  # a limited loop: the positions below the largest bound, in either direction
        trips = jnp.clip(jnp.max(bound), 0, length)

        def more(carry):
            return True
    along = reverse == first_reverse

    def level(i):
        position = i if along else trips - 1 - i
        return length - 1 - position if first_reverse else position

    y_shape = jax.eval_shape(lambda c, x: step(c, x)[1], carry,
                             jax.tree.map(lambda a: a[0], xs))
    ys = jax.tree.map(lambda a: jnp.zeros((length, *a.shape), a.dtype), y_shape)

    def body(state):
        i, carry, ys = state
        k = level(i)
        carry, y = step(carry, jax.tree.map(
            lambda a: jax.lax.dynamic_index_in_dim(a, k, keepdims=False), xs))
        ys = jax.tree.map(lambda a, b: jax.lax.dynamic_update_index_in_dim(a, b, k, 0), ys, y)
        return i + 1, carry, ys

    def cond(state):
        i, carry, _ = state
        return (i < trips) & more(carry)

    _, carry, ys = jax.lax.while_loop(cond, body, (jnp.asarray(0, jnp.int32), carry, ys))
    return carry, ys


def _scan_pallas(fn, length, reverse, consts_batched, xs_batched, consts, init, xs, *,
                 interpret: bool):
    """The Pallas kernel: one ``pallas_call`` for the whole loop.

    The grid runs over blocks of ``PALLAS_BLOCK`` columns; each program instance loads its
    columns' inputs, steps through the levels with the carry in registers (``fn`` vmapped
    over the block) and writes each level's outputs. Every per-column number travels as its
    own ``(columns,)`` or ``(levels, columns)`` array (trailing axes split off, booleans as
    int32: what the GPU compilers take), padded to powers of two."""
    n_columns = jax.tree.leaves(init)[0].shape[0]
    block = min(PALLAS_BLOCK, _next_power_of_two(n_columns))
    columns = -(-n_columns // block) * block
    levels = _next_power_of_two(length)

    def per_column(tree, batched, lead):  # the abstract value of one column (one level)
        return jax.tree.map(lambda a, b: jax.ShapeDtypeStruct(a.shape[lead:] if b else
                                                              a.shape[lead - 1:], a.dtype),
                            tree, batched)

    one = (per_column(consts, consts_batched, 1),
           jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), init),
           per_column(xs, xs_batched, 2))
    y_one = jax.eval_shape(lambda k, c, x: fn(k, c, x)[1], *one)
    specs = [_Parts(t) for t in (*one, y_one)]

    def columns_of(a, batched, shape):  # -> (n_columns, *shape)
        return a if batched else jnp.broadcast_to(a, (n_columns, *shape))

    def pad(a):  # columns last, padded
        a = jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, columns - n_columns)])
        return jnp.pad(a, [(0, levels - length), (0, 0)]) if a.ndim == 2 else a

    const_in = [pad(p) for p in specs[0].split(
        [columns_of(a, b, s.shape) for a, b, s in zip(jax.tree.leaves(consts),
                                                      jax.tree.leaves(consts_batched),
                                                      jax.tree.leaves(one[0]), strict=True)])]
    init_in = [pad(p) for p in specs[1].split(jax.tree.leaves(init))]
    xs_in = [pad(p.T) for p in specs[2].split(
        [columns_of(a, b, (length, *s.shape)) for a, b, s in zip(
            jax.tree.leaves(xs), jax.tree.leaves(xs_batched), jax.tree.leaves(one[2]),
            strict=True)], lead=2)]
    counts = [len(const_in), len(init_in), len(xs_in), len(init_in)]

    def flat_step(k, c, x):
        carry, y = fn(specs[0].join(k), specs[1].join(c), specs[2].join(x))
        return (specs[1].split(jax.tree.leaves(carry), lead=0),
                specs[3].split(jax.tree.leaves(y), lead=0))

    step = jax.vmap(flat_step)

    def kernel(*refs):
        bounds = np.cumsum([0, *counts])
        const_refs, init_refs, xs_refs, carry_refs = (
            refs[bounds[i]:bounds[i + 1]] for i in range(4))
        ys_refs = refs[bounds[4]:]
        k = [r[...] for r in const_refs]

        def body(i, carry):
            level = length - 1 - i if reverse else i
            carry, y = step(k, carry, [r[level, :] for r in xs_refs])
            for r, v in zip(ys_refs, y, strict=True):
                r[level, :] = v
            return carry

        carry = jax.lax.fori_loop(0, length, body, [r[...] for r in init_refs])
        for r, v in zip(carry_refs, carry, strict=True):
            r[...] = v

    column_spec = pl.BlockSpec((block,), lambda j: (j,))
    level_spec = pl.BlockSpec((levels, block), lambda j: (0, j))
    out_shape = ([jax.ShapeDtypeStruct((columns,), a.dtype) for a in init_in]
                 + [jax.ShapeDtypeStruct((levels, columns), t) for t in specs[3].types])
    outputs = pl.pallas_call(
        kernel, out_shape=out_shape, grid=(columns // block,),
        in_specs=[column_spec] * (counts[0] + counts[1]) + [level_spec] * counts[2],
        out_specs=[column_spec] * counts[3] + [level_spec] * len(specs[3].types),
        interpret=interpret, name="scm_recurrence",
        compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1),
    )(*const_in, *init_in, *xs_in)
    carry = specs[1].join([a[:n_columns] for a in outputs[:counts[3]]], lead=(n_columns,))
    ys = specs[3].join([a[:length, :n_columns].T for a in outputs[counts[3]:]],
                       lead=(n_columns, length))
    return carry, ys


class _Parts:
    """A pytree of arrays as a flat list of parts, one per number of one column: what a
    Pallas kernel moves (``split``), and back (``join``). Booleans travel as int32."""

    def __init__(self, tree):
        leaves, self.tree = jax.tree.flatten(tree)
        self.shapes = [tuple(a.shape) for a in leaves]
        self.dtypes = [jnp.dtype(a.dtype) for a in leaves]
        self.types = [jnp.dtype(jnp.int32) if d == jnp.bool_ else d
                      for d, s in zip(self.dtypes, self.shapes, strict=True)
                      for _ in range(int(np.prod(s)))]

    def split(self, leaves, lead: int = 1):
        """Leaves with ``lead`` leading axes → one array of those axes per number."""
        parts = []
        for a, shape in zip(leaves, self.shapes, strict=True):
            flat = jnp.reshape(a, (*a.shape[:lead], int(np.prod(shape))))
            if a.dtype == jnp.bool_:
                flat = flat.astype(jnp.int32)
            parts += [flat[..., j] for j in range(flat.shape[-1])]
        return parts

    def join(self, parts, lead: tuple = ()):
        """The inverse of ``split`` (``lead``: the leading shape of every part)."""
        leaves, i = [], 0
        lead = tuple(lead) or tuple(jnp.shape(parts[0])) if parts else tuple(lead)
        for shape, dtype in zip(self.shapes, self.dtypes, strict=True):
            n = int(np.prod(shape))
            if shape == ():  # one number: no stacking (GPU kernels have no stack)
                block = parts[i]
            else:
                block = jnp.reshape(jnp.stack(parts[i:i + n], axis=-1) if n else
                                    jnp.zeros((*lead, 0)), (*lead, *shape))
            leaves.append(block != 0 if dtype == jnp.bool_ else block.astype(dtype))
            i += n
        return jax.tree.unflatten(self.tree, leaves)


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# ---------------------------------------------------------------------------------------------
# tridiagonal solve


def tridiagonal_solve(lower, diag, upper, rhs):
    """Solve tridiagonal systems along axis 0 (``lower[0]`` and ``upper[-1]`` are ignored).

    Each argument is an array with the level axis first, or a tuple of such arrays (one
    system per entry, solved in one sweep); the result has the structure of ``rhs``.
    """
    if not isinstance(rhs, tuple):
        return tridiagonal_solve((lower,), (diag,), (upper,), (rhs,))[0]
    lower = tuple(jnp.asarray(a).at[0].set(0.0) for a in lower)
    upper = tuple(jnp.asarray(c).at[-1].set(0.0) for c in upper)
    return _solve(lower, tuple(jnp.asarray(b) for b in diag), upper,
                  tuple(jnp.asarray(d) for d in rhs))


def _shift_down(x):
    """x[k − 1] at level k (zero below the first level)."""
    return jnp.concatenate([jnp.zeros_like(x[:1]), x[:-1]])


def _shift_up(x):
    """x[k + 1] at level k (zero above the last level)."""
    return jnp.concatenate([x[1:], jnp.zeros_like(x[:1])])


def _matvec(lower, diag, upper, x):
    return tuple(b * xi + a * _shift_down(xi) + c * _shift_up(xi)
                 for a, b, c, xi in zip(lower, diag, upper, x, strict=True))


def _thomas(lower: Systems, diag: Systems, upper: Systems, rhs: Systems) -> Systems:
    """Solve ``lower[k] x[k-1] + diag[k] x[k] + upper[k] x[k+1] = rhs[k]`` for each system.

    The real systems are stacked on a trailing axis, and so are the complex ones; both
    stacks go through one forward and one backward sweep (``_stacked_thomas``)."""
    rows = list(zip(lower, diag, upper, rhs, strict=True))
    kinds = [any(jnp.iscomplexobj(v) for v in row) for row in rows]
    groups = [[i for i, kind in enumerate(kinds) if kind == want] for want in (False, True)]

    def stack(chosen):  # (levels, *trailing, systems) of each side, as pairs (value, None)
        dtype = jnp.result_type(*(v for i in chosen for v in rows[i]))
        return tuple((jnp.stack([jnp.asarray(side[i], dtype) for i in chosen], axis=-1), None)
                     for side in (lower, diag, upper, rhs))

    solved = _stacked_thomas(tuple(stack(chosen) if chosen else None for chosen in groups))
    x = {}
    for chosen, pair in zip(groups, solved, strict=True):
        x.update({i: pair[0][..., j] for j, i in enumerate(chosen)})
    return tuple(x[i] for i in range(len(kinds)))


def _forward(carry, level):
    """One level of the forward elimination, c'ₖ = cₖ / (bₖ − aₖ c'ₖ₋₁) and
    d'ₖ = (dₖ − aₖ d'ₖ₋₁) / (bₖ − aₖ c'ₖ₋₁), for stacks of systems whose numbers are pairs
    (value, None) or, where a kernel takes real types only, (real part, imaginary part)."""
    c_prev, d_prev = carry
    a, b, c, d = level
    inverse = _reciprocal(_sub(b, _mul(a, c_prev)))
    new = (_mul(c, inverse), _mul(_sub(d, _mul(a, d_prev)), inverse))
    return new, new


def _backward(x_next, level):
    """One level of the back substitution, xₖ = d'ₖ − c'ₖ xₖ₊₁."""
    c, d = level
    x = _sub(d, _mul(c, x_next))
    return x, x


def _zero_pair(coefficient):
    zero = jnp.zeros_like(coefficient[3][0][0])
    return (zero, None if coefficient[3][1] is None else zero)


def _sweeps(coefficients):
    """Both sweeps of every group (levels on the leading axis, any trailing axes)."""
    live = [c is not None for c in coefficients]

    def each(step):  # a step of every group present
        def run(carry, level):
            out = [step(c, x) if on else (None, None)
                   for c, x, on in zip(carry, level, live, strict=True)]
            return tuple(o[0] for o in out), tuple(o[1] for o in out)
        return run

    init = tuple(None if c is None else (_zero_pair(c), _zero_pair(c)) for c in coefficients)
    _, factors = jax.lax.scan(each(_forward), init, coefficients)
    init = tuple(None if c is None else _zero_pair(c) for c in coefficients)
    return jax.lax.scan(each(_backward), init, factors, reverse=True)[1]


@jax.custom_batching.custom_vmap
def _stacked_thomas(coefficients):
    return _sweeps(coefficients)


@_stacked_thomas.def_vmap
def _stacked_thomas_rule(axis_size, in_batched, coefficients):
    coefficients = jax.tree.map(lambda a, b: a if b else jnp.broadcast_to(
        a, (axis_size, *a.shape)), coefficients, in_batched[0])
    out = _choose(_thomas_xla, _thomas_pallas, coefficients)
    return out, jax.tree.map(lambda _: True, out)


def _thomas_xla(coefficients):
    """The XLA kernel of the solve: the columns moved last, so that a level of every system
    is one contiguous vector, and both sweeps on whole stacks (a forward level of four
    systems: a few wide kernels rather than one or more per number)."""
    last = jax.tree.map(lambda a: jnp.moveaxis(a, 0, -1), coefficients)
    return jax.tree.map(lambda a: jnp.moveaxis(a, -1, 0), _sweeps(last))


def _thomas_pallas(coefficients, *, interpret: bool):
    """The Pallas kernels of the solve: each stack's systems become columns of their own,
    complex numbers pairs of reals (the GPU compilers take real types only), and each sweep
    one ``_scan_pallas`` (the step functions of ``_sweeps``)."""
    return tuple(None if c is None else _stack_pallas(c, interpret) for c in coefficients)


def _stack_pallas(coefficient, interpret: bool):
    shape = coefficient[3][0].shape  # (columns, levels, *trailing)
    columns, length = shape[0], shape[1]
    is_complex = jnp.iscomplexobj(coefficient[3][0])

    def fold(pair):  # (columns, levels, *trailing) -> (columns · trailing, levels) pairs,
        a = jnp.reshape(jnp.moveaxis(pair[0], 1, -1), (-1, length))  # complex as two reals
        return (jnp.real(a), jnp.imag(a)) if is_complex else (a, None)

    def scan(step, init, xs, reverse):
        flags = jax.tree.map(lambda _: True, xs)
        return _scan_pallas(lambda _, c, x: step(c, x), length, reverse, [], flags, [], init,
                            xs, interpret=interpret)[1]

    level = tuple(fold(pair) for pair in coefficient)
    zero = _zero_pair(jax.tree.map(lambda a: a.T, level))  # (columns,) pairs
    re, im = scan(_backward, zero, scan(_forward, (zero, zero), level, False), True)
    x = re if im is None else jax.lax.complex(re, im)
    return jnp.moveaxis(jnp.reshape(x, (columns, *shape[2:], length)), -1, 1), None


def _mul(p, q):
    (a, b), (c, d) = p, q
    if b is None and d is None:
        return a * c, None
    if b is None:
        return a * c, a * d
    if d is None:
        return a * c, b * c
    return a * c - b * d, a * d + b * c


def _sub(p, q):
    (a, b), (c, d) = p, q
    if b is None and d is None:
        return a - c, None
    return a - c, (b if b is not None else 0.0) - (d if d is not None else 0.0)


def _reciprocal(p):
    a, b = p
    if b is None:
        return 1.0 / a, None
    scale = 1.0 / (a * a + b * b)
    return a * scale, -b * scale


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
