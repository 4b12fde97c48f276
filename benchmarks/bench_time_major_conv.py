"""FE-GRU's masked convolution on CPU, forward + backward, in one process, rounds alternating:

* `MaskedConv1d` (nn.Conv1d, mkldnn, on the (B, C, L) layout) and then the transpose to the time-major
  (L, B, C) memory the GRU reads, as FE-GRU ran before `ops.time_major_conv`;
* `masked_conv_time_major`: the same values, written time major by one product per kernel tap.

    python benchmarks/bench_time_major_conv.py --threads 1

Defaults: SIGMA on Beauty, a batch of 2048 sequences of 50 steps, 64 channels, kernel 3, every
position real. Not a test: numbers depend on the machine and its load; CPU seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sigma_lightning.cpu_memory import keep_freed_memory
from sigma_lightning.nn.layers import MaskedConv1d
from sigma_lightning.ops.time_major_conv import masked_conv_time_major


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--kernel-size", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    conv = MaskedConv1d(args.channels, args.kernel_size)
    h = torch.randn(args.batch, args.length, args.channels, requires_grad=True)
    mask = torch.ones(args.batch, args.length, dtype=torch.bool)
    upstream = torch.randn(args.length, args.batch, args.channels)  # (L, B, C)
    ways = {
        "MaskedConv1d + transpose": lambda: conv(h, mask).transpose(0, 1).contiguous(),
        "masked_conv_time_major": lambda: masked_conv_time_major(h, mask, conv.conv.weight, conv.conv.bias),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, way in ways.items():
            start = time.thread_time()
            way().backward(upstream)
            if round_:
                times[name].append(time.thread_time() - start)
            h.grad = None
            conv.zero_grad(set_to_none=True)
    print(f"torch {torch.__version__}, threads {args.threads}, batch {args.batch}, length {args.length}, "
          f"channels {args.channels}, kernel {args.kernel_size}: forward + backward, CPU s")  # fmt: skip
    for name, t in times.items():
        print(f"  {name:<26} median {statistics.median(t):.4f}, min {min(t):.4f}")
    base, new = times.values()
    print(f"  time major / before, median of rounds' ratios {statistics.median(n / b for n, b in zip(new, base)):.3f}")


if __name__ == "__main__":
    main()
