"""Keep freed memory inside the process, so that CPU training stops paying page faults every step.

A full-softmax step allocates several (batch, num_items) tensors, each too large for glibc's
malloc heap: malloc serves such a block with a fresh mmap and unmaps it on free, so the kernel
zero-fills every page of it again at the next step. `keep_freed_memory()` tells malloc to serve
every block from its heap and to keep freed memory there (mallopt M_MMAP_MAX=0 and a 1 GiB
M_TRIM_THRESHOLD); the next step reuses it. Results do not change (only where memory comes from);
the process keeps its peak memory instead of handing it back between steps. The page faults and
step times it saves are measured in docs/notes/cpu-memory.md.

It changes the whole process, so nothing calls it on import: the `sigma` command applies it through
its `malloc` setting (`--malloc keep`, the command's default; `--malloc default` leaves malloc as it
is), and `run_sigma` only when asked (`run_sigma(args, malloc="keep")` or `--malloc keep`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from typing import Literal

MallocSetting = Literal["keep", "default"]  # the `malloc` setting of the CLI
# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed memory instead of returning it to the kernel.

    Returns True if the setting took effect; False where it does not apply (not Linux with glibc).
    Affects the whole process, from this call on; there is no undo."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success. Without mmap, malloc grows its heap with brk and falls back to
    # mmap on its own when brk cannot grow, so no allocation fails because of this.
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
