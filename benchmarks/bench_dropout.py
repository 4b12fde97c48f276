"""Dropout on CPU: torch's F.dropout against sigma_lightning.nn.dropout.dropout, forward + backward,
at the shapes a training step drops out (docs/efficiency.md, "Dropout's mask and the last layer of
every Mamba backbone").

    python benchmarks/bench_dropout.py --threads 1 --rounds 7

Each round times both, alternately, on the same input: the forward alone (the mask's draw and the
multiply), and forward + backward of the sum (the backward multiplies by the same mask in both).
The table gives median CPU seconds and the ratios (ours / torch's). Not a test: numbers depend on
the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from sigma_lightning.cpu_memory import keep_freed_memory
from sigma_lightning.nn.dropout import dropout

SHAPES = [(2048, 50, 64), (2048, 50, 256), (512, 200, 64)]  # a step's (B, L, D) and (B, L, 4D) masks


def cpu_seconds(fn, x: torch.Tensor, p: float) -> tuple[float, float]:
    """CPU time of fn(x, p) forward alone, and forward + backward of its sum."""
    start = time.process_time()
    fn(x, p)
    forward = time.process_time() - start
    x = x.detach().requires_grad_()
    start = time.process_time()
    fn(x, p).sum().backward()
    return forward, time.process_time() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per shape (after one warm-up)")
    parser.add_argument("--p", type=float, default=0.3, help="dropout probability (the papers' 0.3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    kept = keep_freed_memory()  # as `sigma fit` does (--malloc keep): no page faults per fresh mask
    fns = {"torch": lambda x, p: F.dropout(x, p, training=True), "ours": lambda x, p: dropout(x, p, training=True)}
    print(f"torch {torch.__version__}, threads {args.threads}, p {args.p}, seed {args.seed}, {args.rounds} rounds, "
          f"freed memory kept: {kept}")
    print(f"{'shape':<14} {'forward: torch s':>16} {'ours s':>7} {'ratio':>6}   {'+ backward: torch s':>19} {'ours s':>7} {'ratio':>6}")
    for shape in SHAPES:
        x = torch.randn(shape)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
        for r in range(args.rounds + 1):
            for name, fn in fns.items():
                seconds = cpu_seconds(fn, x, args.p)
                if r:
                    times[name].append(seconds)
        f = {name: statistics.median(t[0] for t in ts) for name, ts in times.items()}
        fb = {name: statistics.median(t[1] for t in ts) for name, ts in times.items()}
        print(f"{'x'.join(map(str, shape)):<14} {f['torch']:16.4f} {f['ours']:7.4f} {f['ours'] / f['torch']:6.2f}   "
              f"{fb['torch']:19.4f} {fb['ours']:7.4f} {fb['ours'] / fb['torch']:6.2f}")


if __name__ == "__main__":
    main()
