"""Keep freed memory in the process instead of returning it to the kernel (glibc only).

Every step of an update rule allocates a few dozen temporaries of n_rows × 3
floats (SafeLBFGS also two histories of n_rows × 100 × 3 and their products).
glibc serves blocks above its mmap threshold (128 kB, ~5,000 atoms; 32 MB at
most) with a fresh ``mmap`` whose pages the kernel must fault in and zero, and
each free gives them back: in a profile at 32,000 atoms inside LAMMPS that was
about half of Frankenstein's time per step, and a 77 MB SafeLBFGS product took
49 ms in fresh pages against 9 ms in reused memory. So every block comes from
the heap (``M_MMAP_MAX`` = 0) and the heap keeps up to ``trim_threshold`` bytes
of freed memory: the same memory serves step after step. Where a block sits
changes no number (PyTorch aligns every block to 64 bytes either way).
:meth:`atomopt.core.minimizer.Minimizer.init` calls it, so every front end gets it. Set
``ATOMOPT_KEEP_MALLOC=1`` in the environment to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_done = False


def retain_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Serve every block from glibc's heap and keep up to ``trim_threshold`` bytes of freed memory, once per process;
    ``False`` where that is not possible."""
    global _done
    if _done or os.environ.get("ATOMOPT_KEEP_MALLOC") == "1":
        return _done
    try:
        libc = ctypes.CDLL("libc.so.6")
        _done = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    except (OSError, AttributeError):  # not glibc
        _done = False
    return _done
