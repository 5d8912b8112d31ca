"""Plot decode and prefill tokens/s per runtime from benchmarks/results/*.json.

    python benchmarks/plot_results.py                       # -> docs/benchmarks.png
    python benchmarks/plot_results.py --out figures.png --benchmark cpu_bench

Each results file is one benchmark run (date, commit, cpu, threads,
onnxruntime, command, rows; docs/BENCHMARKS.md describes the fields). The plot
has two panels, decode and 512-token prefill tokens/s, one line per runtime and
variant over the runs in date order (runs without a figure leave a gap).

matplotlib is not a dependency of the package and is not in the project's
venv: install it where you run this (``pip install matplotlib``). Reading and
summarising the files needs only the standard library (``--table``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
DEFAULT_OUT = os.path.join(os.path.dirname(HERE), "docs", "benchmarks.png")


def load_runs(folder: str, benchmark: str) -> List[dict]:
    """The runs of one benchmark in ``folder``, oldest first (date, then run_of_day)."""
    runs = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as f:
            run = json.load(f)
        if run.get("benchmark") != benchmark:
            continue
        run["_file"] = os.path.basename(path)
        runs.append(run)
    runs.sort(key=lambda r: (r.get("date", ""), r.get("run_of_day", 0), r["_file"]))
    return runs


def series(runs: List[dict], field: str) -> Dict[str, List[Tuple[int, float]]]:
    """{"runtime variant": [(run index, value), ...]} for rows that give ``field``."""
    out: Dict[str, List[Tuple[int, float]]] = {}
    for i, run in enumerate(runs):
        for row in run.get("rows", []):
            value = row.get(field)
            if value is None:
                continue
            name = f"{row['runtime']} {row['variant']}"
            out.setdefault(name, []).append((i, float(value)))
    return out


def run_label(run: dict) -> str:
    """X-axis label of one run: its date and commit."""
    return f"{run.get('date', '?')}\n{run.get('commit') or '-'}"


def print_table(runs: List[dict]) -> None:
    """One line per run and row, without matplotlib."""
    for run in runs:
        print(f"{run['_file']}: {run.get('cpu')}, {run.get('threads')} threads, "
              f"onnxruntime {run.get('onnxruntime')}\n  {run.get('command')}")
        for row in run.get("rows", []):
            print(f"    {row['runtime']:<18} {row['variant']:<28} decode {row.get('decode_tok_s')!s:>6}"
                  f"  prefill {row.get('prefill_tok_s')!s:>5}  ttft {row.get('ttft_s')}")


def plot(runs: List[dict], out: str, benchmark: str) -> None:
    """Draw the two panels into ``out``."""
    try:
        import matplotlib
    except ImportError:
        sys.exit("plot_results.py needs matplotlib, which is not installed in this Python "
                 f"({sys.executable}) and is not a dependency of edgellm_ros: "
                 "pip install matplotlib (a scratch venv will do), or run with --table")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cpus = sorted({str(r.get("cpu")) for r in runs})
    panels = (("decode_tok_s", "decode tokens/s"), ("prefill_tok_s", "512-token prefill tokens/s"))
    names = sorted({n for field, _ in panels for n in series(runs, field)})
    cmap = plt.get_cmap("tab20")
    color = {n: cmap(i % 20) for i, n in enumerate(names)}  # one colour per series in both panels
    fig, axes = plt.subplots(2, 1, figsize=(12, 8.5), sharex=True)
    for ax, (field, title) in zip(axes, panels):
        for name, points in sorted(series(runs, field).items()):
            xs, ys = zip(*points)
            style = "-o" if name.startswith("edgellm_ros") else "--s"
            ax.plot(xs, ys, style, color=color[name], label=name, markersize=4, linewidth=1.2)
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
    handles = [plt.Line2D([], [], color=color[n], marker="o" if n.startswith("edgellm_ros") else "s",
                          linestyle="-" if n.startswith("edgellm_ros") else "--", label=n) for n in names]
    fig.legend(handles=handles, fontsize=7, loc="center right")
    axes[1].set_xticks(range(len(runs)))
    axes[1].set_xticklabels([run_label(r) for r in runs], fontsize=7, rotation=45, ha="right")
    threads = sorted({str(r.get("threads")) for r in runs})
    fig.suptitle(f"{benchmark}: {'; '.join(cpus)}; {'/'.join(threads)} threads "
                 "(one point per run; gaps: figure not recorded)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.78, 1))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out} ({len(runs)} runs)")


def main(argv=None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=RESULTS, help="folder of results JSON files")
    ap.add_argument("--benchmark", default="cpu_bench", help="which benchmark's runs (the files' 'benchmark')")
    ap.add_argument("--out", default=DEFAULT_OUT, help="PNG to write")
    ap.add_argument("--table", action="store_true", help="print the runs instead of plotting (no matplotlib)")
    args = ap.parse_args(argv)
    runs = load_runs(args.results, args.benchmark)
    if not runs:
        sys.exit(f"no {args.benchmark} runs in {args.results}")
    if args.table:
        print_table(runs)
    else:
        plot(runs, args.out, args.benchmark)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
