"""Which selective scan runs, chosen once, and one sentence saying which and why.

`scan_impl` (a Mamba block's setting) picks the implementation: "auto" (mamba_ssm's CUDA kernel
where it imports and the tensors are on CUDA, else "fast"), "fast", "reference" or "cuda". The fast
scan has two backends: "c", the compiled kernel (CPU tensors), and "torch", a chunked pure-PyTorch
loop (any device). The fast-backend setting is one of

    "auto"   the C kernel on CPU tensors where it can be built or found, else "torch" (default)
    "c"      the C kernel on CPU tensors, and an error where it cannot be had
    "torch"  the pure-PyTorch loop everywhere (tests, debugging)

set by `set_fast_backend(name)` or, for a block of code, `with use_fast_backend(name):`. Until one
is called, the environment variable SIGMA_LIGHTNING_FAST_SCAN gives it, read once, at the first
scan. torch.compile guards on the setting: changing it makes a compiled model retrace.
`scan_backend_report(device, impl)` says what runs and why (the CLI logs it at the start of a run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from sigma_lightning.errors import ConfigError
from sigma_lightning.ops import _cscan
from sigma_lightning.ops._cuda import cuda_available, cuda_error, cuda_kernels

IMPLS = ("auto", "reference", "fast", "cuda")
FAST_BACKENDS = ("auto", "c", "torch")
FAST_BACKEND_ENV = "SIGMA_LIGHTNING_FAST_SCAN"
PREBUILD = "python -m sigma_lightning.ops.build"
_setting: str | None = None  # None until the first scan or set_fast_backend()


def _checked(name: str, where: str) -> str:
    if name not in FAST_BACKENDS:
        raise ConfigError(f"{where}={name!r} is not a fast-scan backend: use one of {', '.join(FAST_BACKENDS)}.")
    return name


def fast_backend_setting() -> str:
    """The setting ("auto", "c" or "torch"); the environment variable is read on the first call."""
    global _setting
    if _setting is None:
        _setting = _checked(os.environ.get(FAST_BACKEND_ENV, "").strip().lower() or "auto", FAST_BACKEND_ENV)
    return _setting


def set_fast_backend(name: str) -> str:
    """Use `name` ("auto", "c" or "torch") from now on; returns the setting it replaces."""
    global _setting
    previous = fast_backend_setting()
    _setting = _checked(name, "set_fast_backend(name)")
    return previous


@contextmanager
def use_fast_backend(name: str) -> Iterator[None]:
    """`with use_fast_backend("torch"):` runs the block with that setting, then restores the old one."""
    previous = set_fast_backend(name)
    try:
        yield
    finally:
        set_fast_backend(previous)


@torch.compiler.assume_constant_result
def c_kernel_available() -> bool:
    """Whether the C kernel is loaded, building or finding it on the first call (a constant to
    torch.compile: it is found once per process)."""
    return _cscan.load() is not None


def fast_backend(device: torch.device | str = "cpu") -> str:
    """The backend `selective_scan_fast` uses for tensors on `device`: "c" or "torch"."""
    if torch.device(device).type != "cpu":
        return "torch"
    setting = fast_backend_setting()
    if setting != "torch" and c_kernel_available():
        return "c"
    if setting == "c":
        raise RuntimeError(
            f"the fast-scan backend is set to 'c' ({FAST_BACKEND_ENV} or set_fast_backend), but the C "
            f"kernel cannot be had: {_cscan.status().error}. `{PREBUILD}` builds it and says what failed."
        )
    return "torch"


def c_kernels_apply(*tensors: torch.Tensor | None) -> bool:
    """Whether the C kernels (the scan's library: the convolution, the GRU step) run on these
    tensors: float32 on the CPU, outside autocast (there the torch ops' dtypes are the contract),
    with the fast backend "c"."""
    given = [t for t in tensors if t is not None]
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in given)
        and not torch.is_autocast_enabled("cpu")
        and fast_backend("cpu") == "c"
    )


def resolve_impl(impl: str, device: torch.device) -> str:
    """The concrete implementation ("reference", "fast" or "cuda") that `impl` means on `device`."""
    if impl not in IMPLS:
        raise ValueError(f"scan_impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "cuda" if device.type == "cuda" and cuda_available() else "fast"
    return impl


def scan_backend_report(device: torch.device | str = "cpu", impl: str = "auto") -> str:
    """One line: which selective scan a block with `scan_impl=impl` runs on `device`, and why."""
    device = torch.device(device)
    concrete = resolve_impl(impl, device)
    head = f"selective scan (scan_impl={impl!r}, {device.type} tensors):"
    if concrete == "reference":
        return f"{head} the reference loop, slow and memory-hungry, meant for tests"
    if concrete == "cuda":
        error = cuda_error(device)
        return f"{head} {error}" if error else f"{head} mamba_ssm's CUDA kernel"
    if device.type != "cpu":
        why = cuda_kernels().error if device.type == "cuda" else f"no compiled scan exists for {device.type}"
        return f"{head} the pure-PyTorch chunked scan, because mamba_ssm's kernel cannot be used ({why})"
    return f"{head} {_cpu_report()}"


def _cpu_report() -> str:
    setting = fast_backend_setting()
    if setting == "torch":
        return f"the pure-PyTorch scan, because the fast backend is set to 'torch' ({FAST_BACKEND_ENV} or set_fast_backend)"
    status = _cscan.status()
    if status.lib is not None:
        flags = " ".join(status.built.manifest["flags"])
        return f"the C kernel {status.built.path} ({flags})"
    verdict = "fails: the setting 'c' requires the C kernel" if setting == "c" else "the pure-PyTorch scan (several times slower)"
    return (f"{verdict}, because the C kernel could not be built or found: {status.error}. Install a C compiler "
            f"(cc, gcc or clang) or run `{PREBUILD}` where one exists")
