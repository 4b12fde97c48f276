"""The Mamba block's dt projection on CPU: F.linear's autograd against `narrow_linear`
(sigma_lightning/ops/narrow_linear.py), alone and inside a SIGMA training step.

    python benchmarks/bench_narrow_linear.py --threads 1
    python benchmarks/bench_narrow_linear.py --threads 1 --step 2048 111 --repeats 5

Without --step: forward + backward of the (rows, dt_rank) -> (rows, d_inner) projection for a few
row counts (rows = batch x width). With --step B L: whole SIGMA training steps (ML-100K's 1,682
items, random left-aligned histories of width L) alternating the two, median seconds per step.
Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

import sigma_lightning.nn.mamba as mamba_module
from sigma_lightning.cpu_memory import keep_freed_memory
from sigma_lightning.models import SIGMA
from sigma_lightning.module import SeqRecModule
from sigma_lightning.ops.narrow_linear import narrow_linear
from timing import timed

VARIANTS: dict[str, Callable] = {"F.linear": lambda x, w: F.linear(x, w), "narrow_linear": narrow_linear}


def projection(rows: int, dt_rank: int, d_inner: int, repeats: int) -> None:
    x = torch.randn(rows, dt_rank + 64)[:, :dt_rank].requires_grad_()  # a slice, as in the block
    weight = torch.randn(d_inner, dt_rank, requires_grad=True)
    upstream = torch.randn(rows, d_inner)
    for name, linear in VARIANTS.items():
        ms = 1000 * timed(lambda: torch.autograd.grad(linear(x, weight), (x, weight), upstream), repeats, warmup=1)[0]
        print(f"{rows:>8} {dt_rank:>4} {d_inner:>6} {name:<14} {ms:>9.1f}")


def training_step(batch: int, width: int, repeats: int) -> None:
    torch.manual_seed(0)
    module = SeqRecModule(SIGMA(dropout=0.2), num_items=1682)
    lengths = torch.randint(width // 2, width + 1, (batch,))
    lengths[: batch // 2] = width
    ids = torch.where(torch.arange(width) < lengths[:, None], torch.randint(1, 1683, (batch, width)), 0)
    target = torch.randint(0, 1682, (batch,))

    def step() -> None:
        module.zero_grad()
        F.cross_entropy(module.item_scores(module(ids)), target).backward()

    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    step()
    for _ in range(repeats):  # alternate, so a change of machine load hits both alike
        for name, linear in VARIANTS.items():
            mamba_module.narrow_linear = linear
            times[name].append(timed(step, 1, warmup=1)[0])
    mamba_module.narrow_linear = narrow_linear
    for name, ts in times.items():
        print(f"SIGMA step B={batch} L={width} {name:<14} median {statistics.median(ts):.2f} s  "
              + " ".join(f"{t:.2f}" for t in ts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rows", type=int, nargs="+", default=[12_288, 102_400, 227_328])
    parser.add_argument("--step", type=int, nargs=2, metavar=("B", "L"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}")
    if args.step:
        training_step(*args.step, args.repeats)
        return
    print(f"{'rows':>8} {'in':>4} {'out':>6} {'variant':<14} {'fwd+bwd ms':>9}")
    for rows in args.rows:
        projection(rows, 4, 128, args.repeats)


if __name__ == "__main__":
    main()
