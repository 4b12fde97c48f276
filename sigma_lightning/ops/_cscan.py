"""The C backend of the fast selective scan: loads the library `build.py` builds, and runs it.

The library is found or built on first use (`status()`); `build.find_kernel` checks a cached
library against this machine before it is opened. Work is split into ranges run on a thread pool:
ctypes releases the GIL during each call. Where no library can be had, `status()` holds the
reason, after one warning, and callers use the pure-PyTorch backend (`_chunked.py`).
"""

from __future__ import annotations

import ctypes
import math
import os
import queue
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from sigma_lightning.ops import build

# Steps per kernel call. Longer sequences run segment by segment (the forward keeps each segment's
# start state), which bounds the backward's per-thread scratch to about 4 * SEGMENT * N * 8 floats.
SEGMENT = 128
OUT_OF_MEMORY = 1  # what ss_fwd / ss_bwd return when malloc fails


class Status(NamedTuple):
    """The loaded library and where it came from, or why there is none."""

    lib: ctypes.CDLL | None
    built: build.Built | None
    error: str | None


_lock = threading.Lock()
_status: Status | None = None
_pool_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (threads, executor)


def _forget_pool_after_fork() -> None:
    # A forked child has none of the parent's threads, and a lock another thread held at the fork
    # would stay locked: start afresh.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


class _Args(ctypes.Structure):
    """Mirror of `scan_args` in csrc/selective_scan.c."""

    _fields_ = [
        (name, ctypes.c_void_p)
        for name in "u dt z dtb keep At Bm Cm Dv h0 out last dout dlast du ddt dz dh0 dA dD ddtb dB dC ext read".split()
    ] + [(name, ctypes.c_int64) for name in "D L N G sLD sLN s0 sC sO softplus sLK".split()]


def _declare(lib: ctypes.CDLL) -> None:
    for fn in (lib.ss_fwd, lib.ss_bwd):
        fn.argtypes = [ctypes.POINTER(_Args), ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
        fn.restype = ctypes.c_int64  # 0, or OUT_OF_MEMORY
    for fn in (lib.ss_width, lib.ss_args_size):
        fn.argtypes = []
        fn.restype = ctypes.c_int64
    if lib.ss_args_size() != ctypes.sizeof(_Args):
        raise RuntimeError("csrc/selective_scan.c's scan_args and _cscan._Args differ")


def open_library(path: Path) -> ctypes.CDLL:
    """ctypes.CDLL(path) with its functions declared; RuntimeError if it does not fit this module."""
    lib = ctypes.CDLL(str(path))
    _declare(lib)
    return lib


def status() -> Status:
    """The library, found or built on the first call; its absence warns once, with the reason."""
    global _status
    if _status is None:
        with _lock:
            if _status is None:
                _status = _load()
    return _status


def _load() -> Status:
    try:
        built, lib = build.find_kernel(open_library)
        return Status(lib, built, None)
    except build.BuildError as e:
        warnings.warn(
            "sigma_lightning: no C selective scan, using the slower pure-PyTorch scan instead. "
            f"Reason: {e}. `python -m sigma_lightning.ops.build` builds it and says what failed.",
            RuntimeWarning,
            stacklevel=4,
        )
        return Status(None, None, str(e))


def load() -> ctypes.CDLL | None:
    """The compiled library, or None where it cannot be had (see `status()`)."""
    return status().lib


def declared(prefix: str, args_type: type[ctypes.Structure]) -> ctypes.CDLL:
    """The library, with `<prefix>_fwd` and `<prefix>_bwd` declared as (args*, start, stop, slot) ->
    int64 status (declared on first use), after checking `<prefix>_args_size()` against `args_type`;
    RuntimeError where there is no library."""
    lib = load()
    if lib is None:
        raise RuntimeError(f"the C kernels cannot be had: {status().error}")
    fwd, bwd, size = (getattr(lib, f"{prefix}_{name}") for name in ("fwd", "bwd", "args_size"))
    if fwd.argtypes is None:
        for fn in (fwd, bwd):
            fn.argtypes = [ctypes.POINTER(args_type), ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
            fn.restype = ctypes.c_int64
        size.restype = ctypes.c_int64
        if size() != ctypes.sizeof(args_type):
            raise RuntimeError(f"the C struct {prefix}_args and {args_type.__qualname__} differ")
    return lib


def _executor(threads: int) -> ThreadPoolExecutor:
    """The pool of `threads` threads, new when torch's thread count changed; the pool it replaces is
    shut down (it is idle: every call waits for its ranges). Call with _pool_lock held."""
    global _pool
    if _pool is not None and _pool[0] == threads:
        return _pool[1]
    if _pool is not None:
        _pool[1].shutdown(wait=True)
    _pool = (threads, ThreadPoolExecutor(threads, thread_name_prefix="sigma_scan"))
    return _pool[1]


def _split(n_items: int, per_item_cost: int) -> tuple[int, int]:
    """(workers, ranges) for n_items of work: up to torch's thread count (fewer for small work), and
    more ranges than workers, so that a slow thread holds up less."""
    threads = torch.get_num_threads()
    workers = max(1, min(threads, n_items, 1 + (n_items * per_item_cost) // 50_000))
    return workers, 1 if workers == 1 else min(n_items, 4 * workers)


def n_ranges(n_items: int, per_item_cost: int) -> int:
    """How many ranges `run_in_ranges` cuts this work into now: the slots a kernel's per-range
    partial sums need."""
    return _split(n_items, per_item_cost)[1]


def run_in_ranges(fn, args: ctypes.Structure, n_items: int, per_item_cost: int) -> None:
    """Call fn(args, start, stop, slot) over [0, n_items) split into `n_ranges` ranges, slot being
    the range's index (a kernel that sums over its items adds into its slot's partial sums), on up
    to torch's thread count; MemoryError where the kernel could not allocate its scratch."""
    workers, count = _split(n_items, per_item_cost)
    ref = ctypes.byref(args)
    if workers == 1:
        codes = [fn(ref, 0, n_items, 0)]
    else:
        ranges: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(count):
            ranges.put((n_items * i // count, n_items * (i + 1) // count, i))

        def drain() -> int:
            code = 0
            while not code:
                try:
                    lo, hi, slot = ranges.get_nowait()
                except queue.Empty:
                    break
                code = fn(ref, lo, hi, slot)
            return code

        with _pool_lock:
            futures = [_executor(torch.get_num_threads()).submit(drain) for _ in range(workers)]
        codes = [f.result() for f in futures]
    if OUT_OF_MEMORY in codes:
        raise MemoryError(
            f"the C kernel could not allocate its per-thread scratch in {fn.__name__}; "
            "free memory, or lower the batch size or sequence length"
        )


def _ptr(t: Tensor | None, offset: int = 0) -> int | None:
    """Address of element `offset` of a contiguous float32 tensor (None stays NULL)."""
    return None if t is None else t.data_ptr() + 4 * offset


def _ext(ext: Tensor | None) -> int | None:
    """Address of the rows' extents or read steps, an int64 (B,) contiguous tensor (None stays NULL)."""
    if ext is not None:
        assert ext.dtype == torch.int64 and ext.is_contiguous()
    return None if ext is None else ext.data_ptr()


def _read_layout(read: Tensor | None, s: int, L: int, width: int) -> tuple[int, int]:
    """(offset of segment s, batch stride) of C (width N) or out / dout (width D): (B, L, width) in
    general, (B, width), one read step per row, with `read`."""
    return (0, width) if read is not None else (s * width, L * width)


def n_starts(L: int) -> int:
    """How many segment-start states `forward` keeps for a sequence of L >= 1 steps."""
    return (L - 1) // SEGMENT


def forward(u: Tensor, dt: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor, D: Tensor | None, z: Tensor | None,
            dt_bias: Tensor | None = None, softplus: bool = False, keep: Tensor | None = None,
            ext: Tensor | None = None, read: Tensor | None = None):  # fmt: skip
    """u, dt, z: (B, L, D); A: (D, N); Bt, Ct: (B, L, N); D, dt_bias: (D,); keep: (B, L); float32
    contiguous CPU tensors. The steps are softplus(dt + dt_bias) * keep (without softplus: dt +
    dt_bias; without bias: + 0; without keep: * 1).
    ext (B,) int64 or None: each row's steps from ext[b] on are skipped (output 0, state unchanged).
    read (B,) int64 or None: row b's output is read at step read[b] only; then Ct is (B, N), C at
    that step, out is (B, D), and ext must be <= read + 1 (the caller's `_fast_op` sees to it).
    Returns out (B, L, D), the last state (B, D, N) and the states at the starts of segments 1, 2, ...
    ((n_starts(L), B, D, N)), which the backward starts from."""
    lib = load()
    b, L, d = u.shape
    n = A.shape[1]
    At = A.t().contiguous()  # (N, D)
    out = u.new_zeros(b, d) if read is not None else torch.empty_like(u)  # (B, D) or (B, L, D)
    blocks = -(-d // lib.ss_width())
    h, starts = None, []
    for s in range(0, L, SEGMENT):
        steps = min(SEGMENT, L - s)
        last = u.new_empty(b, d, n)  # (B, D, N)
        (c_at, sC), (o_at, sO) = _read_layout(read, s, L, n), _read_layout(read, s, L, d)
        args = _Args(
            u=_ptr(u, s * d), dt=_ptr(dt, s * d), z=_ptr(z, s * d), At=_ptr(At), Bm=_ptr(Bt, s * n),
            Cm=_ptr(Ct, c_at), Dv=_ptr(D), h0=_ptr(h), out=_ptr(out, o_at), last=_ptr(last), ext=_ext(ext),
            read=_ext(read), dtb=_ptr(dt_bias), keep=_ptr(keep), sLK=L,
            D=d, L=steps, N=n, G=1, sLD=L * d, sLN=L * n, s0=s, sC=sC, sO=sO, softplus=int(softplus),
        )  # fmt: skip
        run_in_ranges(lib.ss_fwd, args, b * blocks, steps * n * lib.ss_width())
        if s + steps < L:
            starts.append(last)
        h = last
    return out, h, torch.stack(starts) if starts else u.new_empty(0, b, d, n)


def backward(u, dt, A, Bt, Ct, D, z, dt_bias, softplus: bool, keep: Tensor | None, starts: Tensor, dout: Tensor,
             dlast: Tensor | None, ext: Tensor | None = None, read: Tensor | None = None):  # fmt: skip
    """Gradients (du, ddt, dA, dBt, dCt, dD, dz, ddt_bias) of `forward`, in the layouts of its inputs
    (with `read`, dout and dCt in its (B, D) and (B, N))."""
    lib = load()
    b, L, d = u.shape
    n = A.shape[1]
    At = A.t().contiguous()  # (N, D)
    blocks = -(-d // lib.ss_width())
    # The channels of one batch row share dB and dC: split their blocks into g groups with their own
    # partial sums, so that there are work items for every thread even at batch 1.
    g = min(blocks, math.ceil(4 * torch.get_num_threads() / b))
    du, ddt = torch.empty_like(u), torch.empty_like(u)  # (B, L, D)
    dz = torch.empty_like(u) if z is not None else None
    cost = -(-blocks // g) * min(SEGMENT, L) * n * lib.ss_width()
    slots = n_ranges(b * g, cost)  # the kernel calls' partial sums of dA, dD and the bias's gradient
    dA_part = u.new_zeros(slots, n, d)  # (slots, N, D)
    dD_part = u.new_zeros(slots, d)  # (slots, D)
    ddt_bias_part = u.new_zeros(slots, d) if dt_bias is not None else None  # (slots, D)
    dB_part = u.new_empty(b, g, L, n)  # (B, G, L, N)
    dC_part = u.new_zeros(b, g, n) if read is not None else u.new_empty(b, g, L, n)  # read: added to
    seg_starts = list(range(0, L, SEGMENT))
    dh = dlast  # dLoss/d(state at the end of the current segment)
    for i in reversed(range(len(seg_starts))):
        s = seg_starts[i]
        steps = min(SEGMENT, L - s)
        h0 = starts[i - 1] if i > 0 else None
        dh0 = u.new_empty(b, d, n) if i > 0 else None  # (B, D, N)
        (c_at, sC), (o_at, sO) = _read_layout(read, s, L, n), _read_layout(read, s, L, d)
        args = _Args(
            u=_ptr(u, s * d), dt=_ptr(dt, s * d), z=_ptr(z, s * d), At=_ptr(At), Bm=_ptr(Bt, s * n),
            Cm=_ptr(Ct, c_at), Dv=_ptr(D), h0=_ptr(h0), dout=_ptr(dout, o_at), dlast=_ptr(dh),
            du=_ptr(du, s * d), ddt=_ptr(ddt, s * d), dz=_ptr(dz, s * d), dh0=_ptr(dh0), dA=_ptr(dA_part),
            dD=_ptr(dD_part), dB=_ptr(dB_part, s * n), dC=_ptr(dC_part, c_at), ext=_ext(ext), read=_ext(read),
            dtb=_ptr(dt_bias), ddtb=_ptr(ddt_bias_part), keep=_ptr(keep), sLK=L,
            D=d, L=steps, N=n, G=g, sLD=L * d, sLN=L * n, s0=s, sC=sC, sO=sO, softplus=int(softplus),
        )  # fmt: skip
        run_in_ranges(lib.ss_bwd, args, b * g, cost)
        dh = dh0
    # (B, L, N); dC (B, N) with `read`
    dB, dC = (dB_part[:, 0], dC_part[:, 0]) if g == 1 else (dB_part.sum(1), dC_part.sum(1))
    dD = dD_part.sum(0) if D is not None else None
    ddt_bias = ddt_bias_part.sum(0) if dt_bias is not None else None
    return du, ddt, dA_part.sum(0).t(), dB, dC, dD, dz, ddt_bias
