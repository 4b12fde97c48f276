"""Two builds of the C kernels on the same selective scan, in one process: forward and backward
seconds of each, rounds alternating between them, and the candidate's time over the baseline's.

    git worktree add /tmp/base <commit>
    PYTHONPATH=/tmp/base python -m sigma_lightning.ops.build | head -1   # kernel: <baseline .so>
    python benchmarks/bench_scan_builds.py --baseline <baseline .so> --read --threads 1

The candidate is this checkout's build unless `--candidate` names another library. Both run through
this checkout's Python code (`selective_scan`), so the builds must share its calling convention
(`_cscan._Args`). The shapes default to SIGMA's last layer on Beauty: a batch of 2048 sequences of
50 steps, d_inner 128, d_state 32; `--read` reads one step per row (the last), as the last layer
does, where the default reads every step. Every position is real. The gradients of the two builds
are compared (float rounding apart, they must agree).

Not a test: numbers depend on the machine and its load. Medians, minima and the median of each
round's ratio ("paired": the two builds' calls of a round run back to back) of CPU seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sigma_lightning.cpu_memory import keep_freed_memory
from sigma_lightning.ops import _cscan
from sigma_lightning.ops.selective_scan import selective_scan

NAMES = ("u", "dt", "A", "B", "C", "D", "dt_bias")


def scan_inputs(batch: int, length: int, d_inner: int, d_state: int, read: bool) -> dict:
    """Seeded inputs in the Mamba block's layouts, leaves that require grad."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {
        "u": r(batch, length, d_inner).requires_grad_(),
        "dt": (0.5 * r(batch, length, d_inner) - 1.0).requires_grad_(),
        "A": (-torch.exp(0.5 * r(d_inner, d_state))).requires_grad_(),
        "B": r(batch, length, d_state).requires_grad_(),
        "C": (r(batch, d_state) if read else r(batch, length, d_state)).requires_grad_(),
        "D": r(d_inner).requires_grad_(),
        "dt_bias": (0.5 * r(d_inner)).requires_grad_(),
    }


def step(x: dict, read: bool) -> tuple[float, float, list[torch.Tensor]]:
    """(forward CPU s, backward CPU s, gradients) of one scan as the Mamba block calls it."""
    batch, length = x["u"].shape[:2]
    mask = torch.ones(batch, length, dtype=torch.bool)
    start = time.thread_time()
    out = selective_scan(
        x["u"].transpose(1, 2), x["dt"].transpose(1, 2), x["A"], x["B"].transpose(1, 2),
        x["C"] if read else x["C"].transpose(1, 2), x["D"], None, x["dt_bias"], True, step_mask=mask,
        extents=torch.full((batch,), length), read=torch.full((batch,), length - 1) if read else None,
    )  # fmt: skip
    middle = time.thread_time()
    grads = torch.autograd.grad(out.sum(), [x[k] for k in NAMES])
    return middle - start, time.thread_time() - middle, list(grads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="path of the baseline build's .so")
    parser.add_argument("--candidate", help="path of the candidate build's .so (default: this checkout's)")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--d-inner", type=int, default=128)
    parser.add_argument("--d-state", type=int, default=32)
    parser.add_argument("--read", action="store_true", help="read one step per row (the last layer's scan)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    candidate = args.candidate or str(_cscan.status().built.path)
    libs = {"baseline": _cscan.open_library(args.baseline), "candidate": _cscan.open_library(candidate)}
    print(f"torch {torch.__version__}, threads {args.threads}, batch {args.batch}, length {args.length}, "
          f"d_inner {args.d_inner}, d_state {args.d_state}, read {args.read}\n"
          f"baseline {args.baseline}\ncandidate {candidate}")  # fmt: skip
    x = scan_inputs(args.batch, args.length, args.d_inner, args.d_state, args.read)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in libs}
    grads = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, lib in libs.items():
            _cscan._status = _cscan.Status(lib, None, None)
            forward, backward, grads[name] = step(x, args.read)
            if round_:
                times[name].append((forward, backward))
    for name, t in times.items():
        for i, part in enumerate(("forward", "backward")):
            values = [r[i] for r in t]
            print(f"  {name:<9} {part:<8} median {statistics.median(values):.4f} s, min {min(values):.4f} s")
    for i, part in enumerate(("forward", "backward")):
        paired = statistics.median(c[i] / b[i] for c, b in zip(times["candidate"], times["baseline"]))
        print(f"  candidate / baseline, {part}: median of rounds' ratios {paired:.3f}")
    for name, c, b in zip(NAMES, grads["candidate"], grads["baseline"]):
        torch.testing.assert_close(c, b, rtol=1e-4, atol=1e-4 * (b.abs().max().item() + 1e-6),
                                   msg=lambda m, name=name: f"d{name}: {m}")  # fmt: skip
    print("  the two builds' gradients agree (rtol 1e-4)")


if __name__ == "__main__":
    main()
