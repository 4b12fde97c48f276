"""Training speed of prefix samples against every position of a sequence in one pass
(`data.train_samples: prefixes | sequences`) on real data, SASRec at the papers' Beauty setting.

    python benchmarks/bench_all_positions.py --data data/beauty/Beauty.txt --threads 1

For each setting (sample kind x batch size x length bucketing) it builds one epoch's batches, times
`--batches` of them drawn at random (forward + backward + Adam, the full softmax through the module's
own training_pairs and loss), the settings interleaved round by round so they share the machine's
load, and projects the epoch: mean step x steps per epoch. Reports the projected training epoch,
sequence passes per second (prefix samples or windows) and (history, next item) pairs per second;
the batches' building is timed separately (one pass over the loader). Validation is the same for
every setting and not timed. Not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from sigma_lightning.data.datamodule import SeqRecDataModule
from sigma_lightning.models import SASRec
from sigma_lightning.module import SeqRecModule


def settings_list(batch_sizes: dict[str, list[int]], bucketing: list[str]) -> list[dict]:
    return [
        {"samples": samples, "batch_size": size, "bucket": bucket == "on"}
        for samples, sizes in batch_sizes.items()
        for size in sizes
        for bucket in bucketing
    ]


def label(setting: dict) -> str:
    return f"{setting['samples']} b{setting['batch_size']} {'bucketed' if setting['bucket'] else 'uniform'}"


def prepare(path: str, setting: dict, max_seq_len: int, picks: int, seed: int) -> dict:
    """One epoch's batches of `setting`, `picks` of them drawn at random, and the loader's time."""
    data = SeqRecDataModule(path=path, max_seq_len=max_seq_len, batch_size=setting["batch_size"],
                            bucket_by_length=setting["bucket"], train_samples=setting["samples"])  # fmt: skip
    start = time.perf_counter()
    epoch = list(data.train_dataloader())
    loader_s = time.perf_counter() - start
    order = torch.randperm(len(epoch), generator=torch.Generator().manual_seed(seed))[:picks].tolist()
    pairs = sum(_pairs(b) for b in epoch)
    passes = sum(b["input_ids"].size(0) for b in epoch)
    picked, steps = [epoch[i] for i in order], len(epoch)
    del epoch  # only the timed batches are kept
    return {"data": data, "picked": picked, "steps": steps, "loader_s": loader_s, "pairs": pairs, "passes": passes,
            "times": []}  # fmt: skip


def _pairs(batch: dict) -> int:
    target = batch["target"]
    return int((target != 0).sum()) if target.dim() == 2 else target.numel()


def step(module: SeqRecModule, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    user, target = module.training_pairs(batch)  # (P, D), (P,)
    loss = module.loss(user, module.item_embedding.weight[1:], target - 1)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--max-seq-len", type=int, default=50)
    parser.add_argument("--prefix-batch", type=int, nargs="+", default=[2048])
    parser.add_argument("--sequence-batch", type=int, nargs="+", default=[2048, 350],
                        help="350: Beauty's 5.84 pairs per window, so about the pairs of a prefix batch of 2048")
    parser.add_argument("--bucketing", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--batches", type=int, default=12, help="timed steps per setting")
    parser.add_argument("--rounds", type=int, default=3, help="the steps are split into this many interleaved rounds")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = settings_list({"prefixes": args.prefix_batch, "sequences": args.sequence_batch}, args.bucketing)
    runs = [prepare(args.data, s, args.max_seq_len, args.batches, args.seed) for s in settings]
    models = []
    for run in runs:
        torch.manual_seed(args.seed)
        backbone = SASRec(hidden_size=64, num_layers=2, num_heads=2, inner_size=256, dropout=0.3, attn_dropout=0.3,
                          max_seq_len=args.max_seq_len)  # fmt: skip
        module = SeqRecModule(backbone, num_items=run["data"].num_items).train()
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
        step(module, optimizer, run["picked"][0])  # warm-up (allocations, first-call costs)
        models.append((module, optimizer))
    for r in range(args.rounds):
        for offset in range(len(runs)):  # rotate who goes first each round
            i = (offset + r) % len(runs)
            run, (module, optimizer) = runs[i], models[i]
            for j in range(r, len(run["picked"]), args.rounds):
                start = time.perf_counter()
                step(module, optimizer, run["picked"][j])
                run["times"].append(time.perf_counter() - start)
    rows = []
    for setting, run in zip(settings, runs):
        mean_step = statistics.fmean(run["times"])
        epoch_s = mean_step * run["steps"]
        rows.append({
            "setting": label(setting), "steps": run["steps"], "passes": run["passes"], "pairs": run["pairs"],
            "step_s": mean_step, "epoch_s": epoch_s, "passes_per_s": run["passes"] / epoch_s,
            "pairs_per_s": run["pairs"] / epoch_s, "loader_s": run["loader_s"],
        })  # fmt: skip
    base = rows[0]["epoch_s"]
    print(f"SASRec, {args.data}, L={args.max_seq_len}, {args.threads} thread(s), torch {torch.__version__}, "
          f"{args.batches} random steps per setting in {args.rounds} interleaved rounds")  # fmt: skip
    print("| setting | steps/epoch | sequence passes | pairs | s/step | projected epoch s | vs first | passes/s | pairs/s | loader s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['setting']} | {row['steps']} | {row['passes']:,} | {row['pairs']:,} | {row['step_s']:.3f} | "
              f"{row['epoch_s']:.1f} | {row['epoch_s'] / base:.2f}x | {row['passes_per_s']:,.0f} | "
              f"{row['pairs_per_s']:,.0f} | {row['loader_s']:.2f} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
