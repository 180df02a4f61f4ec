"""The benchmarks' one method: timing, memory, the machine, and result files.

Every script in ``bench/`` measures with these functions, prints its table with
:class:`Table` (one markdown row per measurement, as it is taken) and appends the table as a
*run* to ``bench/results/<benchmark>.json`` with :func:`save_run`; ``bench/tables.py`` renders
the runs that ``bench/README.md`` names into its tables.

A result file is ``{"benchmark": name, "runs": [run, ...]}``; a run is
``{"id", "date", "command", "machine", "columns", "rows"}`` (plus ``"load_avg_1min"`` and
``"notes"`` where known). ``columns`` are :class:`Column` fields; each row maps a column key to
a number (shown with the column's format), a string (shown as it is) or null (an empty cell).

Timing (:func:`per_call_seconds`, :func:`in_turns`, :func:`autorange_seconds`): warm-up calls
first (compilation, first allocations), then rounds of ``calls`` back-to-back calls, the device
synchronized before the clock stops; the statistic over rounds is the minimum (the least
disturbed round) unless a script asks for the median. :func:`median_seconds` (the GPU check):
the median of single calls, CUDA events around each on CUDA; :func:`best_within_seconds` (the
GAE demo): the fastest single call within a time budget. Contenders that are compared run
in turns, round by round, so drift hits them alike. Timings on a loaded machine are worthless:
:func:`start_sitting` warns above a 1-minute load average of 0.5.

Memory: :func:`peak_bytes` (the largest sum of live torch allocations during one call: the
torch profiler on the CPU, ``torch.cuda.max_memory_allocated`` above what was live before on
CUDA) and :func:`rss_peak_bytes` (the process's peak resident set during one call above its
resident set before, Linux: every byte the call touches, the allocator's included).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BUSY_LOAD = 0.5  # 1-minute load average above which timings are flagged


# --------------------------------------------------------------------------- machine
def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and its feature flags (``/proc/cpuinfo``; empty elsewhere)."""
    model, flags = None, []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model is None:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.split()
    except OSError:
        pass
    return model or platform.processor() or platform.machine() or "unknown", flags


def machine_info() -> dict:
    """CPU model, its AVX-512/AMX flags, core counts, thread settings and package versions."""
    import numpy
    import torch

    cpu, flags = cpu_model_and_flags()
    info = {"cpu": cpu, "simd_flags": sorted(f for f in flags if f.startswith(("avx512", "amx"))),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": numpy.__version__,
            "torch_threads": torch.get_num_threads()}
    if hasattr(os, "sched_getaffinity"):
        info["affinity"] = len(os.sched_getaffinity(0))
    for module in ("numba", "triton", "envpool", "gymnasium"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is reported, not fatal
            info[module] = "not installed"
    if info["numba"] != "not installed":
        import numba

        info["numba_threads"] = numba.config.NUMBA_NUM_THREADS
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def describe(machine: dict) -> str:
    """One line: the CPU (and GPU), its flags, the versions and thread counts."""
    cores = f"{machine['cpu_count']} CPUs" + (
        f" (affinity {machine['affinity']})" if machine.get("affinity") else "")
    versions = ", ".join(f"{m} {machine[m]}" for m in
                         ("python", "torch", "numpy", "numba", "triton", "envpool", "gymnasium")
                         if m in machine)
    return (f"{machine['cpu']}, {cores}" + (f", {machine['gpu']}" if "gpu" in machine else "")
            + f"; AVX-512/AMX flags: {' '.join(machine['simd_flags']) or 'none'}; {versions}; "
            f"torch threads {machine['torch_threads']}"
            + (f", numba threads {machine['numba_threads']}" if "numba_threads" in machine
               else ""))


def command_line() -> str:
    """This process's command, as a shell would take it."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


@dataclasses.dataclass(frozen=True)
class Sitting:
    """Where and when a benchmark ran: what a result file records beside its rows."""

    command: str
    date: str
    machine: dict
    load_avg_1min: float


def start_sitting(quiet: bool = False) -> Sitting:
    """This sitting's command, UTC date, machine and 1-minute load; printed unless ``quiet``,
    with a warning when the load says other work is running."""
    sitting = Sitting(command_line(),
                      datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      machine_info(), os.getloadavg()[0])
    if not quiet:
        print(f"command: `{sitting.command}`")
        print(f"date: {sitting.date}")
        print(f"machine: {describe(sitting.machine)}")
        print(f"load average (1 min) at start: {sitting.load_avg_1min:.2f}")
        if sitting.load_avg_1min > BUSY_LOAD:
            print(f"WARNING: 1-minute load average {sitting.load_avg_1min:.2f} > {BUSY_LOAD}: "
                  "other work is running; these timings are worthless as results.")
    return sitting


# --------------------------------------------------------------------------- timing
def synchronizer(device: str) -> Callable[[], None]:
    """What waits for the device's queued work: CUDA's synchronize, nothing on the CPU."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def per_call_seconds(fn: Callable[[], object], *, calls: int = 1, rounds: int = 7,
                     warmup: int = 1, device: str = "cpu",
                     stat: Callable[[list[float]], float] = min) -> float:
    """Seconds per call of ``fn``: ``warmup`` calls, then ``rounds`` rounds of ``calls`` calls,
    each round's mean; ``stat`` (min or statistics.median) over the rounds."""
    return in_turns({"fn": fn}, calls=calls, rounds=rounds, warmup=warmup, device=device,
                    stat=stat)["fn"]


def in_turns(fns: dict[str, Callable[[], object]], *, calls: int = 1, rounds: int = 7,
             warmup: int = 1, device: str = "cpu",
             stat: Callable[[list[float]], float] = min) -> dict[str, float]:
    """:func:`per_call_seconds` of each contender, the contenders taking turns round by round
    (so the machine's drift hits them alike); name -> seconds per call."""
    sync = synchronizer(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            times[name].append((time.perf_counter() - start) / calls)
    return {name: stat(t) for name, t in times.items()}


def autorange_seconds(fn: Callable[[], object], *, repeat: int = 5, device: str = "cpu") -> float:
    """Seconds per call: ``timeit``'s autorange sets the calls per batch (at least 0.2 s), the
    best of ``repeat`` batches."""
    import timeit

    sync = synchronizer(device)

    def call():
        fn()
        sync()

    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=repeat, number=number)) / number


def best_within_seconds(fn: Callable[[], object], *, budget_s: float = 0.5,
                        device: str = "cpu") -> float:
    """The fastest single call of ``fn`` among those that fit in about ``budget_s`` seconds,
    after one warm-up call."""
    sync = synchronizer(device)
    fn()
    sync()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def median_seconds(fn: Callable[[], object], *, device: str = "cpu",
                   budget_s: float = 0.5) -> float:
    """Median seconds per call after 3 warm-up calls, as many calls (5 to 50) as fit in about
    ``budget_s``: on CUDA an event pair around each call, the calls queued back to back and the
    events read after one synchronize; on the CPU ``time.perf_counter`` around each call."""
    import torch

    cuda = str(device).startswith("cuda")
    sync = synchronizer(device)
    for _ in range(3):
        fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    reps = int(min(50, max(5, budget_s / (time.perf_counter() - start))))
    if cuda:
        events = [[torch.cuda.Event(enable_timing=True) for _ in "be"] for _ in range(reps)]
        for begin, end in events:
            begin.record()
            fn()
            end.record()
        sync()
        return statistics.median(b.elapsed_time(e) for b, e in events) / 1e3
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------- memory
def peak_bytes(fn: Callable[[], object], device: str = "cpu") -> int:
    """Peak bytes of torch allocations during one call of ``fn`` above those live before it:
    ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the largest running sum of the
    allocations and frees the torch profiler records, in order."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage),
                    key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def rss_peak_bytes(fn: Callable[[], object]) -> tuple[object, int]:
    """``fn()``'s result and the process's peak resident set during it above the resident set
    before it (Linux: ``clear_refs`` resets the high-water mark VmHWM)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_bytes("VmRSS")
    result = fn()
    return result, _status_bytes("VmHWM") - before


# --------------------------------------------------------------------------- tables
@dataclasses.dataclass(frozen=True)
class Column:
    """A table column: its row key, header, number format (``format`` spec plus ``suffix``,
    e.g. ``",.0f"`` or ``".2f"`` + ``"x"``) and alignment (``"right"`` or ``""``: markdown's
    default)."""

    key: str
    header: str
    fmt: str = ""
    suffix: str = ""
    align: str = "right"


def format_cell(value, column: Column) -> str:
    """A cell's text: a number in the column's format, a string as it is, null as empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return format(value, column.fmt) + column.suffix


def markdown_rows(columns: list[Column], rows: list[dict]) -> list[str]:
    """The markdown lines of ``rows`` (each a dict by column key; a missing key is empty)."""
    return ["|" + "|".join(f" {cell} " if cell else " " for cell in
                           (format_cell(row.get(c.key), c) for c in columns)) + "|"
            for row in rows]


def markdown_header(columns: list[Column]) -> list[str]:
    return ["| " + " | ".join(c.header for c in columns) + " |",
            "|" + "|".join("---:" if c.align == "right" else "---" for c in columns) + "|"]


def markdown_table(columns: list[Column], rows: list[dict]) -> str:
    return "\n".join(markdown_header(columns) + markdown_rows(columns, rows))


class Table:
    """A table that prints its header, then each row as it is added (the benchmark's stdout),
    and keeps the rows for :func:`save_run`."""

    def __init__(self, columns: list[Column], echo: bool = True):
        self.columns, self.rows, self.echo = list(columns), [], echo
        if echo:
            print("\n".join(markdown_header(self.columns)), flush=True)

    def markdown(self) -> list[str]:
        return markdown_header(self.columns) + markdown_rows(self.columns, self.rows)

    def add(self, **row) -> dict:
        unknown = set(row) - {c.key for c in self.columns}
        if unknown:
            raise KeyError(f"no column {sorted(unknown)}")
        self.rows.append(row)
        if self.echo:
            print(markdown_rows(self.columns, [row])[0], flush=True)
        return row


# --------------------------------------------------------------------------- result files
def results_path(benchmark: str) -> Path:
    return RESULTS_DIR / f"{benchmark}.json"


def load_results(path: Path) -> dict:
    """A result file's content (an empty one for a file not there yet)."""
    if not path.exists():
        return {"benchmark": path.stem, "runs": []}
    return json.loads(path.read_text())


def make_run(run_id: str, table: Table, sitting: Sitting, notes: list[str] = ()) -> dict:
    run = {"id": run_id, "date": sitting.date, "command": sitting.command,
           "machine": sitting.machine, "load_avg_1min": round(sitting.load_avg_1min, 2),
           "columns": [dataclasses.asdict(c) for c in table.columns], "rows": table.rows}
    if notes:
        run["notes"] = list(notes)
    return run


def append_run(path: Path, run: dict) -> None:
    """Append ``run`` to the result file at ``path`` (a run with the same id is replaced)."""
    data = load_results(path)
    data["runs"] = [r for r in data["runs"] if r["id"] != run["id"]] + [run]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def save_run(benchmark: str, name: str, table: Table, sitting: Sitting,
             path: Path | None = None, notes: list[str] = ()) -> Path:
    """Append the table as run ``<name>-<UTC date and time>`` to ``path`` (default
    ``bench/results/<benchmark>.json``); returns the path written."""
    path = path or results_path(benchmark)
    stamp = sitting.date[:16].replace(":", "")
    append_run(path, make_run(f"{name}-{stamp}", table, sitting, notes))
    print(f"results: appended run {name}-{stamp} to {path}")
    return path


def add_results_options(parser) -> None:
    """``--results PATH`` / ``--no-save``: where a benchmark appends its run."""
    parser.add_argument("--results", type=Path, default=None,
                        help="result file to append this run to (default "
                             "bench/results/<benchmark>.json)")
    parser.add_argument("--no-save", action="store_true", help="print only, write no results")


def save_from_args(args, benchmark: str, name: str, table: Table, sitting: Sitting,
                   notes: list[str] = ()) -> None:
    """:func:`save_run` unless ``--no-save``."""
    if not args.no_save:
        save_run(benchmark, name, table, sitting, args.results, notes)
