"""Print the GAE benchmark as a markdown table from a pytest-benchmark JSON file.

    python -m pytest bench/bench_gae.py --benchmark-only --benchmark-json=gae.json
    python bench/gae_table.py gae.json

Columns: median time, effective bandwidth (bytes moved / median time), speedup over the
per-step torch loop, and bandwidth as a fraction of the numpy copy measured in the same run.
"""

from __future__ import annotations

import json
import platform
import sys

ORDER = ["torch-loop", "gae[torch]", "gae[numba]", "gae[triton]", "numpy-copy"]


def table(results: dict) -> str:
    rows, checks = {}, None
    for b in results["benchmarks"]:
        info = b["extra_info"]
        if info["impl"] == "argument checks":
            checks = b["stats"]["median"]
            continue
        key = (info["n_envs"], info["n_steps"])
        rows.setdefault(key, {})[info["impl"]] = (b["stats"]["median"], info["bytes"])
    lines = [
        "| shape (N envs x T steps) | implementation | median time | GB/s | vs torch-loop "
        "| vs numpy-copy GB/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (n_envs, n_steps), impls in rows.items():
        loop = impls.get("torch-loop", (None,))[0]
        copy = impls.get("numpy-copy")
        copy_bw = copy[1] / copy[0] if copy else None
        for impl in sorted(impls, key=ORDER.index):
            seconds, nbytes = impls[impl]
            bw = nbytes / seconds
            speedup = f"{loop / seconds:.1f}x" if loop and impl != "numpy-copy" else ""
            frac = f"{bw / copy_bw:.0%}" if copy_bw and impl != "numpy-copy" else ""
            lines.append(
                f"| {n_envs} envs x {n_steps} steps | {impl} | {_fmt(seconds)} "
                f"| {bw / 1e9:.2f} | {speedup} | {frac} |"
            )
    numba = rows.get((4096, 128), {}).get("gae[numba]")
    if checks is not None and numba:
        lines.append("")
        lines.append(f"Always-on argument checks at 4096 envs x 128 steps: {_fmt(checks)}, "
                     f"{checks / numba[0]:.1%} of gae[numba].")
    machine = results.get("machine_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw") or platform.processor()
    lines.append("")
    lines.append(f"Machine: {cpu}, {machine.get('cpu', {}).get('count', '?')} logical CPUs, "
                 f"Python {machine.get('python_version', '?')}; float32 values, bool flags.")
    return "\n".join(lines)


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} us"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(table(json.load(f)))
