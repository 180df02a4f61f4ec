"""Print the GAE benchmark as a markdown table from a pytest-benchmark JSON file.

    python -m pytest bench/bench_gae.py --benchmark-only --benchmark-json=gae.json
    python bench/gae_table.py gae.json

Columns: median time, effective bandwidth (bytes moved / median time), speedup over the
per-step torch loop, and bandwidth as a fraction of the numpy copy measured in the same run.
The table is appended to ``bench/results/gae.json`` (``--results``, ``--no-save``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Column, Table, add_results_options, save_from_args, \
    start_sitting  # noqa: E402

ORDER = ["torch-loop", "gae[torch]", "gae[numba]", "gae[triton]", "numpy-copy"]


COLUMNS = [Column("shape", "shape (N envs x T steps)", align=""),
           Column("impl", "implementation", align=""),
           Column("median", "median time", align="right"), Column("gbs", "GB/s", ".2f"),
           Column("vs_loop", "vs torch-loop", ".1f", "x"),
           Column("vs_copy", "vs numpy-copy GB/s", ".0%")]


def table(results: dict) -> tuple[Table, list[str]]:
    """The table of a pytest-benchmark run and the notes below it (argument checks, machine)."""
    rows, checks = {}, None
    for b in results["benchmarks"]:
        info = b["extra_info"]
        if info["impl"] == "argument checks":
            checks = b["stats"]["median"]
            continue
        key = (info["n_envs"], info["n_steps"])
        rows.setdefault(key, {})[info["impl"]] = (b["stats"]["median"], info["bytes"])
    out = Table(COLUMNS, echo=False)
    for (n_envs, n_steps), impls in rows.items():
        loop = impls.get("torch-loop", (None,))[0]
        copy = impls.get("numpy-copy")
        copy_bw = copy[1] / copy[0] if copy else None
        for impl in sorted(impls, key=ORDER.index):
            seconds, nbytes = impls[impl]
            bw = nbytes / seconds
            out.add(shape=f"{n_envs} envs x {n_steps} steps", impl=impl, median=_fmt(seconds),
                    gbs=bw / 1e9, vs_loop=loop / seconds if loop and impl != "numpy-copy" else None,
                    vs_copy=bw / copy_bw if copy_bw and impl != "numpy-copy" else None)
    notes = []
    numba = rows.get((4096, 128), {}).get("gae[numba]")
    if checks is not None and numba:
        notes.append(f"Always-on argument checks at 4096 envs x 128 steps: {_fmt(checks)}, "
                     f"{checks / numba[0]:.1%} of gae[numba].")
    machine = results.get("machine_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw") or platform.processor()
    notes.append(f"Machine: {cpu}, {machine.get('cpu', {}).get('count', '?')} logical CPUs, "
                 f"Python {machine.get('python_version', '?')}; float32 values, bool flags.")
    return out, notes


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} us"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark_json", type=Path, help="pytest-benchmark's --benchmark-json")
    add_results_options(parser)
    args = parser.parse_args(argv)
    sitting = start_sitting(quiet=True)
    out, notes = table(json.loads(args.benchmark_json.read_text()))
    print("\n\n".join(["\n".join(out.markdown()), *notes]))
    save_from_args(args, "gae", "cpu", out, sitting, notes)


if __name__ == "__main__":
    main()
