"""Keep freed memory in the process instead of returning it to the kernel (glibc only).

Every step of an update rule allocates a few dozen temporaries of n_rows × 3
floats. Above glibc's mmap threshold (128 kB, ~5,000 atoms) each one is a
fresh ``mmap`` whose pages the kernel must fault in and zero, and each free
gives them back: in a profile at 32,000 atoms inside LAMMPS that was about
half of Frankenstein's time per step. Raising the mmap and trim thresholds
lets the allocator reuse the same heap memory step after step, at the price
of keeping up to ``trim`` bytes of freed memory in the process.
:meth:`atomopt.core.minimizer.Minimizer.init` calls it, so every front end gets it. Set
``ATOMOPT_KEEP_MALLOC=1`` in the environment to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def retain_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap/trim thresholds once per process; ``False`` where that is not possible."""
    global _done
    if _done or os.environ.get("ATOMOPT_KEEP_MALLOC") == "1":
        return _done
    try:
        libc = ctypes.CDLL("libc.so.6")
        _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
        )
    except (OSError, AttributeError):  # not glibc
        _done = False
    return _done
