"""A benchmark of this checkout beside the same benchmark of an earlier commit, alternating
the two in one run, so that the ratio holds on a shared machine whose speed drifts.

    python benchmarks/compare.py --base 24e4a5c --rounds 2 throughput.py -- --columns 64 1024
    python benchmarks/compare.py --base 24e4a5c training.py -- --steps 1000
    python benchmarks/compare.py --base 24e4a5c hlo.py

The base commit is checked out into a temporary git worktree. Each round runs the script of
the base checkout, then the script of this one (``throughput.py`` and ``training.py``: each
checkout's own, as a user of that commit would run it; ``hlo.py``: this checkout's script on
each checkout's package, since it reads the compiled program through the public API only).
Every figure is the best over the rounds. Writes ``results/<name>_<device>_vs_<base>.json``
and ``.md`` (``--tag`` adds a suffix): both checkouts' figures and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run(script: str, checkout: Path, args: list[str], out: Path) -> dict:
    """Run ``script`` of ``checkout`` (``hlo.py``: this checkout's, on that package) and
    return its JSON result."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(checkout))
    if script == "hlo.py":
        command = [sys.executable, str(HERE / script), *args, "--json", str(out / "hlo.json")]
    else:
        command = [sys.executable, str(checkout / "benchmarks" / script), *args,
                   "--output", str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=checkout, env=env, text=True, capture_output=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    print(f"  {checkout.name}: {script} in {time.perf_counter() - start:.0f} s", flush=True)
    found = sorted(out.glob("*.json"))
    return json.loads(found[0].read_text())


def best(values):
    values = [v for v in values if v is not None]
    return min(values) if values else None


def summarize(script: str, runs: dict) -> list[dict]:
    """Rows (what, unit, base, new, new/base or base/new for times) from every round."""
    rows = []

    def add(what, unit, pick, lower_is_better):
        base = [pick(r) for r in runs["base"]]
        new = [pick(r) for r in runs["new"]]
        if lower_is_better:
            b, n = best(base), best(new)
            ratio = None if not (b and n) else b / n
        else:
            b = best([-v for v in base if v is not None])
            n = best([-v for v in new if v is not None])
            b, n = (None if b is None else -b), (None if n is None else -n)
            ratio = None if not (b and n) else n / b
        rows.append({"what": what, "unit": unit, "base": b, "new": n, "speed-up": ratio,
                     "base_rounds": base, "new_rounds": new})

    def find(rows_, key, value):
        return next((r for r in rows_ if r.get(key) == value), None)

    if script == "throughput.py":
        first = runs["new"][0]
        for row in first["rollout"]:
            c = row["columns"]
            add(f"column-steps/s, {c} columns", "1/s",
                lambda r, c=c: (find(r["rollout"], "columns", c) or {}).get(
                    "column_steps_per_s"), False)
        for row in first["rollout"]:
            c = row["columns"]
            add(f"first call, {c} columns", "s",
                lambda r, c=c: (find(r["rollout"], "columns", c) or {}).get("first_call_s"),
                True)
        def gradient_row(r, c, wrt):  # rows without the field: with respect to "all"
            return next((g for g in r["gradient"] if g["columns"] == c
                         and g.get("with_respect_to", "all") == wrt), {})

        for row in first["gradient"]:
            c, wrt = row["columns"], row.get("with_respect_to", "all")
            label = "" if wrt == "all" else f" ({wrt})"
            for key, what, unit in (("forward_s", "forward", "s"), ("gradient_s", "gradient", "s"),
                                    ("gradient_compile_s", "gradient compile", "s"),
                                    ("gradient_over_forward", "gradient / forward", "")):
                if wrt != "all" and key == "forward_s":
                    continue
                add(f"{row['steps']}-step {what}{label}, {c} columns", unit,
                    lambda r, c=c, wrt=wrt, key=key: gradient_row(r, c, wrt).get(key), True)
    elif script == "training.py":
        first = runs["new"][0]
        for name in first["training"]:
            add(f"online training, {name}: iterations/s", "1/s",
                lambda r, name=name: r["training"].get(name, {}).get("iterations_per_s"),
                False)
        for name, grads in first["gradient"].items():
            for row in grads:
                k = row["rollout_steps"]
                for key, what, lower in (
                        ("gradient_over_forward", "gradient / forward", True),
                        ("gradient_temp_bytes", "gradient working memory (bytes)", True)):
                    add(f"{name}, K = {k}: {what}", "",
                        lambda r, name=name, k=k, key=key: (find(
                            r["gradient"].get(name, []), "rollout_steps", k) or {}).get(key),
                        lower)
    else:
        for key in ("kernels_per_step", "bytes_per_column_step",
                    "xla_bytes_accessed_per_column_step", "flops_per_column_step",
                    "transcendentals_per_column_step"):
            add(key.replace("_", " "), "", lambda r, key=key: r.get(key), True)
        rows.append({"what": "state floor bytes per column-step", "unit": "B",
                     "base": runs["base"][0]["state_floor_bytes_per_column_step"],
                     "new": runs["new"][0]["state_floor_bytes_per_column_step"],
                     "speed-up": None})
    return rows


def markdown(result: dict) -> str:
    lines = [f"# {result['script']}: {result['new_commit']} against {result['base_commit']}",
             "", f"{result['date']}; {result['rounds']} rounds, alternating (base first); "
             f"arguments `{' '.join(result['arguments']) or '(defaults)'}`; load average at "
             f"start {', '.join(f'{x:.2f}' for x in result['load_average_at_start'])}. "
             "Best of the rounds; the last column is the new figure's advantage (higher "
             "rate or lower time / count: > 1 is better).", "",
             f"| | {result['base_commit']} | {result['new_commit']} | advantage |",
             "|---|---:|---:|---:|"]
    for row in result["rows"]:
        def fmt(v):
            return "–" if v is None else f"{v:.3g}"
        lines.append(f"| {row['what']} | {fmt(row['base'])} | {fmt(row['new'])} | "
                     f"{fmt(row['speed-up'])} |")
    return "\n".join(lines) + "\n"


def commit_of(checkout: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, text=True,
                          capture_output=True).stdout.strip() or "unknown"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("script", choices=["throughput.py", "training.py", "hlo.py"])
    parser.add_argument("arguments", nargs="*", help="arguments of the script (after --)")
    parser.add_argument("--base", default="24e4a5c", help="commit to compare against")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tag", default="")
    parser.add_argument("--output", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            runs = {"base": [], "new": []}
            load = list(os.getloadavg())
            for index in range(args.rounds):
                print(f"round {index + 1} of {args.rounds}", flush=True)
                for label, checkout in (("base", base), ("new", ROOT)):
                    runs[label].append(run(args.script, checkout, args.arguments,
                                           Path(scratch) / f"{label}{index}"))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT,
                           capture_output=True)
    environment = runs["new"][0].get("environment", {})
    device = environment.get("device_kind", "cpu") if environment.get("platform",
                                                                       "cpu") != "cpu" else "cpu"
    result = {
        "script": args.script, "arguments": args.arguments, "rounds": args.rounds,
        "base_commit": args.base, "new_commit": commit_of(ROOT),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_average_at_start": load,
        "environment": environment, "rows": summarize(args.script, runs), "runs": runs,
    }
    name = Path(args.script).stem
    slug = device.lower().replace(" ", "-")
    stem = args.output / f"{name}_{slug}_vs_{args.base}{'_' + args.tag if args.tag else ''}"
    args.output.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
