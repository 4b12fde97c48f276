"""The C backend of the fast selective scan: builds csrc/selective_scan.c on first use and runs it.

The source has no torch headers, so the system C compiler builds it in about a second. The shared
library goes to a per-user cache directory, named by a hash of the source, compiler and flags, and
is moved into place atomically, so concurrent processes never load a half-written file. Work is
split into ranges run on a thread pool: ctypes releases the GIL during each call.

`load()` returns None (after one warning) when no compiler exists or the build fails; callers then
use the pure-PyTorch backend (`_chunked.py`).
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).parent / "csrc" / "selective_scan.c"
# Tried in order until one compiles. -fopenmp-simd honours the `#pragma omp simd` hints (it needs no
# OpenMP runtime); -fno-trapping-math lets the loops' conditional expressions vectorise;
# -ffp-contract=fast allows FMA. None changes results beyond float rounding (-ffast-math would: it
# breaks the rounding trick in exp2_f32).
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp-simd", "-fno-trapping-math", "-ffp-contract=fast"],
    ["-O3", "-fopenmp-simd", "-fno-trapping-math", "-ffp-contract=fast"],
    ["-O3"],
)
BASE_FLAGS = ["-std=c99", "-shared", "-fPIC"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_error: str | None = None
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, executor)
# Steps per kernel call. Longer sequences run segment by segment (the forward keeps each segment's
# start state), which bounds the backward's per-thread scratch to about 4 * SEGMENT * N * 8 floats.
SEGMENT = 128


def cache_dir() -> Path:
    """Where built libraries live: $SIGMA_LIGHTNING_CACHE, else $XDG_CACHE_HOME (or ~/.cache)/sigma_lightning."""
    if os.environ.get("SIGMA_LIGHTNING_CACHE"):
        return Path(os.environ["SIGMA_LIGHTNING_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sigma_lightning"


def _private_temp_dir() -> Path:
    """A folder of this user's alone in the temp dir, for where cache_dir() cannot be written."""
    path = Path(tempfile.gettempdir()) / f"sigma_lightning-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.stat()
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        raise OSError(f"{path} belongs to someone else or is writable by others")  # never load from it
    return path


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _build(cc: str, flags: list[str]) -> Path:
    source = SOURCE.read_bytes()
    # The host name guards a cache shared over NFS between machines with different CPUs (-march=native).
    key = hashlib.sha256(
        b"\0".join([source, cc.encode(), " ".join(flags).encode(), platform.machine().encode(), platform.node().encode()])
    ).hexdigest()[:16]
    name = f"selective_scan_{key}.so"
    try:
        return _compile_into(cache_dir(), name, cc, flags)
    except PermissionError:  # read-only home: build in a private temp folder instead
        return _compile_into(_private_temp_dir(), name, cc, flags)


def _compile_into(out_dir: Path, name: str, cc: str, flags: list[str]) -> Path:
    target = out_dir / name
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".build_", suffix=".so")
    os.close(fd)
    try:
        cmd = [cc, *flags, *BASE_FLAGS, str(SOURCE), "-o", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr.strip()[-2000:]}")
        os.replace(tmp, target)  # atomic: readers see the old name absent or the full file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


class _Args(ctypes.Structure):
    """Mirror of `scan_args` in csrc/selective_scan.c."""

    _fields_ = [
        (name, ctypes.c_void_p)
        for name in "u dt z At Bm Cm Dv h0 out last dout dlast du ddt dz dh0 dA dD dB dC".split()
    ] + [(name, ctypes.c_int64) for name in "D L N G sLD sLN".split()]


def _declare(lib: ctypes.CDLL) -> None:
    for fn in (lib.ss_fwd, lib.ss_bwd):
        fn.argtypes = [ctypes.POINTER(_Args), ctypes.c_int64, ctypes.c_int64]
        fn.restype = None
    for fn in (lib.ss_width, lib.ss_args_size):
        fn.argtypes = []
        fn.restype = ctypes.c_int64
    if lib.ss_args_size() != ctypes.sizeof(_Args):
        raise RuntimeError("csrc/selective_scan.c's scan_args and _cscan._Args differ")


def load() -> ctypes.CDLL | None:
    """The compiled library, building it on the first call; None (one warning) if that fails."""
    global _lib, _tried, _error
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        cc = _compiler()
        errors = []
        if cc is None:
            errors.append("no C compiler found (set CC or install cc/gcc/clang)")
        else:
            for flags in FLAG_SETS:
                try:
                    lib = ctypes.CDLL(str(_build(cc, flags)))
                    _declare(lib)
                    _lib = lib
                    break
                except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                    errors.append(str(e))
        if _lib is None:
            _error = "; ".join(errors)
            warnings.warn(
                "sigma_lightning: could not build the C selective scan, using the slower pure-PyTorch "
                f"scan instead. Reason: {_error}",
                RuntimeWarning,
                stacklevel=3,
            )
        _tried = True
    return _lib


def _run(fn, args: _Args, n_items: int, per_item_cost: int) -> None:
    """Call fn(args, start, stop) over [0, n_items) split into ranges, on torch's thread count."""
    global _pool
    workers = max(1, min(torch.get_num_threads(), n_items, 1 + (n_items * per_item_cost) // 50_000))
    ref = ctypes.byref(args)
    if workers == 1:
        fn(ref, 0, n_items)
        return
    if _pool is None or _pool[0] != os.getpid() or _pool[1] != workers:  # new after fork or resize
        _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="sigma_scan"))
    n_ranges = min(n_items, 4 * workers)
    bounds = [n_items * i // n_ranges for i in range(n_ranges + 1)]
    futures = [_pool[2].submit(fn, ref, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    for f in futures:
        f.result()


def _ptr(t: Tensor | None, offset: int = 0) -> int | None:
    """Address of element `offset` of a contiguous float32 tensor (None stays NULL)."""
    return None if t is None else t.data_ptr() + 4 * offset


def forward(u: Tensor, dt: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor, D: Tensor | None, z: Tensor | None):
    """u, dt, z: (B, L, D); A: (D, N); Bt, Ct: (B, L, N); D: (D,); float32 contiguous CPU tensors.
    Returns out (B, L, D), the last state (B, D, N) and the states at the starts of segments 1, 2, ...
    ((n_segments - 1, B, D, N), None for one segment), which the backward starts from."""
    lib = load()
    b, L, d = u.shape
    n = A.shape[1]
    At = A.t().contiguous()  # (N, D)
    out = torch.empty_like(u)  # (B, L, D)
    blocks = -(-d // lib.ss_width())
    h, starts = None, []
    for s in range(0, L, SEGMENT):
        steps = min(SEGMENT, L - s)
        last = u.new_empty(b, d, n)  # (B, D, N)
        args = _Args(
            u=_ptr(u, s * d), dt=_ptr(dt, s * d), z=_ptr(z, s * d), At=_ptr(At), Bm=_ptr(Bt, s * n),
            Cm=_ptr(Ct, s * n), Dv=_ptr(D), h0=_ptr(h), out=_ptr(out, s * d), last=_ptr(last),
            D=d, L=steps, N=n, G=1, sLD=L * d, sLN=L * n,
        )  # fmt: skip
        _run(lib.ss_fwd, args, b * blocks, steps * n * lib.ss_width())
        if s + steps < L:
            starts.append(last)
        h = last
    return out, h, torch.stack(starts) if starts else None


def backward(u, dt, A, Bt, Ct, D, z, starts: Tensor | None, dout: Tensor, dlast: Tensor | None):
    """Gradients (du, ddt, dA, dBt, dCt, dD, dz) of `forward`, in the layouts of its inputs."""
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
    dA_part = u.new_zeros(b, n, d)  # (B, N, D)
    dD_part = u.new_zeros(b, d)  # (B, D)
    dB_part = u.new_empty(b, g, L, n)  # (B, G, L, N)
    dC_part = u.new_empty(b, g, L, n)
    seg_starts = list(range(0, L, SEGMENT))
    dh = dlast  # dLoss/d(state at the end of the current segment)
    for i in reversed(range(len(seg_starts))):
        s = seg_starts[i]
        steps = min(SEGMENT, L - s)
        h0 = starts[i - 1] if i > 0 else None
        dh0 = u.new_empty(b, d, n) if i > 0 else None  # (B, D, N)
        args = _Args(
            u=_ptr(u, s * d), dt=_ptr(dt, s * d), z=_ptr(z, s * d), At=_ptr(At), Bm=_ptr(Bt, s * n),
            Cm=_ptr(Ct, s * n), Dv=_ptr(D), h0=_ptr(h0), dout=_ptr(dout, s * d), dlast=_ptr(dh),
            du=_ptr(du, s * d), ddt=_ptr(ddt, s * d), dz=_ptr(dz, s * d), dh0=_ptr(dh0), dA=_ptr(dA_part),
            dD=_ptr(dD_part), dB=_ptr(dB_part, s * n), dC=_ptr(dC_part, s * n),
            D=d, L=steps, N=n, G=g, sLD=L * d, sLN=L * n,
        )  # fmt: skip
        _run(lib.ss_bwd, args, b * g, -(-blocks // g) * steps * n * lib.ss_width())
        dh = dh0
    dB, dC = (dB_part[:, 0], dC_part[:, 0]) if g == 1 else (dB_part.sum(1), dC_part.sum(1))  # (B, L, N)
    dD = dD_part.sum(0) if D is not None else None
    return du, ddt, dA_part.sum(0).t(), dB, dC, dD, dz
