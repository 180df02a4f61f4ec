"""Render bench/README.md's tables from the result files in bench/results/.

    python bench/tables.py            # rewrite every generated table in bench/README.md
    python bench/tables.py --check    # exit 1 (naming them) if a table differs from its render

A generated table sits between two marker comments::

    <!-- table:e2e#cpu-xeon-2026-12-01 -->
    | ... the rendered run ... |
    <!-- /table -->

``e2e`` names ``bench/results/e2e.json`` and ``cpu-xeon-2026-12-01`` a run in it (see
``bench/harness.py`` for the format); ``<!-- table:FILE#RUN view=NAME -->`` renders the run
through one of :data:`VIEWS` (a summary of a long run) instead of whole. Everything between the
markers is replaced, so edit the result file (or rerun the benchmark), never the table.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS_DIR, Column, load_results, markdown_table  # noqa: E402

README = Path(__file__).resolve().parent / "README.md"
MARKER = re.compile(r"^<!-- table:(?P<file>[\w.-]+)#(?P<run>[\w.-]+)(?: view=(?P<view>\w+))? -->"
                    r"\n(?P<body>.*?)^<!-- /table -->$", re.M | re.S)


def find_run(results_dir: Path, file: str, run_id: str) -> dict:
    runs = load_results(results_dir / f"{file}.json")["runs"]
    for run in runs:
        if run["id"] == run_id:
            return run
    raise KeyError(f"{file}.json has no run {run_id!r} (runs: {[r['id'] for r in runs]})")


def _span(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _ints(cell) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", str(cell))]


def kernel_summary(run: dict) -> str:
    """Per kernel and loss: the variants, warps, register range, largest spill and smem of the
    per-variant rows of a ``triton_sm90.py`` run (no row records a compile error)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in run["rows"]:
        groups.setdefault((row["kernel"], row.get("loss", "")), []).append(row)
    columns = [Column("kernel", "kernel", align=""), Column("loss", "loss", align=""),
               Column("variants", "variants"), Column("errors", "errors"),
               Column("warps", "warps"), Column("regs", "regs min-max"),
               Column("spill", "max spill st/ld B"), Column("smem", "max smem B")]
    rows = []
    for (kernel, loss), group in sorted(groups.items()):
        spills = [[max(_ints(side)) for side in str(r["spill"]).split("/")] for r in group]
        rows.append({
            "kernel": kernel, "loss": loss, "variants": sum(r["variants"] for r in group),
            "errors": 0,
            "warps": ",".join(map(str, sorted({w for r in group for w in _ints(r["warps"])}))),
            "regs": _span([n for r in group for n in _ints(r["regs"])]),
            "spill": f"{max(s[0] for s in spills)}/{max(s[1] for s in spills)}",
            "smem": max(n for r in group for n in _ints(r["smem"]))})
    return markdown_table(columns, rows)


VIEWS = {"kernel_summary": kernel_summary}


def render_run(run: dict, view: str | None = None) -> str:
    if view is not None:
        return VIEWS[view](run)
    return markdown_table([Column(**c) for c in run["columns"]], run["rows"])


def render(text: str, results_dir: Path = RESULTS_DIR) -> str:
    """``text`` with every marked table replaced by its render."""
    def one(match: re.Match) -> str:
        run = find_run(results_dir, match["file"], match["run"])
        head = match.group(0).split("\n", 1)[0]
        return f"{head}\n{render_run(run, match['view'])}\n<!-- /table -->"

    return MARKER.sub(one, text)


def stale_tables(text: str, results_dir: Path = RESULTS_DIR) -> list[str]:
    """The markers whose table differs from a fresh render."""
    fresh = {m.group(0).split("\n", 1)[0]: m.group(0) for m in MARKER.finditer(
        render(text, results_dir))}
    return [head for m in MARKER.finditer(text)
            if fresh[head := m.group(0).split("\n", 1)[0]] != m.group(0)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a table is not its fresh render")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    if args.check:
        stale = stale_tables(text)
        for head in stale:
            print(f"stale: {head} (run python bench/tables.py)")
        return 1 if stale else 0
    new = render(text)
    if new != text:
        args.readme.write_text(new)
    print(f"{args.readme}: {len(MARKER.findall(text))} tables rendered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
