"""Every case in its default configuration, measured against its published ranges, and the
moist cases at half and double their default vertical resolution.

For each case of ``experiments.cases`` with published ranges, runs the default configuration
(float64, one column) and evaluates the case's own ``measure`` (the numbers the tests assert
and the plots mark); with ``--resolutions`` also at half and double the default number of
levels. Writes ``benchmarks/results/cases.json`` and ``cases.md`` (the README's case table).
Run from the repository root: ``python benchmarks/cases.py [--resolutions]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

from experiments import cases  # noqa: E402
from experiments.run import case_dataset, run_case  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MOIST = ("bomex", "dycoms_rf01", "rico")


def measure(name: str, levels: int | None = None) -> dict:
    """Run a case (default configuration, or ``levels`` levels) and measure it."""
    start = time.perf_counter()
    case = cases.build_case(name, levels=levels)
    dataset = case_dataset(case, run_case(case, progress=False))
    values = cases.definition(name).measure(dataset)
    return {"levels": case.model.grid.n_levels, "seconds": time.perf_counter() - start,
            "failed": bool((dataset["failed_at"].notnull()).any()),
            "values": {k: float(v) for k, v in values.items()}}


def markdown(results: dict) -> str:
    """The README's table: each case, its measured values beside the published ranges."""
    lines = ["| case | quantity | measured | published range | |",
             "|---|---|---:|---|---|"]
    for name, result in results["cases"].items():
        definition = cases.definition(name)
        for published in definition.ranges:
            value = result["default"]["values"][published.name]
            inside = "✓" if published.contains(value) else "✗"
            lines.append(f"| `{name}` | {published.text} | {value:.4g} | "
                         f"{published.low:g} – {published.high:g} {published.units} | "
                         f"{inside} |")
    text = "\n".join(lines) + "\n"
    resolved = {n: r for n, r in results["cases"].items() if "resolutions" in r}
    if resolved:
        text += "\nAt half, default and double vertical resolution (✗: outside the range):\n\n"
        text += "| case | quantity | " + " | ".join(["half", "default", "double"]) + " |\n"
        text += "|---|---|---:|---:|---:|\n"
        for name, result in resolved.items():
            runs = [result["resolutions"]["half"], result["default"],
                    result["resolutions"]["double"]]
            for published in cases.definition(name).ranges:
                cells = []
                for run in runs:
                    value = run["values"][published.name]
                    mark = "" if published.contains(value) else " ✗"
                    cells.append(f"{value:.4g}{mark} ({run['levels']} levels)")
                text += f"| `{name}` | {published.name} | " + " | ".join(cells) + " |\n"
    return text


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", action="store_true",
                        help="also run the moist cases at half and double resolution")
    parser.add_argument("--cases", nargs="*", help="only these cases")
    parser.add_argument("--output", default=str(RESULTS), help="output directory")
    args = parser.parse_args(argv)
    names = [n for n in cases.CASE_NAMES if cases.definition(n).ranges]
    if args.cases:
        names = [n for n in names if n in args.cases]
    results = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "cases": {}}
    for name in names:
        entry = {"default": measure(name)}
        print(name, entry["default"]["values"], f"{entry['default']['seconds']:.1f} s",
              flush=True)
        if args.resolutions and name in MOIST:
            levels = cases.definition(name).levels
            entry["resolutions"] = {"half": measure(name, levels // 2),
                                    "double": measure(name, 2 * levels)}
            for key, run in entry["resolutions"].items():
                print(f"  {key} ({run['levels']} levels)", run["values"], flush=True)
        results["cases"][name] = entry
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cases.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "cases.md").write_text(markdown(results))
    return results


if __name__ == "__main__":
    main()
