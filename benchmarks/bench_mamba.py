"""Time and peak memory of the Mamba block and its selective scan, forward + backward.

    python benchmarks/bench_mamba.py                 # full table (several minutes on 2 cores)
    python benchmarks/bench_mamba.py --quick         # B 256, L 50 only
    python benchmarks/bench_mamba.py --threads 1 --cpu-time   # steadier on a shared machine
    python benchmarks/bench_mamba.py --graph-breaks [--compile-backend inductor]  # torch.compile

Compares, at the papers' sizes (d_model 64, d_state 32, expand 2 -> d_inner 128):
  * the bare scan: `fast` (C kernel), `fast[torch]` (its pure-PyTorch fallback) and `reference`
    (the eager sequential loop, `selective_scan_reference`), on (B, D, L) inputs as mamba_ssm takes
    them, with the block's values at initialisation (A = -(1..N), step sizes 0.001-0.1);
  * the whole block: ours with scan_impl="fast" / "reference", and mambapy's MambaBlock
    (pure PyTorch, parallel scan that materialises (B, L, d_inner, d_state)).
Every measurement runs in its own process (so peak RSS is its own), after one warm-up call; the time
is the median of the timed calls, memory is the peak RSS above the process's RSS before the first
call. A process capped at --mem-limit-gb of extra address space reports "OOM" instead of taking the
machine down. Results go to docs/mamba.md by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
D_MODEL, D_STATE, EXPAND = 64, 32, 2
PAPER_SIZES = [(256, 50), (256, 200), (2048, 50), (2048, 200)]
LONG_SIZES = [(16, L) for L in (200, 400, 800, 1600, 3200)]
SCAN_IMPLS = ["fast", "fast[torch]", "reference"]
BLOCK_IMPLS = ["fast", "reference", "mambapy"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cap_memory(extra_gb: float) -> None:
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = vm + int(extra_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def child(
    kind: str, impl: str, batch: int, L: int, repeats: int, seed: int, threads: int | None, cpu_time: bool
) -> dict:
    """One measurement in this process: fwd+bwd of the scan or block."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    from sigma_lightning.nn.mamba import Mamba
    from sigma_lightning.ops.selective_scan import fast_backend, selective_scan, set_fast_backend

    if impl == "fast[torch]":
        set_fast_backend("torch")

    d_inner = EXPAND * D_MODEL
    if kind == "scan":
        # The block's regime at initialisation: A = -(1..N), softplus(delta + bias) around 0.001-0.1.
        u, z = (torch.randn(batch, d_inner, L, requires_grad=True) for _ in range(2))
        delta = (0.5 * torch.randn(batch, d_inner, L)).requires_grad_()
        A = -torch.arange(1.0, D_STATE + 1).repeat(d_inner, 1).requires_grad_()
        B, C = (torch.randn(batch, D_STATE, L, requires_grad=True) for _ in range(2))
        dt = torch.exp(torch.empty(d_inner).uniform_(math.log(1e-3), math.log(1e-1)))
        bias = (dt + torch.log(-torch.expm1(-dt))).requires_grad_()  # softplus^-1(dt)
        D = torch.ones(d_inner, requires_grad=True)
        scan_impl = impl.split("[")[0]

        def step():
            out = selective_scan(u, delta, A, B, C, D, z, bias, True, impl=scan_impl)
            out.sum().backward()

    else:
        if impl == "mambapy":
            from mambapy.mamba import MambaBlock, MambaConfig

            cfg = MambaConfig(d_model=D_MODEL, n_layers=1, d_state=D_STATE, expand_factor=EXPAND)
            block = MambaBlock(cfg)
        else:
            block = Mamba(D_MODEL, d_state=D_STATE, expand=EXPAND, scan_impl=impl)
        x = torch.randn(batch, L, D_MODEL, requires_grad=True)

        def step():
            block(x).sum().backward()

    clock = time.process_time if cpu_time else time.perf_counter
    base = _rss_mb()
    times = []
    try:
        t0 = clock()
        step()  # warm-up (also builds the C kernel if needed)
        first = clock() - t0
        n = repeats if first < 5 else max(1, min(repeats, 2))  # slow ones: fewer repeats
        for _ in range(n):
            t0 = clock()
            step()
            times.append(clock() - t0)
    except (RuntimeError, MemoryError) as e:
        if "memory" in str(e).lower() or isinstance(e, MemoryError):
            return {"error": "OOM"}
        raise
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB on Linux
    return {
        "ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "peak_mb": peak - base,
        "backend": fast_backend("cpu") if impl.startswith("fast") else "",
    }


def measure(kind, impl, batch, L, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, impl, str(batch), str(L), "--repeats", str(args.repeats)]
    cmd += ["--seed", str(args.seed), "--mem-limit-gb", str(args.mem_limit_gb)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--cpu-time"] if args.cpu_time else []
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout>{args.timeout}s"}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": "OOM" if "memory" in tail.lower() else f"failed: {tail[:80]}"}
    return json.loads(lines[-1])


def fmt_time(r: dict) -> str:
    return r["error"] if "error" in r else f"{r['ms']:.0f}"


def fmt_mem(r: dict) -> str:
    return "-" if "error" in r else f"{r['peak_mb']:.0f}"


def ratio(r: dict, base: dict) -> str:
    if "error" in r or "error" in base:
        return "-"
    return f"{r['ms'] / base['ms']:.1f}x"


def table(kind: str, impls: list[str], sizes, args) -> None:
    head = ["B", "L"] + [f"{i} ms" for i in impls] + [f"{i} / fast" for i in impls[1:]] + [f"{i} MB" for i in impls]
    clock = "process CPU time" if args.cpu_time else "wall clock"
    print(f"\n{kind}: forward + backward, median ms ({clock}); peak MB above the process's start\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for batch, L in sizes:
        rs = {i: measure(kind, i, batch, L, args) for i in impls}
        row = [str(batch), str(L)] + [fmt_time(rs[i]) for i in impls]
        row += [ratio(rs[i], rs[impls[0]]) for i in impls[1:]] + [fmt_mem(rs[i]) for i in impls]
        print("| " + " | ".join(row) + " |", flush=True)


def graph_breaks(compile_backend: str) -> None:
    """torch._dynamo.explain's graph and break counts for the block's forward (with and without a
    padding mask) per fast-scan backend, and whether torch.compile(fullgraph=True) of the block
    equals eager in outputs and every gradient."""
    import torch
    import torch._dynamo

    from sigma_lightning.nn.mamba import Mamba
    from sigma_lightning.ops.selective_scan import use_fast_backend

    torch.manual_seed(0)
    block = Mamba(D_MODEL, d_state=D_STATE, expand=EXPAND)
    cases = [(4, 20, False), (4, 20, True), (2, 7, False)]  # (B, L, with a padding mask)
    for backend in ("auto", "torch"):
        for batch, L, masked in cases:
            x = torch.randn(batch, L, D_MODEL, requires_grad=True)
            m = torch.arange(L).expand(batch, L) >= (L // 3 if masked else 0)  # (B, L), left padding
            m = m if masked else None
            with use_fast_backend(backend):
                torch._dynamo.reset()
                e = torch._dynamo.explain(block)(x, m)
                t0 = time.perf_counter()
                out_c = torch.compile(block, backend=compile_backend, fullgraph=True)(x, m)
                grads_c = torch.autograd.grad(out_c.pow(2).sum(), [x, *block.parameters()])
                seconds = time.perf_counter() - t0
                out_e = block(x, m)
                grads_e = torch.autograd.grad(out_e.pow(2).sum(), [x, *block.parameters()])
            diff = max((a - b).abs().max().item() for a, b in zip((out_c, *grads_c), (out_e, *grads_e)))
            print(f"fast backend {backend}, B {batch}, L {L}, mask {masked}: graphs {e.graph_count}, graph breaks "
                  f"{e.graph_break_count}; {compile_backend} fullgraph fwd+bwd {seconds:.1f} s, "
                  f"max |compiled - eager| over output and gradients {diff:.1e}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="only B 256, L 50")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mem-limit-gb", type=float, default=6.0, help="extra address space per measurement")
    p.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    p.add_argument(
        "--cpu-time", action="store_true", help="time = the process's CPU time, not wall clock (with --threads 1: "
        "steadier where other processes share the cores)"
    )
    p.add_argument("--graph-breaks", action="store_true", help="count torch.compile graph breaks of the block")
    p.add_argument("--compile-backend", default="aot_eager", help="torch.compile backend for --graph-breaks")
    p.add_argument("--child", nargs=4, metavar=("KIND", "IMPL", "B", "L"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, impl, batch, L = args.child
        _cap_memory(args.mem_limit_gb)
        res = child(kind, impl, int(batch), int(L), args.repeats, args.seed, args.threads, args.cpu_time)
        print(json.dumps(res))
        return
    if args.graph_breaks:
        graph_breaks(args.compile_backend)
        return

    import torch

    from sigma_lightning.ops.selective_scan import fast_backend

    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# bench_mamba: {time.strftime('%Y-%m-%d %H:%M')}, {cpu}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, fast backend: {fast_backend('cpu')}, "
          f"seed {args.seed}, load average at start {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"# d_model {D_MODEL}, d_state {D_STATE}, expand {EXPAND} (d_inner {EXPAND * D_MODEL})")
    sizes = [(256, 50)] if args.quick else PAPER_SIZES
    table("scan", SCAN_IMPLS, sizes, args)
    table("block", BLOCK_IMPLS, sizes, args)
    if not args.quick:
        table("block, long sequences", BLOCK_IMPLS, LONG_SIZES, args)
    print(f"\n# load average at end {os.getloadavg()[0]:.1f} (other processes share this machine)")


if __name__ == "__main__":
    main()
