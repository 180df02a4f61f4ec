"""Every Triton kernel compiles for sm_90 (H100/H200), without a GPU.

Runs ``bench/triton_sm90.py --quick --check`` in a subprocess: that script makes a stub Triton
driver (target ``cuda:90``) active and compiles each kernel the host functions launch down to
a cubin with the bundled ptxas. It must not run in this process: the test session runs the
kernels in the Triton interpreter (``TRITON_INTERPRET=1``, set in conftest.py), and the stub
driver and the patched launch must not leak into the other tests. So the subprocess gets the
environment without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "triton_sm90.py"


def _ptxas() -> str:
    """The ptxas Triton runs for sm_90; a missing one fails the test (no GPU needed, no skip)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        tool = get_ptxas(90)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"ptxas for sm_90 not found ({type(e).__name__}: {e}): Triton's wheel ships "
                    "it at triton/backends/nvidia/bin/ptxas-blackwell; set "
                    "TRITON_PTXAS_BLACKWELL_PATH to another one", pytrace=False)
    if tool is None or not os.access(tool.path, os.X_OK):
        pytest.fail(f"ptxas for sm_90 not found or not executable: {getattr(tool, 'path', None)}",
                    pytrace=False)
    return tool.path


def _kernel_names() -> list[str]:
    """The ``*_kernel`` functions the Triton modules define (whatever they are called today)."""
    from fastppo.kernels import gae_triton, ppo_loss_triton

    return sorted(name for mod in (gae_triton, ppo_loss_triton) for name, obj in vars(mod).items()
                  if name.endswith("_kernel") and callable(getattr(obj, "warmup", None)))


def test_every_kernel_compiles_for_sm90():
    _ptxas()
    names = _kernel_names()
    assert names, "no *_kernel Triton functions found in gae_triton / ppo_loss_triton"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f"triton_sm90.py --quick --check failed (rc {proc.returncode}):\n{out[-8000:]}")
    assert "target GPUTarget('cuda', 90, 32)" in out
    missing = [n for n in names if f"| {n} |" not in proc.stdout]
    assert not missing, (f"kernels not compiled by the quick variant set: {missing} (add a host "
                         f"call that launches them to _gae_calls/_ppo_calls):\n{out[-8000:]}")
    assert " 0 compile error(s)" in proc.stdout
