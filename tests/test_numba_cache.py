"""The Numba kernels' on-disk cache: it works when the package sits in a read-only directory (a
regular install into a system site-packages): Numba then caches in the user's cache directory,
so the second process loads what the first compiled; ``numba_cached`` tells, before a kernel's
first call, whether that call compiles."""

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import fastppo.kernels

# Imports the kernels as the package ``rokernels`` (a copy in a read-only directory) and calls
# the Numba GAE; prints the cache hits and misses of the module's kernels.
SCRIPT = textwrap.dedent("""
    import torch
    import rokernels
    from rokernels import gae_numba

    T, N = 16, 3
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(T, N, generator=g), torch.randn(T, N, generator=g)
    done = torch.rand(T, N, generator=g) < 0.2
    rokernels.gae(rewards, values, done, torch.zeros_like(done), torch.zeros(N), gamma=0.99,
                  lam=0.95, backend="numba")
    kernels = [f for f in vars(gae_numba).values() if hasattr(f, "stats")]
    print(sum(len(k.stats.cache_hits) for k in kernels),
          sum(len(k.stats.cache_misses) for k in kernels))
""")


def _read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_cache_works_from_a_read_only_install(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(Path(fastppo.kernels.__file__).parent, site / "rokernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
    _read_only(site)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE")}
    env.update(PYTHONPATH=str(site), XDG_CACHE_HOME=str(tmp_path / "cache"),
               HOME=str(tmp_path / "home"), PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-c", SCRIPT]
    if os.geteuid() == 0:  # root writes anywhere: drop the capabilities that let it
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to test a read-only install as root"
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"] + command
    try:
        runs = [subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
                for _ in range(2)]
        for run in runs:
            assert run.returncode == 0, run.stderr[-2000:]
        (hits1, misses1), (hits2, misses2) = [map(int, r.stdout.split()) for r in runs]
        assert misses1 >= 1 and hits1 == 0  # the first process compiled ...
        assert hits2 == misses1 and misses2 == 0  # ... and the second loaded every kernel
        assert not list(site.rglob("*.nbi"))  # nothing was written next to the sources
        assert list((tmp_path / "cache").rglob("*.nbi"))
    finally:
        for path in [site, *site.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


NUMBA_CACHED_SCRIPT = """
import numpy as np
from numba import njit
from fastppo.kernels.numba_cache import numba_cached

@njit(cache=True)
def twice(x):
    return 2 * x

before = numba_cached(twice)
twice(np.ones(3))
print(before, numba_cached(twice))
"""


def test_numba_cached_tells_a_cold_cache_from_a_warm_one(tmp_path):
    """What decides train's "compiling the Numba kernels" line: false before the first compile
    on a machine (a fresh cache), true once the compiled code is on disk, also for a new
    process."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    script = tmp_path / "script.py"  # Numba caches functions of files, not of -c strings
    script.write_text(NUMBA_CACHED_SCRIPT)
    runs = [subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                           text=True, timeout=120) for _ in range(2)]
    assert [r.stdout.split() for r in runs] == [["False", "True"], ["True", "True"]], \
        runs[0].stderr[-2000:]
