"""Time and peak memory of one training step per backbone and sequence length, on the CPU.

    python benchmarks/bench_efficiency.py                                   # every backbone, L 50 100 200
    python benchmarks/bench_efficiency.py --backbones sasrec sigma --lengths 50 200 --json eff.json
    python benchmarks/bench_efficiency.py --threads 1                       # steadier on a shared machine

Each backbone is built from its bundled recipe (sigma_lightning/configs/backbones/<name>.yaml), with
the length settings the recipe must follow (SASRec's max_seq_len, EchoMamba4Rec's filter_len) set
for each L. A step is forward, full-softmax cross-entropy over `--num-items` items (default: Beauty's
12,101), backward and Adam, on a batch of full-length random sequences (no padding: the worst case).
Time: the median of `--steps` steps after one warm-up step. Memory: the peak resident memory during
those steps above what the process held before them (the model, its gradients and Adam's state), read
from the kernel's high-water mark, reset before each measurement (Linux; None elsewhere).
notebooks/compare.ipynb plots it; results go to docs/ by hand. Not a test: numbers depend on the
machine and its load.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from jsonargparse import ArgumentParser
from timing import timed

from sigma_lightning.cli import BUNDLED_CONFIGS
from sigma_lightning.models.echomamba4rec import linear_fft_length
from sigma_lightning.module import SeqRecModule

BACKBONES = ("sasrec", "gru4rec", "mamba4rec", "echomamba4rec", "sigma")
BEAUTY_ITEMS = 12_101


class PeakMemory:
    """Peak resident memory of this process above a baseline, from Linux's VmHWM.

    `start()` hands freed heap memory back to the kernel (malloc_trim), resets the high-water mark
    to the current resident size and records it; `peak_mb()` is the rise since. Returns None where
    /proc/self/clear_refs is missing (not Linux)."""

    def __init__(self) -> None:
        self.available = Path("/proc/self/clear_refs").exists()
        self.baseline_kb = 0
        self._trim = None
        if self.available and platform.libc_ver()[0] == "glibc":
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim

    @staticmethod
    def _status_kb(key: str) -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(key))

    def start(self) -> None:
        if not self.available:
            return
        gc.collect()
        if self._trim is not None:
            self._trim(0)  # freed blocks cached by malloc would hide the next step's allocations
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset VmHWM to the current VmRSS
        self.baseline_kb = self._status_kb("VmRSS")

    def peak_mb(self) -> float | None:
        return (self._status_kb("VmHWM") - self.baseline_kb) / 1024 if self.available else None


def backbone_spec(name: str, max_seq_len: int, hidden_size: int | None = None) -> dict:
    """The bundled recipe's `model.backbone` (class_path, init_args), fitted to sequences of length L."""
    recipe = yaml.safe_load((BUNDLED_CONFIGS / "backbones" / f"{name}.yaml").read_text())
    spec = recipe["model"]["backbone"]
    init = dict(spec.get("init_args", {}))
    if "max_seq_len" in init:
        init["max_seq_len"] = max_seq_len  # SASRec's position table
    if "filter_len" in init:
        init["filter_len"] = max(init["filter_len"], linear_fft_length(max_seq_len))  # >= 2L - 1
    if hidden_size is not None:
        init["hidden_size"] = hidden_size
    return {"class_path": spec["class_path"], "init_args": init}


def build_model(name: str, max_seq_len: int, num_items: int, hidden_size: int | None = None) -> SeqRecModule:
    """SeqRecModule around the recipe's backbone, instantiated as the CLI does (jsonargparse)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--backbone", type=torch.nn.Module)
    config = parser.parse_object({"backbone": backbone_spec(name, max_seq_len, hidden_size)})
    return SeqRecModule(parser.instantiate(config).backbone, num_items=num_items)


def measure(name: str, max_seq_len: int, batch_size: int, num_items: int, steps: int,
            hidden_size: int | None = None) -> dict:  # fmt: skip
    """One row: seconds per training step and peak memory (MB) of `name` at length `max_seq_len`."""
    torch.manual_seed(0)
    model = build_model(name, max_seq_len, num_items, hidden_size).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    input_ids = torch.randint(1, num_items + 1, (batch_size, max_seq_len))  # (B, L), no padding
    target = torch.randint(1, num_items + 1, (batch_size,))  # (B,)

    def step() -> None:
        loss = F.cross_entropy(model.item_scores(model(input_ids)), target - 1)
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated: the baseline holds them
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocates gradients and Adam's state, builds any lazy kernels
    memory = PeakMemory()
    memory.start()
    seconds, _ = timed(step, repeats=steps)
    return {
        "backbone": name, "max_seq_len": max_seq_len, "batch_size": batch_size, "num_items": num_items,
        "parameters": sum(p.numel() for p in model.parameters()), "seconds_per_batch": seconds,
        "peak_mb": memory.peak_mb(),
    }  # fmt: skip


def run(backbones=BACKBONES, lengths=(50, 100, 200), batch_size: int = 256, num_items: int = BEAUTY_ITEMS,
        steps: int = 5, hidden_size: int | None = None) -> list[dict]:  # fmt: skip
    """Every (backbone, length) row of the table, lengths in increasing order."""
    return [measure(name, L, batch_size, num_items, steps, hidden_size) for name in backbones for L in sorted(lengths)]


def format_table(rows: list[dict]) -> str:
    lines = ["| backbone | L | batch | params | s/batch | peak MB |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        peak = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        lines.append(f"| {r['backbone']} | {r['max_seq_len']} | {r['batch_size']} | {r['parameters']:,} | "
                     f"{r['seconds_per_batch']:.3f} | {peak} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES))
    parser.add_argument("--lengths", nargs="+", type=int, default=[50, 100, 200])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-items", type=int, default=BEAUTY_ITEMS)
    parser.add_argument("--hidden-size", type=int, default=None, help="default: each recipe's")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the rows (and the machine) to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.backbones, args.lengths, args.batch_size, args.num_items, args.steps, args.hidden_size)
    machine = {"torch": torch.__version__, "threads": args.threads, "platform": platform.platform()}
    print(f"torch {machine['torch']}, {args.threads} threads, {args.num_items:,} items\n{format_table(rows)}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
