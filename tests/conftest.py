"""Test-session setup.

Triton kernels are tested on the CPU through the Triton interpreter, which must be switched on
before any kernel is defined, so it is set here, before anything imports fastppo.kernels.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

# Compiled-graph tests use a fresh Inductor cache per test session, so a cache written by an
# older version of an op's fake implementation can never be replayed.
# The directory is removed when the session that made it ends.
_INDUCTOR_CACHE_DIR = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    import tempfile

    _INDUCTOR_CACHE_DIR = tempfile.mkdtemp(prefix="fastppo-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE_DIR


def pytest_unconfigure(config):
    if _INDUCTOR_CACHE_DIR is not None:
        import shutil

        shutil.rmtree(_INDUCTOR_CACHE_DIR, ignore_errors=True)
