"""Kernels and bytes of one model step per column, read from the compiled program.

Compiles one step of a case (``SemiImplicitEuler.step`` vmapped over N columns, one device)
and walks XLA's compiled HLO: every kernel the program launches (a fusion, or an operation
XLA runs on its own; loop bodies and conditions counted as often as they run, from XLA's
``known_trip_count``) and the bytes each kernel reads and writes (its operands and result;
an in-place update counts the updated part twice, and an operand that is only sliced counts
the slices). XLA's own cost analysis (``bytes accessed``) counts each loop body once; it is
reported beside. The floor is the prognostic state read and written once per step: for
GABLS1 at 64 levels, 2 × 5 fields × 64 × 4 bytes = 2.56 KB per column.

It uses only the public model API, so it measures any checkout of the package:

    PYTHONPATH=. python benchmarks/hlo.py [--case gabls1] [--columns 1024] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"(ROOT )?%([\w.\-]+) = (.+?) ([\w\-]+)\((.*)$")
#: Operations that move no data of their own.
_FREE = {"parameter", "tuple", "get-tuple-element", "constant", "bitcast", "after-all",
         "partition-id", "replica-id"}


def shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        count = 1
        for d in dims.split(","):
            count *= int(d) if d else 1
        total += count * _BYTES[dtype]
    return total


def parse(hlo: str) -> tuple[dict, str]:
    """Computations of an HLO module text: name -> instructions; and the entry's name."""
    computations, current, entry = {}, None, None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            match = re.match(r"^(ENTRY )?%?([\w.\-]+)", line)
            if match:
                current = match.group(2)
                computations[current] = []
                entry = current if match.group(1) else entry
            continue
        match = _INSTRUCTION.match(line.strip()) if current and line.startswith("  ") else None
        if match:
            computations[current].append({
                "root": bool(match.group(1)), "name": match.group(2), "shape": match.group(3),
                "op": match.group(4), "rest": match.group(5),
                "operands": re.findall(r"%([\w.\-]+)", match.group(5).split("), ")[0])})
    return computations, entry


def _fusion_bytes(computations, called: str, operand_shapes: list, result: str) -> int:
    body = computations[called]
    by_name = {i["name"]: i for i in body}
    users = {i["name"]: [] for i in body}
    for i in body:
        for o in i["operands"]:
            if o in users:
                users[o].append(i)

    def read(name, size):  # an operand that is only sliced reads its slices
        found = users[name]
        if found and all(u["op"] in ("dynamic-slice", "slice", "bitcast", "reshape")
                         for u in found):
            return sum(read(u["name"], shape_bytes(u["shape"])) for u in found)
        return size

    root = next(i for i in body if i["root"])
    aliased = None
    if root["op"] == "dynamic-update-slice":  # in place: the update is read and written
        aliased = root["operands"][0]
        total = 2 * shape_bytes(by_name[root["operands"][1]]["shape"])
    else:
        total = shape_bytes(result)
    for i in body:
        if i["op"] == "parameter" and i["name"] != aliased:
            index = int(re.match(r"(\d+)", i["rest"]).group(1))
            total += read(i["name"], shape_bytes(operand_shapes[index]))
    return total


def kernels_and_bytes(hlo: str) -> tuple[int, int]:
    """(kernels launched, bytes moved) by one run of a compiled HLO module."""
    computations, entry = parse(hlo)
    memo = {}

    def walk(name):
        if name in memo:
            return memo[name]
        kernels = moved = 0
        shapes = {}
        for i in computations[name]:
            shapes[i["name"]] = i["shape"]
            op, rest = i["op"], i["rest"]
            if op in _FREE:
                continue
            if op == "while":
                trips = re.search(r'known_trip_count":\{"n":"(\d+)"', rest)
                trips = int(trips.group(1)) if trips else 1
                for part in ("body", "condition"):
                    k, b = walk(re.search(part + r"=%([\w.\-]+)", rest).group(1))
                    kernels, moved = kernels + trips * k, moved + trips * b
                continue
            if op in ("call", "conditional"):
                for called in re.findall(r"%([\w.\-]+)", rest.split("), ")[-1]):
                    if called in computations:
                        k, b = walk(called)
                        kernels, moved = kernels + k, moved + b
                continue
            kernels += 1
            operands = [shapes.get(o, "") for o in i["operands"]]
            if op == "fusion":
                called = re.search(r"calls=%([\w.\-]+)", rest).group(1)
                moved += _fusion_bytes(computations, called, operands, i["shape"])
            elif op == "dynamic-update-slice":
                moved += 2 * shape_bytes(operands[1])
            elif op == "dynamic-slice":
                moved += 2 * shape_bytes(i["shape"])
            else:
                moved += shape_bytes(i["shape"]) + sum(shape_bytes(s) for s in operands)
        memo[name] = (kernels, moved)
        return memo[name]

    return walk(entry)


def step_cost(case, n_columns: int) -> dict:
    """Kernels per step and bytes per column-step of one step of ``case`` on one device."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from scm.integration import ColumnTerm, SemiImplicitEuler

    states = jax.tree.map(lambda a: jnp.broadcast_to(a, (n_columns, *a.shape)), case.state0)
    dt = jnp.asarray(case.dt, case.state0.thl.dtype)

    def step(model, states):
        term = ColumnTerm(model, case.forcing)
        return jax.vmap(lambda s: SemiImplicitEuler().step(term, 0.0, dt, s, None, None,
                                                           False)[0])(states)

    compiled = eqx.filter_jit(step).lower(case.model, states).compile()
    compiled = getattr(compiled, "compiled", compiled)  # equinox wraps JAX's object
    kernels, moved = kernels_and_bytes(compiled.as_text())
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    floor = 2 * sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(case.state0))
    return {
        "columns": n_columns,
        "kernels_per_step": kernels,
        "bytes_per_column_step": moved / n_columns,
        "xla_bytes_accessed_per_column_step": analysis.get("bytes accessed", 0.0) / n_columns,
        "flops_per_column_step": analysis.get("flops", 0.0) / n_columns,
        "transcendentals_per_column_step": analysis.get("transcendentals", 0.0) / n_columns,
        "state_floor_bytes_per_column_step": floor,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="gabls1")
    parser.add_argument("--levels", type=int, default=None, help="default: 64 for gabls1")
    parser.add_argument("--columns", type=int, default=1024)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_num_cpu_devices", 1)  # one device: the program of one share
    from experiments.cases import build_case

    levels = args.levels or (64 if args.case == "gabls1" else None)
    case = build_case(args.case, **({"levels": levels} if levels else {}))
    result = {"case": args.case, "levels": case.model.grid.n_levels, **step_cost(case,
                                                                               args.columns)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
