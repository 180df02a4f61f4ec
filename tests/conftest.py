"""Test-session setup.

Triton kernels are tested on the CPU through the Triton interpreter, which must be switched on
before any kernel is defined, so it is set here, before anything imports fastppo.kernels.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
