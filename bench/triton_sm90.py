"""Compile every Triton kernel variant the host functions launch, for sm_90, without a GPU.

    python bench/triton_sm90.py                 # the full variant set: table of every variant
    python bench/triton_sm90.py --check         # same, exit 1 on any compile error
    python bench/triton_sm90.py --quick --check # one variant per kernel and a few more (tests)
    python bench/triton_sm90.py --json rows.json

Hopper (H100/H200) is ``GPUTarget("cuda", 90, 32)``. No GPU is needed: a stub Triton driver
(``triton.runtime.driver.driver.set_active``) reports that target, device 0 and stream 0, so
``JITFunction.run`` builds its binder for sm_90 and the NVIDIA backend lowers each kernel through
TTIR, TTGIR, LLVM IR and PTX and runs the bundled ptxas for ``sm_90a`` (the real cubin is built).
Nothing is ever loaded or launched: while the stub is active, ``kernel[grid](...)`` (the
``KernelInterface.__getitem__`` every JIT function, autotuner and heuristics object inherits)
is replaced by ``kernel.warmup(..., grid=grid)`` with the same arguments, which compiles (or hits
the in-process cache) and returns the compiled kernel. So the host functions
(``gae_triton``, ``forward_categorical``, ``backward_categorical``, ``forward_gaussian``,
``backward_gaussian``) run unchanged on CPU tensors and whatever they launch, with whatever
arguments, constexprs and block sizes they pick today, gets compiled: nothing here knows a
kernel's signature. Only the tensors' dtypes, data_ptr alignment and the integer values
(specialization: 1, divisible by 16) reach the compiler.

Variants are deduplicated by the specialization key (``knobs.runtime.jit_cache_hook`` sees the
key before each compilation; one key compiles once, in-process cache hits are counted as
launches). For each compiled kernel the table gives its constexprs (specialized integers
included, e.g. a stride of 1), a summary of the pointer types, num_warps, and what
``ptxas -v --gpu-name=sm_90a`` reported while building its cubin (``knobs.nvidia.dump_ptxas_log``,
whose print is captured; a kernel from the disk cache, or ``--rerun-ptxas``, gets ptxas -v run
again on ``compiled.asm["ptx"]`` with Triton's flags): registers per thread, spill stores/loads
and stack bytes; smem is Triton's ``metadata.shared``. A kernel that needs more shared memory
than an sm_90 block can have (227 KiB) would fail at launch and counts as an error too.

``TRITON_INTERPRET`` must be off in this process (run as a script, it is removed from the
environment before Triton is imported). The Triton cache is a fresh temporary directory unless
``--cache-dir`` is given, so every variant is really compiled. ``--results PATH`` appends the
folded table (one row per kernel, dtype and block sizes) to a result file (``bench/harness.py``),
from which ``bench/tables.py`` renders bench/README.md's per-kernel summary.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Column, Table, markdown_table, save_run, start_sitting  # noqa: E402

ARCH = 90
SM90_MAX_SHARED = 232448  # bytes of shared memory one block can have on sm_90 (227 KiB)
PTXAS_INFO = re.compile(r"Used (\d+) registers")
PTXAS_SPILL = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


# ----------------------------------------------------------------------------- the stub driver

class _StubUtils:
    """The part of ``driver.utils`` compilation may ask for: H100/H200 device properties."""

    def get_device_properties(self, device):
        return {"max_shared_mem": SM90_MAX_SHARED, "max_num_regs": 65536,
                "multiprocessor_count": 132, "warpSize": 32, "sm_clock_rate": 1980000,
                "mem_clock_rate": 2619000, "mem_bus_width": 5120}

    def load_binary(self, *args, **kwargs):
        raise RuntimeError("triton_sm90 stub driver: there is no GPU to load a kernel on")

    def unload_module(self, *args, **kwargs):
        pass


def make_stub_driver(arch: int = ARCH):
    """A Triton driver whose target is ``GPUTarget("cuda", arch, 32)``; it cannot launch."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    class Sm90StubDriver(DriverBase):
        def __init__(self):
            super().__init__()
            self.target = GPUTarget("cuda", arch, 32)
            self.utils = _StubUtils()

        @classmethod
        def is_active(cls):
            return False  # never picked by Triton's own driver discovery

        def map_python_to_cpp_type(self, ty):
            raise NotImplementedError("triton_sm90 stub driver builds no launcher")

        def get_current_target(self):
            return self.target

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_current_device(self):
            return 0

        def set_current_device(self, device):
            pass

        def get_current_stream(self, device=None):
            return 0

        def get_device_capability(self, device=None):
            return divmod(arch, 10)

        def get_benchmarker(self):
            raise NotImplementedError("triton_sm90 stub driver: no GPU to benchmark on")

        @property
        def launcher_cls(self):
            raise RuntimeError("triton_sm90 stub driver: kernels are compiled, never launched")

    return Sm90StubDriver()


class _NoCudaDevice:
    """Stands in for ``torch.cuda.device`` / ``device_of``: a no-op context for CPU tensors."""

    def __init__(self, device=None):
        self.device = device

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------- the recorder

@dataclasses.dataclass
class Row:
    kernel: str
    variant: str  # the first host call that compiled it
    key: str
    hash: str = ""
    constexprs: dict = dataclasses.field(default_factory=dict)
    signature: str = ""
    num_warps: int | None = None
    num_stages: int | None = None
    num_ctas: int | None = None
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None
    shared: int | None = None
    launches: int = 1
    compile_s: float = 0.0
    error: str | None = None
    # what ptxas_usage reads; left out of the JSON
    ptx: str = dataclasses.field(default="", repr=False)
    ptxas_log: str = dataclasses.field(default="", repr=False)
    fp_fusion: bool = dataclasses.field(default=True, repr=False)

    def as_json(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("ptx", "ptxas_log", "fp_fusion"):
            d.pop(k)
        return d


def _kernel_name(obj) -> str:
    """The kernel's function name, through autotuner/heuristics wrappers."""
    seen = 0
    while not hasattr(obj, "arg_names") and hasattr(obj, "fn") and seen < 8:
        obj, seen = obj.fn, seen + 1
    fn = getattr(obj, "fn", obj)
    return getattr(fn, "__name__", repr(obj))


def _compiled(ret):
    """The compiled kernels in what ``warmup`` returned (one kernel, or a list for autotune)."""
    if ret is None:
        return []
    if isinstance(ret, (list, tuple)):
        return [k for r in ret for k in _compiled(r)]
    return [ret] if hasattr(ret, "asm") else []


def _fmt_value(v) -> str:
    if v.__class__.__name__ == "dtype":
        return str(v)
    if v.__class__.__name__ == "constexpr":
        v = v.value
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _summarize(kernel) -> tuple[dict, str]:
    """(constexprs by parameter name, compressed pointer-type summary) of a compiled kernel."""
    src = kernel.src
    names = list(getattr(src.fn, "arg_names", []))
    consts = {}
    for path, value in getattr(src, "constants", {}).items():
        path = path if isinstance(path, tuple) else (path,)
        name = names[path[0]] if path and path[0] < len(names) else str(path)
        if len(path) > 1:
            name += "".join(f"[{i}]" for i in path[1:])
        consts[name] = _fmt_value(value)
    types = [t for t in getattr(src, "signature", {}).values()
             if isinstance(t, str) and t.startswith("*")]
    parts = []
    for t in types:  # run-length: *fp32 *fp32 *fp32 -> *fp32x3
        if parts and parts[-1][0] == t:
            parts[-1][1] += 1
        else:
            parts.append([t, 1])
    sig = " ".join(t if n == 1 else f"{t}x{n}" for t, n in parts)
    return consts, sig


class Recorder:
    """Turns launches into compilations and keeps one row per specialization key."""

    def __init__(self):
        self.rows: dict[tuple[str, str], Row] = {}
        self.variant = ""
        self.launched: set[str] = set()
        self._last_key: dict[int, str] = {}
        self._failed: set[tuple[str, str]] = set()

    # knobs.runtime.jit_cache_hook: called with the key before each (in-process) cache miss
    def cache_hook(self, *, key, fn, **_):
        name = fn.name
        self._last_key[id(fn.jit_function)] = key
        if (name, key) in self._failed:
            self.rows[(name, key)].launches += 1
            return True  # skip: it failed to compile already
        return False

    def launch(self, kernel, grid, args, kwargs):
        name = _kernel_name(kernel)
        self.launched.add(name)
        inner = kernel
        while not hasattr(inner, "arg_names") and hasattr(inner, "fn"):
            inner = inner.fn
        self._last_key.pop(id(inner), None)
        t0 = time.perf_counter()
        log = io.StringIO()  # Triton prints its own ptxas -v log there (dump_ptxas_log)
        try:
            with contextlib.redirect_stdout(log):
                ret = kernel.warmup(*args, grid=grid, **kwargs)
        except Exception as e:  # noqa: BLE001 - every compile error is a row
            key = self._last_key.get(id(inner), f"<no key: {type(e).__name__}>")
            if (name, key) not in self.rows:
                msg = "".join(traceback.format_exception_only(type(e), e)).strip()
                self.rows[(name, key)] = Row(name, self.variant, key, error=msg,
                                             compile_s=time.perf_counter() - t0)
                self._failed.add((name, key))
            else:
                self.rows[(name, key)].launches += 1
            return None
        compiled = _compiled(ret)
        fresh = id(inner) in self._last_key
        for k in compiled:
            rkey = self._last_key.get(id(inner)) if fresh and len(compiled) == 1 else None
            rkey = rkey or k.hash
            found = next((r for r in self.rows.values() if r.hash == k.hash), None)
            if found is not None:
                found.launches += 1
                continue
            consts, sig = _summarize(k)
            md = k.metadata
            self.rows[(name, rkey)] = Row(
                name, self.variant, rkey, hash=k.hash, constexprs=consts, signature=sig,
                num_warps=getattr(md, "num_warps", None),
                num_stages=getattr(md, "num_stages", None),
                num_ctas=getattr(md, "num_ctas", None), shared=getattr(md, "shared", None),
                compile_s=time.perf_counter() - t0, ptx=k.asm["ptx"],
                ptxas_log=log.getvalue() if fresh and len(compiled) == 1 else "",
                fp_fusion=getattr(md, "enable_fp_fusion", True))
        return ret[0] if isinstance(ret, list) and len(ret) == 1 else ret


@contextlib.contextmanager
def sm90_stub(recorder: Recorder, arch: int = ARCH):
    """Make the stub driver active and turn every ``kernel[grid](...)`` into a compilation."""
    import torch
    from triton import knobs
    from triton.runtime.driver import driver as cfg  # the DriverConfig JITFunction reads
    from triton.runtime.jit import KernelInterface

    saved_active = cfg._active
    saved_getitem = KernelInterface.__getitem__
    saved_hook = knobs.runtime.jit_cache_hook
    saved_dump = knobs.nvidia.dump_ptxas_log
    saved_cuda = {n: getattr(torch.cuda, n) for n in ("device", "device_of")}

    def getitem(self, grid):
        return lambda *args, **kwargs: recorder.launch(self, grid, args, kwargs)

    cfg.set_active(make_stub_driver(arch))
    KernelInterface.__getitem__ = getitem
    knobs.runtime.jit_cache_hook = recorder.cache_hook
    knobs.nvidia.dump_ptxas_log = True
    for n in saved_cuda:
        setattr(torch.cuda, n, _NoCudaDevice)
    try:
        yield
    finally:
        for n, f in saved_cuda.items():
            setattr(torch.cuda, n, f)
        knobs.runtime.jit_cache_hook = saved_hook
        knobs.nvidia.dump_ptxas_log = saved_dump
        KernelInterface.__getitem__ = saved_getitem
        cfg._active = saved_active


# ----------------------------------------------------------------------------- ptxas -v

def ptxas_tool(arch: int = ARCH):
    """Path of the ptxas Triton uses for ``arch`` (the wheel's bundled one); exits if absent."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        tool = get_ptxas(arch)
    except Exception as e:  # noqa: BLE001
        sys.exit(f"triton_sm90: ptxas not found ({type(e).__name__}: {e}); Triton's wheel ships it "
                 "at triton/backends/nvidia/bin/ptxas[-blackwell] (or set TRITON_PTXAS_PATH / "
                 "TRITON_PTXAS_BLACKWELL_PATH)")
    if tool is None or not os.path.isfile(tool.path) or not os.access(tool.path, os.X_OK):
        sys.exit(f"triton_sm90: ptxas not found or not executable: {getattr(tool, 'path', None)}")
    return tool


def _parse_ptxas(row: Row, log: str) -> bool:
    m, s = PTXAS_INFO.search(log), PTXAS_SPILL.search(log)
    if not (m and s):
        return False
    row.registers = int(m.group(1))
    row.stack, row.spill_stores, row.spill_loads = map(int, s.groups())
    return True


def ptxas_usage(row: Row, ptxas: str, arch: int, workdir: str, rerun: bool = False) -> None:
    """Fill registers/spills/stack of ``row`` from the ``ptxas -v`` log of the compilation that
    built its cubin, or (a kernel from the disk cache, or ``rerun``) from running ptxas -v on
    its PTX again with Triton's flags."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    if not rerun and _parse_ptxas(row, row.ptxas_log):
        return
    ptx = row.ptx
    if not ptx:
        return
    path = os.path.join(workdir, f"k{abs(hash(row.hash))}.ptx")
    with open(path, "w") as f:
        f.write(ptx)
    cmd = [ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2",
           f"--gpu-name={sm_arch_from_capability(arch)}", path, "-o", path + ".o"]
    if not row.fp_fusion:
        cmd.insert(1, "--fmad=false")
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    log = out.stderr + out.stdout
    if out.returncode != 0:
        row.error = f"ptxas -v failed ({out.returncode}): {log.strip()[:2000]}"
        return
    if not _parse_ptxas(row, log):
        row.error = f"ptxas -v printed no register/spill line: {log.strip()[:2000]}"
    for p in (path, path + ".o"):
        if os.path.exists(p):
            os.remove(p)


# ----------------------------------------------------------------------------- the variants

DTYPES = {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16", "fp16": "float16"}


def _gae_calls(quick: bool):
    """(label, thunk) per GAE host call. The host function picks the kernel by shape: many envs
    the env-block kernel, fewer the scan over time, long horizons with few envs the chunked
    (two-phase) scan; the shapes span all three whatever the thresholds are today."""
    import torch
    from fastppo.kernels.gae_contract import Rollout
    from fastppo.kernels.gae_triton import gae_triton

    if quick:
        cases = [("fp32", (128, 4096), True, True), ("bf16", (2048, 1), False, False),
                 ("fp64", (128, 8), True, False), ("fp32", (8, 262144), False, True),
                 ("bf16", (65536, 1), True, False)]
    else:
        shapes = ((128, 4096), (32, 16384), (2048, 1), (128, 8), (4096, 64), (8, 262144),
                  (65536, 1))
        cases = [(dt, shape, nv, vd) for dt in ("fp32", "fp64", "bf16") for shape in shapes
                 for nv in (False, True) for vd in (False, True)]
    for dt, (t, n), nv, vd in cases:
        dtype = getattr(torch, DTYPES[dt])

        def call(dtype=dtype, t=t, n=n, nv=nv, vd=vd):
            def f():
                return torch.empty(t, n, dtype=dtype)

            def flags():
                return torch.zeros(t, n, dtype=torch.bool)

            rollout = Rollout(rewards=f(), values=f(), terminated=flags(), truncated=flags(),
                              next_value=torch.empty(n, dtype=dtype),
                              next_values=f() if nv else None, valid=flags() if vd else None,
                              response_mask=None)
            gae_triton(rollout, 0.99, 0.95)

        yield f"gae {dt} T={t} N={n}{' next_values' if nv else ''}{' valid' if vd else ''}", call


# the loss variants beside the clipped surrogate (label suffix: clip_coef, old params, kl_coef)
PENALTY = {"": (0.2, False, 0.0), "kl": (0.2, True, 0.5), "kl noclip": (None, True, 0.5),
           "noclip": (None, False, 0.0), "kl=0": (0.2, True, 0.0)}


def _rows(b, dtype, cdt, weighted):
    """The ``Rows`` as the public face passes them on: values in the input dtype, the rest in
    the compute dtype."""
    import torch
    from fastppo.kernels.ppo_loss_contract import Rows

    return Rows(*(torch.empty(b, dtype=dtype if i == 2 else cdt) for i in range(5)),
                torch.ones(b, dtype=cdt) if weighted else None)


def _coefs(cv, nz, mode):
    from fastppo.kernels.ppo_loss_contract import Coefs

    clip, _, kl = PENALTY[mode]
    return Coefs(clip, 0.5, 0.01, kl, cv and clip is not None, nz)  # CleanRL's vf, ent


def _ppo_calls(quick: bool):
    """(label, thunk) per PPO-loss host call pair (forward, then backward), calling the backend
    functions (``ppo_loss_contract``'s interface) with data as the public face casts it: old
    policy parameters and row data in the compute dtype."""
    import torch
    from fastppo.kernels import ppo_loss_triton as tri

    pen = ("kl", "kl noclip", "noclip")  # each a new HAS_OLD/KL/CLIP variant of both kernels
    if quick:
        cat = [("bf16", 131072, 16, True, True, True, ""),
               ("fp64", 18, 16, False, False, False, "kl noclip"),
               ("fp32", 18, 2048, False, True, True, "kl")]
        gau = [("fp32", 6, 16, True, True, True, True, ""),
               ("fp16", 17, 16, False, False, False, False, "kl noclip"),
               ("fp32", 6, 64, True, True, True, True, "kl")]
    else:
        widths = (2, 18, 257, 4096, 131072)
        cat = [(dt, a, 16, w, cv, nz, "") for dt in DTYPES for a in widths
               for w in (False, True) for cv in (False, True) for nz in (False, True)]
        cat += [("fp32", 18, 2048, w, cv, nz, "") for w in (False, True) for cv in (False, True)
                for nz in (False, True)]  # an engine minibatch (Atari), the prepare block
        # the penalty: KL on/off, clip on/off, with and without weights; kl_coef=0 (the KL
        # statistic, no gradient term) and the penalty with clip_vloss once per shape
        cat += [(dt, a, 16, w, False, True, m) for dt in DTYPES for a in widths
                for m in pen for w in (False, True)]
        cat += [(dt, a, 16, True, True, True, m) for dt in DTYPES for a in widths
                for m in ("kl", "kl=0")]
        cat += [("fp32", 18, 2048, True, False, True, m) for m in pen]
        gau = [(dt, d, 16, w, cv, nz, ex, "") for dt in DTYPES for d in (1, 6, 17)
               for w in (False, True) for cv in (False, True) for nz in (False, True)
               for ex in (False, True)]
        gau += [("fp32", 6, 64, w, cv, nz, True, "") for w in (False, True)
                for cv in (False, True) for nz in (False, True)]  # HalfCheetah, expanded log-std
        # old mean full, old log-std full or expanded like the log-std
        gau += [(dt, d, 16, w, False, True, ex, m) for dt in DTYPES for d in (1, 6, 17)
                for m in pen for w in (False, True) for ex in (False, True)]
        gau += [(dt, d, 16, True, True, True, True, m) for dt in DTYPES for d in (1, 6, 17)
                for m in ("kl", "kl=0")]
        gau += [("fp32", 6, 64, True, False, True, True, m) for m in pen]
    for dt, a, b, w, cv, nz, mode in cat:
        dtype = getattr(torch, DTYPES[dt])
        cdt = torch.float64 if dtype == torch.float64 else torch.float32

        def call(dtype=dtype, cdt=cdt, a=a, b=b, w=w, cv=cv, nz=nz, mode=mode):
            logits = torch.empty(b, a, dtype=dtype)
            actions = torch.zeros(b, dtype=torch.int64)
            old_logits = torch.empty(b, a, dtype=cdt) if PENALTY[mode][1] else None
            rows, coefs = _rows(b, dtype, cdt, w), _coefs(cv, nz, mode)
            _, stats, row_stats = tri.forward_categorical(logits, actions, old_logits, rows,
                                                          coefs)
            tri.backward_categorical(torch.ones((), dtype=cdt), logits, actions, old_logits,
                                     rows, coefs, stats, row_stats)

        label = (f"categorical {dt} B={b} A={a}{' weights' if w else ''}"
                 f"{' clip_vloss' if cv else ''}{' normalize' if nz else ''}"
                 f"{' ' + mode if mode else ''}")
        yield label, call
    for dt, d, b, w, cv, nz, ex, mode in gau:
        dtype = getattr(torch, DTYPES[dt])
        cdt = torch.float64 if dtype == torch.float64 else torch.float32

        def call(dtype=dtype, cdt=cdt, d=d, b=b, w=w, cv=cv, nz=nz, ex=ex, mode=mode):
            mean = torch.empty(b, d, dtype=dtype)
            log_std = torch.empty(d, dtype=dtype).expand(b, d) if ex else torch.empty(
                b, d, dtype=dtype)
            actions = torch.empty(b, d, dtype=cdt)
            old_mean = old_log_std = None
            if PENALTY[mode][1]:
                old_mean = torch.empty(b, d, dtype=cdt)
                old_log_std = torch.empty(d, dtype=cdt).expand(b, d) if ex else torch.empty(
                    b, d, dtype=cdt)
            rows, coefs = _rows(b, dtype, cdt, w), _coefs(cv, nz, mode)
            _, stats, row_stats = tri.forward_gaussian(mean, log_std, actions, old_mean,
                                                       old_log_std, rows, coefs)
            tri.backward_gaussian(torch.ones((), dtype=cdt), mean, log_std, actions, old_mean,
                                  old_log_std, rows, coefs, stats, row_stats)

        label = (f"gaussian {dt} B={b} D={d}{' weights' if w else ''}"
                 f"{' clip_vloss' if cv else ''}{' normalize' if nz else ''}"
                 f"{' log_std=expanded' if ex else ''}{' ' + mode if mode else ''}")
        yield label, call


def defined_kernels() -> list[str]:
    """Names of the ``*_kernel`` JIT functions the two Triton modules define."""
    from fastppo.kernels import gae_triton, ppo_loss_triton

    names = []
    for mod in (gae_triton, ppo_loss_triton):
        for attr, obj in vars(mod).items():
            if attr.endswith("_kernel") and hasattr(obj, "warmup"):
                names.append(_kernel_name(obj))
    return names


# ----------------------------------------------------------------------------- main

def _columns(*names, left) -> list[Column]:
    """A table's columns, keyed by their names; the first ``left`` left-aligned."""
    return [Column(n, n, align="" if i < left else "right") for i, n in enumerate(names)]


def _table(rows: list[Row]) -> str:
    columns = _columns("kernel", "first variant", "constexprs", "pointers", "warps", "regs",
                       "spill st/ld B", "stack B", "smem B", "launches", left=4)
    out = []
    for r in rows:
        if r.error:
            out.append({"kernel": r.kernel, "first variant": r.variant,
                        "constexprs": "**compile error**", "launches": r.launches})
            continue
        out.append({"kernel": r.kernel, "first variant": r.variant,
                    "constexprs": " ".join(f"{k}={v}" for k, v in r.constexprs.items()),
                    "pointers": r.signature, "warps": r.num_warps, "regs": r.registers,
                    "spill st/ld B": None if r.spill_stores is None
                    else f"{r.spill_stores}/{r.spill_loads}",
                    "stack B": r.stack, "smem B": r.shared, "launches": r.launches})
    return markdown_table(columns, out)


# the folded table's columns: the keys of the rows in bench/results/triton_sm90.json, which
# bench/tables.py's kernel_summary view folds further
GROUPED_COLUMNS = [Column("kernel", "kernel", align=""), Column("loss", "loss", align=""),
                   Column("first_variant", "first variant", align=""),
                   Column("constexprs", "constexprs", align=""), Column("warps", "warps"),
                   Column("variants", "variants"), Column("regs", "regs"),
                   Column("spill", "spill st/ld B"), Column("stack", "stack B"),
                   Column("smem", "smem B")]


_FLAGS = {"weights", "clip_vloss", "normalize", "next_values", "valid", "log_std=expanded",
          "kl", "noclip", "kl=0"}


def _loss_variant(r: Row) -> str:
    """Which PPO loss a row kernel variant computes, from its constexprs: ``clip`` (the clipped
    surrogate), ``clip+kl`` (with the KL penalty), ``kl`` (the penalty, unclipped),
    ``unclipped``; empty for the other kernels."""
    c = r.constexprs
    if "CLIP" not in c:
        return ""
    clip = c["CLIP"] == "True"
    kl = c.get("HAS_OLD", c.get("KL")) == "True"
    return ("clip+kl" if clip else "kl") if kl else ("clip" if clip else "unclipped")


def _grouped(rows: list[Row]) -> list[dict]:
    """One row (``GROUPED_COLUMNS``) per kernel, dtype and block sizes: the variants that differ
    only in boolean constexprs (HAS_W, CLIP_VLOSS, NORMALIZE, HAS_VALID, ...) or integer
    specializations (strides, divisibility) folded together, with the range of their
    registers."""
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        if r.error:
            continue
        consts = tuple((k, v) for k, v in r.constexprs.items()
                       if k.isupper() and v not in ("True", "False"))
        groups.setdefault((r.kernel, _loss_variant(r), consts, r.signature, r.num_warps),
                          []).append(r)
    out = []

    def rng(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return ""
        return str(vals[0]) if min(vals) == max(vals) else f"{min(vals)}-{max(vals)}"

    for (kernel, loss, consts, _, warps), rs in sorted(groups.items(), key=lambda g: g[0][:2]):
        label = " ".join(t for t in rs[0].variant.split() if t not in _FLAGS)
        c = " ".join(f"{k}={v}" for k, v in consts)
        st = rng([r.spill_stores for r in rs])
        ld = rng([r.spill_loads for r in rs])
        out.append({"kernel": kernel, "loss": loss, "first_variant": label, "constexprs": c,
                    "warps": warps, "variants": len(rs), "regs": rng([r.registers for r in rs]),
                    "spill": f"{st}/{ld}", "stack": rng([r.stack for r in rs]),
                    "smem": rng([r.shared for r in rs])})
    return out


def _summary(rows: list[Row]) -> str:
    """One line per kernel and loss variant (``_loss_variant``; a compile error has no
    constexprs, so it counts on a line of its own, loss left empty)."""
    columns = _columns("kernel", "loss", "variants", "errors", "warps", "regs min-max",
                       "max spill st/ld B", "max smem B", left=2)
    out = []
    for name, loss in sorted({(r.kernel, _loss_variant(r)) for r in rows}):
        group = [r for r in rows if r.kernel == name and _loss_variant(r) == loss]
        rs = [r for r in group if not r.error]
        errs = len(group) - len(rs)
        regs = [r.registers for r in rs if r.registers is not None]
        warps = sorted({r.num_warps for r in rs if r.num_warps is not None})
        st = max((r.spill_stores or 0 for r in rs), default=0)
        ld = max((r.spill_loads or 0 for r in rs), default=0)
        sm = max((r.shared or 0 for r in rs), default=0)
        rr = f"{min(regs)}-{max(regs)}" if regs else ""
        out.append({"kernel": name, "loss": loss, "variants": len(group), "errors": errs,
                    "warps": ",".join(map(str, warps)), "regs min-max": rr,
                    "max spill st/ld B": f"{st}/{ld}", "max smem B": sm})
    return markdown_table(columns, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 on any compile error")
    p.add_argument("--quick", action="store_true",
                   help="a small variant set that still launches every kernel (for tests)")
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    p.add_argument("--results", type=Path, default=None,
                   help="append the folded table as a run to this result file (e.g. "
                        "bench/results/triton_sm90.json)")
    p.add_argument("--only", choices=("gae", "categorical", "gaussian"), action="append",
                   help="only these host-call families (repeatable)")
    p.add_argument("--cache-dir", help="Triton cache directory (default: a fresh temporary one)")
    p.add_argument("--arch", type=int, default=ARCH,
                   help="compute capability (default 90; the smem limit checked is sm_90's)")
    p.add_argument("--rerun-ptxas", action="store_true",
                   help="run ptxas -v on each PTX again instead of reading Triton's own log")
    args = p.parse_args(argv)

    sitting = start_sitting(quiet=True)
    tmp = tempfile.TemporaryDirectory(prefix="triton_sm90-")
    os.environ["TRITON_CACHE_DIR"] = args.cache_dir or os.path.join(tmp.name, "cache")
    t_start = time.perf_counter()

    import triton
    from triton import knobs
    if knobs.runtime.interpret:
        sys.exit("triton_sm90: TRITON_INTERPRET is on in this process; run it without")
    ptxas = ptxas_tool(args.arch)
    print(f"triton {triton.__version__}, target GPUTarget('cuda', {args.arch}, 32), ptxas "
          f"{ptxas.version} at {ptxas.path}", flush=True)

    families = args.only or ["gae", "categorical", "gaussian"]
    calls = []
    if "gae" in families:
        calls += list(_gae_calls(args.quick))
    ppo = [c for c in _ppo_calls(args.quick) if c[0].split()[0] in families]
    calls += ppo

    rec = Recorder()
    host_errors = []
    with sm90_stub(rec, args.arch):
        for i, (label, call) in enumerate(calls):
            rec.variant = label
            n0 = len(rec.rows)
            try:
                call()
            except Exception as e:  # noqa: BLE001 - a host function that breaks is an error
                host_errors.append((label, "".join(
                    traceback.format_exception_only(type(e), e)).strip()))
            new = len(rec.rows) - n0
            print(f"[{i + 1}/{len(calls)}] {label}: {new} new variant(s)", flush=True)

    rows = list(rec.rows.values())
    for r in rows:
        if not r.error:
            ptxas_usage(r, ptxas.path, args.arch, tmp.name, args.rerun_ptxas)
        if not r.error and r.shared is not None and r.shared > SM90_MAX_SHARED:
            r.error = (f"needs {r.shared} bytes of shared memory, more than an sm_{args.arch} "
                       f"block can have ({SM90_MAX_SHARED}): the launch would fail")
    rows.sort(key=lambda r: r.kernel)
    errors = [r for r in rows if r.error]

    print()
    print("Every compiled variant:\n")
    print(_table(rows))
    print("\nGrouped (variants that differ only in boolean flags or integer specialization):\n")
    grouped = Table(GROUPED_COLUMNS, echo=False)
    for row in _grouped(rows):
        grouped.add(**row)
    print("\n".join(grouped.markdown()))
    print("\nPer kernel:\n")
    print(_summary(rows))
    never = [] if args.only else [n for n in defined_kernels() if n not in rec.launched]
    if never:
        print(f"\nwarning: kernels defined but never launched by these variants: "
              f"{', '.join(never)}")
    elapsed = time.perf_counter() - t_start
    print(f"\n{len(calls)} host calls, {len(rows)} compiled variants "
          f"({sum(r.launches for r in rows)} launches), {len(errors)} compile error(s), "
          f"{len(host_errors)} host error(s), {elapsed:.1f} s")
    for r in errors:
        print(f"\nCOMPILE ERROR {r.kernel} ({r.variant}):\n{r.error}")
    for label, msg in host_errors:
        print(f"\nHOST ERROR ({label}):\n{msg}")

    if args.results:
        save_run("triton_sm90", f"sm{args.arch}", grouped, sitting, args.results,
                 [f"triton {triton.__version__}, ptxas {ptxas.version}"])
    if args.json:
        data = [r.as_json() for r in rows]
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "triton": triton.__version__,
                       "ptxas": ptxas.version, "rows": data,
                       "host_errors": [{"variant": v, "error": m} for v, m in host_errors],
                       "never_launched": never}, f, indent=1)
    tmp.cleanup()
    if args.check and (errors or host_errors):
        return 1
    return 0


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)  # the interpreter would make the kernels Python
    sys.exit(main())
