"""How XLA compiles the package's large programs: for run time (the default) or for compile
time.

On the CPU, XLA turns every fusion of a program into machine code of its own, so a program of
about a thousand kernels (the online training step with a network in the loop) compiles for
tens of seconds, and a short run, such as the quick experiment, is mostly compilation.
``COMPILE_TIME_OPTIONS`` trade run time for compile time: XLA:CPU's classic elemental emitters
instead of its fusion emitters, and no LLVM optimization (``-O0`` instead of ``-O3``). Results
differ from the default's in the last digits (round-off). Measured on two CPU cores:

- the quick experiment's training steps compile 2.3–3.7× faster: 7.0 against 16.6 s
  (residual online), 4.9 against 11.1 s (replace online), 1.8 against 6.7 s (residual
  offline);
- the quick experiment (``scm experiment turbulence --quick``, no compilation cache) takes
  46–55 s (67–79 s of CPU time), against 79–90 s (135–153 s) compiled for run time;
- but the GABLS1 rollout runs 6–7× slower (64 columns × 1000 steps: 4.7 against 0.74 s),
  so the options suit programs that run briefly. (LLVM at ``-O1`` instead keeps the rollout
  within 30 % of the default, but the quick experiment took 55–71 s.)

``compile_time_first`` applies the options to the programs compiled while it is active, in any
thread; ``filter_jit`` is ``equinox.filter_jit`` that obeys it. Other backends, and an XLA that no
longer knows the options, compile as usual.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from collections.abc import Callable

import equinox as eqx
import jax

#: XLA options of programs compiled for compile time (used on CPUs only).
COMPILE_TIME_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}

_lock = threading.Lock()
_active = 0


@contextlib.contextmanager
def compile_time_first(enabled: bool = True):
    """Programs compiled (by ``filter_jit``) inside this block, from any thread, are compiled for
    compile time rather than run time (a no-op when ``enabled`` is false)."""
    global _active
    if not enabled:
        yield
        return
    with _lock:
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1


@functools.cache
def _compile_time_options() -> tuple[tuple[str, object], ...]:
    """``COMPILE_TIME_OPTIONS`` where the default backend is a CPU that knows them, else
    nothing (checked once, on a trivial program)."""
    if jax.default_backend() != "cpu":
        return ()
    try:
        jax.jit(lambda x: x + 1, compiler_options=COMPILE_TIME_OPTIONS).lower(0.0).compile()
    except Exception as error:  # noqa: BLE001 - any refusal means: compile as usual
        warnings.warn(f"compiling for run time: XLA refused {COMPILE_TIME_OPTIONS} ({error})",
                      stacklevel=3)
        return ()
    return tuple(COMPILE_TIME_OPTIONS.items())


def filter_jit(fun: Callable) -> Callable:
    """``eqx.filter_jit(fun)``, compiled with ``COMPILE_TIME_OPTIONS`` when called inside
    ``compile_time_first`` (each setting keeps its own compiled programs)."""
    for_run_time = eqx.filter_jit(fun)

    @functools.cache  # made on first use, since the options' check needs the backend
    def for_compile_time():
        options = dict(_compile_time_options())
        return eqx.filter_jit(fun, compiler_options=options) if options else for_run_time

    def current():
        if not _active:
            return for_run_time
        with _lock:  # one program for all threads, even when they start at once
            return for_compile_time()

    @functools.wraps(fun)
    def call(*args, **kwargs):
        return current()(*args, **kwargs)

    call.lower = lambda *args, **kwargs: current().lower(*args, **kwargs)
    return call
