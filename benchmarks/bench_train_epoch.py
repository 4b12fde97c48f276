"""Training speed on real data: seconds per batch and the projected epoch for each backbone,
with and without length bucketing (forward + backward + Adam, full softmax).

    python benchmarks/bench_train_epoch.py --data ../shared/data/beauty/Beauty.txt --batches 4

Prints one row per (backbone, bucketing). Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from sigma_lightning.cpu_memory import keep_freed_memory
from sigma_lightning.data.datamodule import SeqRecDataModule
from sigma_lightning.models import SIGMA, EchoMamba4Rec, GRU4Rec, Mamba4Rec, SASRec
from sigma_lightning.models.echomamba4rec import linear_fft_length
from sigma_lightning.module import SeqRecModule

BACKBONES = {
    "sasrec": lambda L: SASRec(dropout=0.3, attn_dropout=0.3, max_seq_len=L),
    "gru4rec": lambda L: GRU4Rec(),
    "mamba4rec": lambda L: Mamba4Rec(),
    "echomamba4rec": lambda L: EchoMamba4Rec(filter_len=linear_fft_length(L)),
    "sigma": lambda L: SIGMA(),
}


def seconds_per_batch(data: SeqRecDataModule, name: str, batches: int) -> tuple[float, float]:
    """Mean seconds per training step over `batches` batches spread evenly over the epoch (bucketed
    batches differ in width), after one warm-up step, and their mean width."""
    torch.manual_seed(0)
    module = SeqRecModule(BACKBONES[name](data.max_seq_len), num_items=data.num_items)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    epoch = list(data.train_dataloader())
    picked = [epoch[0]] + [epoch[round(i * (len(epoch) - 1) / max(batches - 1, 1))] for i in range(batches)]
    times = []
    for batch in picked:
        start = time.perf_counter()
        loss = F.cross_entropy(module.item_scores(module(batch["input_ids"])), batch["target"] - 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    widths = [b["input_ids"].shape[1] for b in picked[1:]]
    return sum(times[1:]) / batches, sum(widths) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--max-seq-len", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--bucketing", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep",
                        help="keep: reuse freed memory, as the `sigma` command does (cpu_memory.py)")
    args = parser.parse_args()
    kept = args.malloc == "keep" and keep_freed_memory()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}, data {args.data}, batch {args.batch_size}, "
          f"freed memory kept: {kept}")
    print(f"{'backbone':<14} {'bucketing':<9} {'s/batch':>8} {'mean L':>7} {'epoch (s)':>10}")
    for bucket in [b == "on" for b in args.bucketing]:
        data = SeqRecDataModule(args.data, max_seq_len=args.max_seq_len, batch_size=args.batch_size,
                                bucket_by_length=bucket)
        n_batches = len(data.train_dataloader())
        for name in args.backbones:
            per_batch, width = seconds_per_batch(data, name, args.batches)
            print(f"{name:<14} {str(bucket):<9} {per_batch:>8.2f} {width:>7.1f} {per_batch * n_batches:>10.0f}")


if __name__ == "__main__":
    main()
