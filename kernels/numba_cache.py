"""Whether Numba's on-disk cache (``cache=True``) already holds a kernel, asked before its first
call.

    numba_cached(dispatcher)   # False: the first call compiles; True: it loads from the cache

Numba offers no public query for this: ``Dispatcher.stats`` counts cache hits and misses only
after a call, and the public ``load_overload`` of its cache needs the exact signature. The one
reach into Numba's internals is therefore here, in one function: the dispatcher's cache index,
read as the dispatcher itself reads it before compiling (an index whose Numba version or source
stamp does not match the current source reads as empty).
"""

from __future__ import annotations

__all__ = ["numba_cached"]


def numba_cached(dispatcher) -> bool:
    """Whether Numba's on-disk cache holds a compiled version of the ``@njit(cache=True)``
    ``dispatcher`` for its current source. Unknown (another Numba layout, no usable cache)
    counts as cached: the answer only decides whether a caller announces a compile."""
    try:
        return bool(dispatcher._cache._cache_file._load_index())
    except (AttributeError, OSError):
        return True
