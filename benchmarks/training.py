"""Training cost: throughput of online training, memory and time of a K-step rollout gradient.

The models of the canonical experiment (``experiments.turbulence``): the coarse ``diurnal``
column (32 levels, Δt = 300 s, float32) with a network that **replaces** the turbulence
closure (diffusivity head) or **corrects** the local closure (``Residual``, flux head), on
coarse-grained truth made here (``experiments.truth.generate_truth``: 4 training scenarios at
2× resolution, 1 day of spin-up, ``--days`` days kept; or ``--truth FILE`` from an experiment).

- **training throughput**: ``nn.training.train`` online with rollouts of ``--train-steps``
  steps and batches of ``--batch`` columns; iterations per second and column-steps per second
  (batch × K per iteration) after the first (compiling) iterations;
- **gradient memory**: the online loss's gradient (``eqx.filter_value_and_grad`` of
  ``nn.training.online_loss``) compiled for K = 10, 100, 1000: XLA's own account of the
  program's memory (``compiled.memory_analysis()``: the temporary buffers are the working
  memory of the gradient, arguments and outputs besides). Deterministic, unlike the resident
  set size of the process;
- **gradient / forward**: the same loss forward only and with its gradient, best of
  ``--repeats`` runs each.

Writes ``benchmarks/results/training_<device>.json`` and ``.md``. Run from the repository
root: ``python benchmarks/training.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
from throughput import RESULTS, device_slug, environment, timed

from experiments.scenarios import sample_scenarios
from experiments.truth import generate_truth, load_truth
from experiments.turbulence import (
    ExperimentConfig,
    Inputs,
    coarse_cases,
    hybrid_model,
    training_data,
)
from nn.parameterization import trainable_filter
from nn.training import TrainingConfig, draw, online_loss, train


def make_setup(args, config: ExperimentConfig):
    if args.truth is not None:
        dataset = load_truth(args.truth)
    else:
        dataset = generate_truth(sample_scenarios("train", 4, 0), coarse_levels=32,
                                 refinement=2, fine_dt=60.0, coarse_dt=config.coarse_dt,
                                 days=1.0 + args.days, spinup_days=1.0, progress=False)
    cases = coarse_cases(dataset, config)
    data = training_data(dataset, cases, config)
    # the experiment's features and their normalization, fitted on this truth
    return data, cases, Inputs(data, cases[0].model, config).normalization


def measure_training(model, data, args) -> dict:
    iterations = args.warmup + args.iterations
    config = TrainingConfig(curriculum=((args.train_steps, iterations),),
                            batch_size=args.batch, seed=0)
    history = train(model, data, config, progress=False).history
    steady = history[-1]["seconds"] - history[args.warmup - 1]["seconds"]
    rate = args.iterations / steady
    return {"rollout_steps": args.train_steps, "batch": args.batch,
            "first_iterations_s": history[args.warmup - 1]["seconds"],
            "iterations_per_s": rate,
            "column_steps_per_s": rate * args.batch * args.train_steps,
            "loss_first": history[0]["loss"], "loss_last": history[-1]["loss"]}


def measure_gradient(model, data, n_steps: int, args) -> dict:
    params, static = eqx.partition(model, trainable_filter(model))
    scenario, start = draw(jax.random.key(0), data, args.batch, n_steps)
    loss = functools.partial(online_loss, n_steps=n_steps, scales=data.state_scales())
    forward = eqx.filter_jit(lambda *a: loss(*a)[0])
    gradient = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))
    arguments = (params, static, data, scenario, start)
    t_forward, _ = timed(forward, *arguments, repeats=args.repeats)
    t_gradient, _ = timed(gradient, *arguments, repeats=args.repeats)
    memory = gradient.lower(*arguments).compile().compiled.memory_analysis()
    forward_memory = forward.lower(*arguments).compile().compiled.memory_analysis()
    best_forward, best_gradient = min(t_forward["run_s"]), min(t_gradient["run_s"])
    return {
        "rollout_steps": n_steps, "batch": args.batch,
        "forward_s": best_forward, "gradient_s": best_gradient,
        "gradient_over_forward": best_gradient / best_forward,
        "gradient_compile_s": t_gradient["compile_s"],
        "gradient_temp_bytes": int(memory.temp_size_in_bytes),
        "forward_temp_bytes": int(forward_memory.temp_size_in_bytes),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
    }


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"# Training cost: diurnal, 32 levels, Δt = 300 s, float32, {env['device_kind']}",
        "",
        f"{env['date']}; JAX {env['jax']}, {env['platform']} ({env['device_kind']}); "
        f"{env['cpu_count']} CPUs; load average at start "
        f"{', '.join(f'{x:.2f}' for x in env['load_average_at_start'] or [])}; "
        f"commit {env['commit']}.",
        "",
        "## Online training throughput",
        "",
        "| model | rollout steps K | batch | first iterations (s) | iterations/s | "
        "column-steps/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["training"].items():
        lines.append(f"| {name} | {row['rollout_steps']} | {row['batch']} | "
                     f"{row['first_iterations_s']:.1f} | {row['iterations_per_s']:.2f} | "
                     f"{row['column_steps_per_s']:.3g} |")
    lines += [
        "",
        "## Gradient of the K-step online loss: memory and time",
        "",
        "Working memory = XLA's temporary buffers of the compiled gradient "
        "(`memory_analysis().temp_size_in_bytes`); arguments (the training data, weights) "
        "are the same for every K.",
        "",
        "| model | K | gradient working memory (MiB) | vs K = 10 | forward working memory "
        "(MiB) | forward (s) | gradient (s) | gradient / forward |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in result["gradient"].items():
        for row in rows:
            lines.append(
                f"| {name} | {row['rollout_steps']} | {row['gradient_temp_bytes'] / 2**20:.2f} "
                f"| {row['gradient_temp_bytes'] / rows[0]['gradient_temp_bytes']:.2f} | "
                f"{row['forward_temp_bytes'] / 2**20:.2f} | {row['forward_s']:.3f} | "
                f"{row['gradient_s']:.3f} | {row['gradient_over_forward']:.2f} |")
    return "\n".join(lines) + "\n"


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--truth", type=Path, help="training truth file (default: make one)")
    parser.add_argument("--days", type=float, default=4.0, help="days of truth made here")
    parser.add_argument("--batch", type=int, default=32, help="columns per batch")
    parser.add_argument("--train-steps", type=int, default=12, help="K of the throughput run")
    parser.add_argument("--warmup", type=int, default=3, help="iterations before timing")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations")
    parser.add_argument("--steps", type=int, nargs="*", default=[10, 100, 1000],
                        help="rollout lengths K of the gradient measurements")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=["replace", "residual"])
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    config = ExperimentConfig()
    env = environment()
    result = {"environment": env, "arguments": {k: str(v) for k, v in vars(args).items()},
              "training": {}, "gradient": {}}
    stem = args.output / f"training_{device_slug(env)}"
    args.output.mkdir(parents=True, exist_ok=True)

    def save():  # after every measurement, so an interrupted run keeps what it measured
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(result))

    start = time.perf_counter()
    data, cases, normalization = make_setup(args, config)
    print(f"[{time.perf_counter() - start:5.0f} s] truth: {data.n_scenarios} scenarios, "
          f"{data.n_times} times", flush=True)
    for name in args.models:
        model = hybrid_model(name, cases[0].model, normalization, config, seed=0)
        result["training"][name] = row = measure_training(model, data, args)
        save()
        print(f"[{time.perf_counter() - start:5.0f} s] {name}: training "
              f"{row['iterations_per_s']:.2f} it/s", flush=True)
        result["gradient"][name] = []
        for n_steps in args.steps:
            result["gradient"][name].append(row := measure_gradient(model, data, n_steps, args))
            save()
            print(f"[{time.perf_counter() - start:5.0f} s] {name} K={n_steps}: gradient "
                  f"{row['gradient_temp_bytes'] / 2**20:.2f} MiB, "
                  f"{row['gradient_over_forward']:.2f}x forward", flush=True)
    print(f"wrote {stem}.json and .md", flush=True)
    return result


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
