"""fastppo.warmup: on a cold Numba cache the minibatch kernels compile in a background process,
and this process then loads them from the cache instead of compiling them."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    from fastppo import warmup
    from fastppo.kernels import mlp_step_numba, optim_numba

    w = warmup.start(continuous=False)
    assert w is not None, "a cold cache must start a background compile"
    assert warmup.start(continuous=False) is w, "one background compile per policy type"
    w.wait()
    assert w.process.returncode == 0, w.process.returncode
    assert warmup.start(continuous=False) is None, "a warm cache starts nothing"
    warmup.compile_minibatch_kernels(continuous=False)
    for kernel in (mlp_step_numba._categorical_step, optim_numba._clip_adam):
        assert kernel.stats.cache_hits and not kernel.stats.cache_misses, kernel.stats
    print("ok")
""")


def test_background_compile_fills_the_cache_this_process_loads(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
