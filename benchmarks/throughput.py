"""Throughput of the column model: column-steps per second, compile time, gradient cost.

Measures the GABLS1 case (``experiments.cases.build_case("gabls1")``: TKE closure with its
Monin-Obukhov surface layer, large-scale forcing) at 64 levels in float32 on whatever device
JAX picks:

- **rollout**: ``rollout`` over N columns for ``n`` steps, saving only the end state
  (``save_every = n``), the columns split over every device by the column runner
  (``scm.columns.map_columns``; ``--devices`` for fewer); the first call (trace + compile +
  run) and the steady state (best and median of repeated calls, ``block_until_ready``), as
  column-steps per second;
- **gradient**: a 1000-step rollout loss (mean squared change of the final θ) forward, and its
  gradient with respect to the initial states and every float array of the model, the
  grid's geometry included (``--gradient-wrt all``), or every one but the grid's
  (``parameters``: the schemes' parameters, what online training differentiates, as a
  network's weights; the grid is held fixed), at 64 and 1024 columns;
- **profile** (``--profile``): the parts of one step timed on their own at one column count,
  to show where the time goes.

Writes ``benchmarks/results/throughput_<device>.json`` and ``.md``. Run from the repository
root: ``python benchmarks/throughput.py`` (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from experiments.cases import build_case
from physics.thermodynamics import diagnose
from scm.columns import map_columns
from scm.integration import (
    DEFAULT_BOUNDS,
    ColumnTerm,
    SemiImplicitEuler,
    first_violation,
    implicit_diffusion,
    rollout,
)

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------------
# what is timed


def column_states(state0, n_columns: int, seed: int = 0):
    """``n_columns`` copies of the case's initial state, θ perturbed by ~0.01 K per column."""
    noise = np.random.default_rng(seed).normal(0.0, 0.01, (n_columns, state0.thl.shape[-1]))
    states = jax.tree.map(lambda a: jnp.broadcast_to(a, (n_columns, *a.shape)), state0)
    return eqx.tree_at(lambda s: s.thl, states, states.thl + jnp.asarray(noise, states.thl.dtype))


def end_state_rollout(model, states, forcing, dt, n_steps: int, devices=None):
    """All columns through ``n_steps`` steps, split over ``devices`` (default: all); returns
    the end state and the failure times."""

    def one(model, state, forcing, dt):
        run = rollout(model, state, forcing, 0.0, dt, n_steps, n_steps)
        return jax.tree.map(lambda a: a[-1], run.state), run.failed_at

    return map_columns(one, (None, 0, None, None), model, states, forcing, dt, devices=devices)


def rollout_loss(model_and_states, forcing, dt, n_steps: int, devices=None, held=None):
    """Mean squared change of the final θ over all columns and levels (``held``: the parts
    of the model not differentiated, to combine with the first argument's)."""
    model, states = model_and_states
    if held is not None:
        model = eqx.combine(model, held)
    final, _ = end_state_rollout(model, states, forcing, dt, n_steps, devices)
    return jnp.mean((final.thl - states.thl) ** 2)


def without_grid(model):
    """A filter of ``model`` for ``eqx.partition``: every float array but the grid's."""
    spec = jax.tree.map(eqx.is_inexact_array, model)
    return eqx.tree_at(lambda m: m.grid, spec, jax.tree.map(lambda _: False, model.grid))


def timed(fn, *args, repeats: int):
    """Compile ``fn`` ahead of time, run it once, then ``repeats`` more times.

    Returns (timings, output): ``trace_s`` (trace + lower), ``compile_s`` (XLA compile),
    ``first_run_s`` (the first run of the compiled program), ``first_call_s`` (their sum, what
    a user waits for on the first call) and ``run_s`` (the further runs, or the first run if
    there are none), every run ended by ``block_until_ready``.
    """
    start = time.perf_counter()
    lowered = fn.lower(*args)
    trace = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_ = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    first_run = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - start)
    timings = {
        "trace_s": trace,
        "compile_s": compile_,
        "first_run_s": first_run,
        "first_call_s": trace + compile_ + first_run,
        "run_s": runs or [first_run],
    }
    return timings, out


def steps_for(n_columns: int, column_steps: float, lowest: int = 20, highest: int = 1000) -> int:
    """Steps per timed call: about ``column_steps`` column-steps, a multiple of 10."""
    return int(np.clip(round(column_steps / n_columns / 10) * 10, lowest, highest))


def measure_rollout(case, n_columns: int, n_steps: int, repeats: int, devices=None) -> dict:
    fn = eqx.filter_jit(end_state_rollout)
    states = column_states(case.state0, n_columns)
    dt = jnp.asarray(case.dt, case.state0.thl.dtype)
    t, (final, failed_at) = timed(
        fn, case.model, states, case.forcing, dt, n_steps, devices, repeats=repeats
    )
    best, median = min(t["run_s"]), statistics.median(t["run_s"])
    return {
        "columns": n_columns,
        "steps": n_steps,
        "first_call_s": t["first_call_s"],
        "trace_s": t["trace_s"],
        "compile_s": t["compile_s"],
        "steady_best_s": best,
        "steady_median_s": median,
        "column_steps_per_s": n_columns * n_steps / best,
        "column_steps_per_s_median": n_columns * n_steps / median,
        "failed_columns": int(np.isfinite(np.asarray(failed_at)).sum()),
        "finite": bool(np.all(np.isfinite(np.asarray(final.thl)))),
    }


def measure_gradient(case, n_columns: int, n_steps: int, repeats: int, devices=None,
                     wrt: str = "all") -> dict:
    states = column_states(case.state0, n_columns)
    dt = jnp.asarray(case.dt, case.state0.thl.dtype)
    forward = eqx.filter_jit(rollout_loss)
    gradient = eqx.filter_jit(eqx.filter_value_and_grad(rollout_loss))
    model, held = case.model, None
    if wrt == "parameters":
        model, held = eqx.partition(case.model, without_grid(case.model))
    args = ((model, states), case.forcing, dt, n_steps, devices, held)
    f, loss = timed(forward, *args, repeats=repeats)
    g, (loss_g, grads) = timed(gradient, *args, repeats=repeats)
    leaves = [np.asarray(x) for x in jax.tree.leaves(grads)]
    f_best, g_best = min(f["run_s"]), min(g["run_s"])
    return {
        "columns": n_columns,
        "steps": n_steps,
        "with_respect_to": wrt,
        "forward_first_call_s": f["first_call_s"],
        "forward_compile_s": f["trace_s"] + f["compile_s"],
        "forward_s": f_best,
        "gradient_first_call_s": g["first_call_s"],
        "gradient_compile_s": g["trace_s"] + g["compile_s"],
        "gradient_s": g_best,
        "gradient_over_forward": g_best / f_best,
        "forward_column_steps_per_s": n_columns * n_steps / f_best,
        "loss": float(loss),
        "loss_matches": bool(np.isclose(float(loss), float(loss_g), rtol=1e-4)),
        "gradient_finite": bool(all(np.all(np.isfinite(x)) for x in leaves)),
    }


def measure_profile(case, n_columns: int, repeats: int, loops: int = 50) -> list[dict]:
    """Each part of one step on its own, vmapped over ``n_columns`` (milliseconds per step).

    Every part runs ``loops`` times inside one jitted ``fori_loop`` (so dispatch overhead does
    not count); its input θ moves by a tiny amount each time and its outputs are summed, so
    the compiler can neither hoist it out of the loop nor drop it.
    """
    model, forcing = case.model, case.forcing
    states = column_states(case.state0, n_columns)
    dtype = case.state0.thl.dtype
    dt = jnp.asarray(case.dt, dtype)
    at = forcing.at(jnp.asarray(0.0, dtype))
    tendency = jax.vmap(lambda s: model.tendency(s, at))(states)

    def solver_step(m, x):
        term = ColumnTerm(m, forcing)
        return SemiImplicitEuler().step(term, 0.0, dt, x, None, None, False)[0]

    # per-column parts: (model, state, that column's tendency) -> anything
    parts = {}
    for name, slot in model.slots().items():
        parts[f"slot {name}: tendency"] = lambda m, x, t, n=name: getattr(m, n)(x, at, m.grid)
        if hasattr(getattr(slot, "surface", None), "fluxes"):
            parts[f"slot {name}: its surface layer only"] = lambda m, x, t, n=name: getattr(
                m, n
            ).surface.fluxes(x, at, m.grid)
            if hasattr(slot, "updraft"):
                parts[f"slot {name}: its mass-flux updraft only (incl. surface layer)"] = (
                    lambda m, x, t, n=name: _updraft(getattr(m, n), x, at, m.grid)
                )
    parts["all slots: model.tendency"] = lambda m, x, t: m.tendency(x, at)
    parts["explicit update y + dt R (flux divergence)"] = lambda m, x, t: (
        x + t.explicit_rate(m.grid) * dt
    )
    parts["implicit diffusion solve"] = lambda m, x, t: implicit_diffusion(
        m.grid, x, t.diffusivity, dt
    )
    parts["bounds check (first_violation)"] = lambda m, x, t: first_violation(x, DEFAULT_BOUNDS)
    parts["one solver step (tendency + update + solve)"] = lambda m, x, t: solver_step(m, x)
    parts["loop overhead (nothing)"] = lambda m, x, t: x.thl[0]

    def looped(part):
        def run(m, s, t):
            def body(i, total):
                moved = eqx.tree_at(lambda z: z.thl, s, s.thl + i.astype(dtype) * 1.0e-6)
                out = jax.vmap(lambda x, tx: part(m, x, tx))(moved, t)
                return total + sum(jnp.sum(a).astype(dtype) for a in jax.tree.leaves(out))

            return jax.lax.fori_loop(0, loops, body, jnp.zeros((), dtype))

        return eqx.filter_jit(run)

    rows = []
    for name, part in parts.items():
        t, _ = timed(looped(part), model, states, tendency, repeats=repeats)
        rows.append({"part": name, "ms_per_step": 1e3 * min(t["run_s"]) / loops})
    steps = 200
    run = measure_rollout(case, n_columns, steps, repeats, devices=jax.devices()[:1])
    rows.append(
        {
            "part": f"rollout ({steps} steps: checkpointed scan, bounds check)",
            "ms_per_step": 1e3 * run["steady_best_s"] / steps,
        }
    )
    return rows


def _updraft(closure, state, forcing, grid):
    fluxes = closure.surface.fluxes(state, forcing, grid)
    return closure.updraft(state, grid, diagnose(state, grid, closure.moist), fluxes, closure.moist)


# ---------------------------------------------------------------------------------------------
# report


def environment() -> dict:
    device = jax.devices()[0]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=RESULTS.parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    memory = device.memory_stats() if hasattr(device, "memory_stats") else None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "device_memory_bytes": (memory or {}).get("bytes_limit"),
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
        "equinox": eqx.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "commit": commit,
    }


def _jaxlib_version():
    import jaxlib

    return jaxlib.__version__


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    match = re.search(r"model name\s*:\s*(.*)", text)
    return match.group(1).strip() if match else platform.processor()


def device_slug(env: dict) -> str:
    kind = env["device_kind"] if env["platform"] != "cpu" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-")


def markdown(result: dict) -> str:
    env, case = result["environment"], result["case"]
    lines = [
        f"# Throughput: {case['name']}, {case['levels']} levels, {case['dtype']}, "
        f"{env['device_kind']}",
        "",
        f"{env['date']}; JAX {env['jax']}, {env['platform']} ({env['device_kind']}, "
        f"{env['device_count']} device(s), {env.get('devices_used', 1)} used); "
        f"{env['cpu_count']} CPUs ({env['processor']}); "
        f"load average at start {_load(env)}; commit {env['commit']}. Case: "
        f"{case['turbulence']} turbulence, dt = {case['dt']:g} s.",
        "",
        "## Rollout (vmapped over columns, end state only)",
        "",
        "| columns | steps | first call (s) | trace (s) | compile (s) | steady best (s) "
        "| steady median (s) | column-steps/s (best) | column-steps/s (median) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rollout"]:
        lines.append(
            f"| {r['columns']} | {r['steps']} | {r['first_call_s']:.2f} | {r['trace_s']:.2f} | "
            f"{r['compile_s']:.2f} | "
            f"{r['steady_best_s']:.4f} | {r['steady_median_s']:.4f} | "
            f"{r['column_steps_per_s']:.3g} | {r['column_steps_per_s_median']:.3g} |"
        )
    if result["gradient"]:
        lines += [
            "",
            "## Forward vs gradient of a rollout loss",
            "",
            "Loss: mean squared change of the final θ; gradient "
            "(`eqx.filter_value_and_grad`) with respect to the initial states and every float "
            "array of the model (*all*, the grid's geometry included) or every one but the "
            "grid's (*parameters*).",
            "",
            "| columns | steps | with respect to | forward: compile (s) | forward (s) "
            "| gradient: compile (s) | gradient (s) | gradient / forward |",
            "|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in result["gradient"]:
            lines.append(
                f"| {r['columns']} | {r['steps']} | {r.get('with_respect_to', 'all')} | "
                f"{r['forward_compile_s']:.2f} | "
                f"{r['forward_s']:.3f} | {r['gradient_compile_s']:.2f} | "
                f"{r['gradient_s']:.3f} | {r['gradient_over_forward']:.2f} |"
            )
    if result["profile"]:
        p = result["profile"]
        lines += [
            "",
            f"## Where one step's time goes ({p['columns']} columns, parts timed on their own)",
            "",
            "| part | ms per step | µs per column-step |",
            "|---|---:|---:|",
        ]
        for r in p["parts"]:
            us = 1e3 * r["ms_per_step"] / p["columns"]
            lines.append(f"| {r['part']} | {r['ms_per_step']:.3f} | {us:.3f} |")
    return "\n".join(lines) + "\n"


def _load(env: dict) -> str:
    load = env.get("load_average_at_start")
    return "n/a" if load is None else ", ".join(f"{x:.2f}" for x in load)


# ---------------------------------------------------------------------------------------------
# command line


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="gabls1", help="case name (default gabls1)")
    parser.add_argument("--levels", type=int, default=64)
    parser.add_argument("--turbulence", default=None, help="closure (default: the case's)")
    parser.add_argument(
        "--columns",
        type=int,
        nargs="*",
        default=[1, 64, 1024, 8192],
        help="column counts of the rollout benchmark (on a GPU add e.g. 131072)",
    )
    parser.add_argument(
        "--column-steps",
        type=float,
        default=1.0e5,
        help="column-steps per timed call: steps = this / columns, in [20, 1000]",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="fixed steps per timed rollout call (overrides --column-steps)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="steady-state repetitions")
    parser.add_argument("--gradient-columns", type=int, nargs="*", default=[64, 1024])
    parser.add_argument("--gradient-steps", type=int, default=1000)
    parser.add_argument("--gradient-wrt", nargs="*", choices=("all", "parameters"),
                        default=["all", "parameters"],
                        help="what the gradient is taken with respect to (module docstring)")
    parser.add_argument(
        "--gradient-repeats",
        type=int,
        default=0,
        help="further gradient runs after the first (default 0: the first run is the timing)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also time the parts of one step on their own"
    )
    parser.add_argument("--profile-columns", type=int, default=1024)
    parser.add_argument("--float64", action="store_true", help="run in float64 instead")
    parser.add_argument(
        "--devices", type=int, default=None, help="devices to split the columns over (default: all)"
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="folder of the JSON and markdown results"
    )
    parser.add_argument("--tag", default="", help="suffix of the result file names")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    start = time.perf_counter()
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    env = environment()
    devices = jax.devices()[: args.devices] if args.devices else None
    env["devices_used"] = len(devices or jax.devices())
    print(
        f"device: {env['platform']} ({env['device_kind']}), jax {env['jax']}, "
        f"{env['cpu_count']} CPUs, load {_load(env)}",
        flush=True,
    )
    options = {"levels": args.levels}
    if args.turbulence is not None:
        options["turbulence"] = args.turbulence
    case = build_case(args.case, **options)
    dtype = str(case.state0.thl.dtype)
    result = {
        "environment": env,
        "case": {
            "name": args.case,
            "levels": case.model.grid.n_levels,
            "dt": case.dt,
            "turbulence": case.parameters.get("turbulence"),
            "dtype": dtype,
            "slots": list(case.model.slots()),
        },
        "rollout": [],
        "gradient": [],
        "profile": None,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    stem = args.output / f"throughput_{device_slug(env)}{'_' + args.tag if args.tag else ''}"

    def save():  # after every measurement, so an interrupted run keeps what it measured
        result["elapsed_s"] = time.perf_counter() - start
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(result))

    for n in args.columns:
        steps = args.steps or steps_for(n, args.column_steps)
        r = measure_rollout(case, n, steps, args.repeats, devices)
        result["rollout"].append(r)
        save()
        elapsed = time.perf_counter() - start
        print(
            f"[{elapsed:4.0f} s] rollout  {n:7d} columns x {steps:4d} steps: first call "
            f"{r['first_call_s']:6.2f} s (compile {r['trace_s'] + r['compile_s']:.2f} s), "
            f"steady {r['steady_best_s']:.4f} s, {r['column_steps_per_s']:.3g} column-steps/s",
            flush=True,
        )
    for n, wrt in ((n, wrt) for n in args.gradient_columns for wrt in args.gradient_wrt):
        r = measure_gradient(case, n, args.gradient_steps, args.gradient_repeats, devices, wrt)
        result["gradient"].append(r)
        save()
        elapsed = time.perf_counter() - start
        print(
            f"[{elapsed:4.0f} s] gradient ({wrt}) {n:7d} columns x {args.gradient_steps} steps: "
            f"forward {r['forward_s']:.3f} s, gradient {r['gradient_s']:.3f} s "
            f"({r['gradient_over_forward']:.2f}x; compile {r['forward_compile_s']:.1f} s, "
            f"{r['gradient_compile_s']:.1f} s)",
            flush=True,
        )
    if args.profile:
        rows = measure_profile(case, args.profile_columns, args.repeats)
        result["profile"] = {"columns": args.profile_columns, "parts": rows}
        save()
        for row in rows:
            print(f"profile  {row['part']:60s} {row['ms_per_step']:9.3f} ms/step", flush=True)
    print(f"wrote {stem}.json and .md", flush=True)
    return result


if __name__ == "__main__":
    main()
