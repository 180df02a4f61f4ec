"""bench/harness.py's result files and bench/tables.py's render: a run written by the harness
renders back to the table the benchmark printed, and every generated table in bench/README.md
is its fresh render (a table edited by hand, or not regenerated after its result file
changed, fails here: run ``python bench/tables.py``)."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import tables  # noqa: E402


def test_a_saved_run_renders_the_printed_table(tmp_path, capsys):
    columns = [harness.Column("case", "case", align=""),
               harness.Column("ms", "time (ms)", ".3f"),
               harness.Column("speedup", "vs eager", ".2f", "x"),
               harness.Column("sps", "steady SPS", ",.0f")]
    table = harness.Table(columns)
    table.add(case="cat-256x18", ms=0.5871, speedup=4.6, sps=36095.4)
    table.add(case="**fastppo**", ms=None, speedup="n/a", sps=1214)
    printed = capsys.readouterr().out.strip()
    assert printed.splitlines()[2] == "| cat-256x18 | 0.587 | 4.60x | 36,095 |"
    assert printed.splitlines()[3] == "| **fastppo** | | n/a | 1,214 |"

    sitting = harness.Sitting("python bench/x.py", "2026-12-07T21:00:00+00:00",
                              {"cpu": "test"}, 0.1)
    path = tmp_path / "x.json"
    harness.save_run("x", "cpu", table, sitting, path)
    harness.save_run("x", "cpu", table, sitting, path)  # the same id again replaces it
    [run] = harness.load_results(path)["runs"]
    assert run["id"] == "cpu-2026-12-07T2100" and run["command"] == "python bench/x.py"
    assert tables.render_run(run) == printed

    readme = f"intro\n<!-- table:x#{run['id']} -->\nstale\n<!-- /table -->\nend\n"
    assert tables.stale_tables(readme, tmp_path) == [f"<!-- table:x#{run['id']} -->"]
    fresh = tables.render(readme, tmp_path)
    assert fresh == f"intro\n<!-- table:x#{run['id']} -->\n{printed}\n<!-- /table -->\nend\n"
    assert tables.stale_tables(fresh, tmp_path) == []


def test_bench_readme_tables_are_generated():
    text = tables.README.read_text()
    assert tables.MARKER.search(text)
    assert tables.stale_tables(text) == []


def test_every_result_file_run_renders():
    """Each run in bench/results/*.json has an id, a date, a command, a machine and columns
    that name every key of its rows (gpu_check.json, which the GPU check may write there, is
    its own report)."""
    files = sorted(p for p in harness.RESULTS_DIR.glob("*.json") if p.name != "gpu_check.json")
    assert files
    for path in files:
        for run in harness.load_results(path)["runs"]:
            assert {"id", "date", "command", "machine", "columns", "rows"} <= set(run), path
            keys = {c["key"] for c in run["columns"]}
            assert all(set(row) <= keys for row in run["rows"]), (path, run["id"])
            assert tables.render_run(run).count("\n") == len(run["rows"]) + 1
