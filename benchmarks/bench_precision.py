"""Training step time in float32 against bf16 mixed precision on the CPU (docs/precision.md).

    python benchmarks/bench_precision.py --data ../shared/data/beauty/Beauty.txt --backbone sasrec \\
        --batches 12 --rounds 3 --threads 1

The bundled beauty/<backbone> recipe's model (d = 64, the full softmax, Adam 1e-3) on `--batches`
batches of a length-bucketed training epoch (seed 42, the same batches for both), forward + loss +
backward + Adam: bf16 as Lightning's bf16-mixed runs it (torch.autocast around forward and loss,
float32 weights and optimizer). The two precisions alternate `--rounds` times in one process, each
round from the same initial weights, so both see the same load on a shared machine; the figures are
medians over rounds of the mean step, as wall and process CPU seconds, and the epoch projected
from the mean step over the epoch's batch count. Validation is not timed: the module ranks in
float32 with autocast off under either precision. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from sigma_lightning.data.datamodule import SeqRecDataModule
from sigma_lightning.models import GRU4Rec, SASRec
from sigma_lightning.module import SeqRecModule

BACKBONES = {  # as configs/beauty/<name>.yaml
    "sasrec": lambda: SASRec(hidden_size=64, num_layers=2, num_heads=2, inner_size=256, dropout=0.3,
                             attn_dropout=0.3, max_seq_len=50),  # fmt: skip
    "gru4rec": lambda: GRU4Rec(hidden_size=64, gru_hidden_size=128, num_layers=1, dropout=0.3),
}


def timed_steps(model: SeqRecModule, batches: list[dict], bf16: bool) -> tuple[float, float]:
    """Mean wall and process-CPU seconds of one training step over `batches`."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.training_step(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss.item()} (bf16={bf16})")
    n = len(batches)
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--backbone", choices=list(BACKBONES), default="sasrec")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    data = SeqRecDataModule(path=args.data, max_seq_len=50, batch_size=2048, min_user_interactions=5,
                            min_item_interactions=5, bucket_by_length=True)  # fmt: skip
    data.prepare_data()
    data.setup("fit")
    loader = data.train_dataloader()
    every = max(1, len(loader) // args.batches)  # spread over the epoch: bucket widths vary
    batches = [b for i, b in enumerate(loader) if i % every == 0 and b["input_ids"].size(0) == 2048][: args.batches]
    torch.manual_seed(42)
    initial = SeqRecModule(BACKBONES[args.backbone](), num_items=data.num_items)
    results = {"fp32": [], "bf16-mixed": []}
    for _ in range(args.rounds):
        for name in results:
            results[name].append(timed_steps(copy.deepcopy(initial), batches, bf16=name == "bf16-mixed"))
    summary = {"backbone": args.backbone, "batches": len(batches), "rounds": args.rounds, "threads": args.threads,
               "epoch_batches": len(loader), "torch": torch.__version__}  # fmt: skip
    for name, runs in results.items():
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        summary[name] = {
            "step_wall_s": round(wall, 3), "step_cpu_s": round(cpu, 3),
            "epoch_train_wall_s": round(wall * len(loader), 1),
            "rounds_wall_s": [round(r[0], 3) for r in runs],
        }  # fmt: skip
    summary["bf16_over_fp32_wall"] = round(summary["bf16-mixed"]["step_wall_s"] / summary["fp32"]["step_wall_s"], 3)
    summary["bf16_over_fp32_cpu"] = round(summary["bf16-mixed"]["step_cpu_s"] / summary["fp32"]["step_cpu_s"], 3)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
