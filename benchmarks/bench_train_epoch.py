"""Training speed on CPU: seconds per step and the projected epoch for each backbone, and the ratios
issue 18 sets targets for (docs/efficiency.md, "CPU epochs").

    python benchmarks/bench_train_epoch.py --data ../shared/data/beauty/Beauty.txt --batches 4 --threads 1
    python benchmarks/bench_train_epoch.py --data ../shared/data/beauty/Beauty.txt --threads 1 --ratios \\
        --recbole-python rb/bin/python

Without `--ratios`: one row per (backbone, bucketing), forward + backward + Adam with the full
softmax, timed on `--batches` full batches spread over the epoch; the projected epoch is their mean
times the full batches plus the last, smaller batch in proportion to its size.

With `--ratios`, in one process and interleaved (the machine is shared: medians, and each figure as
process CPU seconds beside wall seconds):
* epoch / (steps + ranking): one real `sigma fit` epoch (the bundled beauty/<backbone> recipe,
  uniform batches, the CLI's callbacks, logger and checkpoints) against the sum of its training
  steps timed alone (plain forward + loss + backward + Adam on `--batches` of the epoch's batches,
  half before and half after the fit, projected as above) plus the validation ranking timed alone;
* SIGMA's step / SASRec's step at width 50 (batch 2048) and 200 (batch 512, the same positions),
  on generated batches with every position real, beside the same step computed the way it was
  before the last-position tail (every layer at every position, then the last real one); as the
  ratio of the two medians and as the median of each round's ratio (the pair within a round);
* with `--recbole-python`, RecBole 1.2's SASRec epoch (research/recbole_crosscheck.py, one epoch,
  run between two of our fits) against ours.

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from sigma_lightning.callbacks import subnormals_flushed
from sigma_lightning.cpu_memory import keep_freed_memory
from sigma_lightning.data.datamodule import SeqRecDataModule
from sigma_lightning.models import SIGMA, EchoMamba4Rec, GRU4Rec, Mamba4Rec, SASRec
from sigma_lightning.models.echomamba4rec import linear_fft_length
from sigma_lightning.module import SeqRecModule
from sigma_lightning.nn.layers import MaskedLayerStack, gather_last

REPO = Path(__file__).resolve().parents[1]

BACKBONES = {
    "sasrec": lambda L: SASRec(dropout=0.3, attn_dropout=0.3, max_seq_len=L),
    "gru4rec": lambda L: GRU4Rec(),
    "mamba4rec": lambda L: Mamba4Rec(),
    "echomamba4rec": lambda L: EchoMamba4Rec(filter_len=linear_fft_length(L)),
    "sigma": lambda L: SIGMA(),
}


class EveryPosition(nn.Module):
    """A backbone computed as before the last-position tail: every layer at every position, then
    the output at the last real one (for the before/after columns)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone, self.hidden_size = backbone, backbone.hidden_size

    def forward(self, item_emb: Tensor, mask: Tensor) -> Tensor:
        if isinstance(self.backbone, MaskedLayerStack):
            return gather_last(self.backbone.every_position(item_emb, mask), mask)  # (B, D)
        return gather_last(self.backbone.sequence_output(item_emb, mask), mask)  # (B, D)


def clocks() -> tuple[float, float]:
    """(wall, process CPU) seconds: CPU time counts only this process, so it moves less with the
    load other processes put on a shared machine."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    now = clocks()
    return now[0] - start[0], now[1] - start[1]


def train_step(module: SeqRecModule, optimizer: torch.optim.Optimizer, batch: dict[str, Tensor]) -> tuple[float, float]:
    """One plain training step as SeqRecModule.training_step computes it (no Lightning): forward,
    the module's loss, backward, Adam. Returns (wall, CPU) seconds."""
    start = clocks()
    user = module(batch["input_ids"])  # (B, D)
    loss = module.loss(user, module.item_embedding.weight[1:], batch["target"] - 1)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return since(start)


def full_and_last(epoch: list[dict[str, Tensor]]) -> tuple[list[dict[str, Tensor]], dict[str, Tensor] | None]:
    """The epoch's batches of the full size, and its last batch when that one is smaller."""
    size = epoch[0]["target"].numel()
    if len(epoch) > 1 and epoch[-1]["target"].numel() < size:
        return epoch[:-1], epoch[-1]
    return epoch, None


def spread(batches: list, count: int) -> list:
    """`count` of `batches` spread evenly from first to last (bucketed batches differ in width)."""
    count = min(count, len(batches))
    return [batches[round(i * (len(batches) - 1) / max(count - 1, 1))] for i in range(count)]


def project(full: list[tuple[float, float]], n_full: int, last_fraction: float) -> tuple[float, float]:
    """Projected epoch seconds (wall, CPU): the mean full step times the full batches, plus the
    last batch in proportion to its size."""
    return tuple(statistics.fmean(t[i] for t in full) * (n_full + last_fraction) for i in range(2))


def seconds_per_batch(data: SeqRecDataModule, name: str, batches: int) -> tuple[float, float, float]:
    """Mean wall seconds per full training step over `batches` full batches spread over the epoch
    (after one warm-up step), their mean width and the projected epoch (wall seconds)."""
    torch.manual_seed(0)
    module = SeqRecModule(BACKBONES[name](data.max_seq_len), num_items=data.num_items)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    full, last = full_and_last(list(data.train_dataloader()))
    picked = spread(full, batches)
    train_step(module, optimizer, picked[0])  # warm-up: first allocations
    times = [train_step(module, optimizer, batch) for batch in picked]
    fraction = 0.0 if last is None else last["target"].numel() / full[0]["target"].numel()
    width = statistics.fmean(b["input_ids"].shape[1] for b in picked)
    return statistics.fmean(t[0] for t in times), width, project(times, len(full), fraction)[0]


# ---- --ratios: the epoch against its steps and ranking ------------------------------------------
class EpochClock(Callback):
    """Wall and CPU seconds of the training epoch (on_train_epoch_start to on_train_epoch_end, which
    Lightning calls after the epoch's validation), of each training step as Lightning runs it and of
    the validation batches."""

    def __init__(self) -> None:
        self.epochs: list[tuple[float, float]] = []
        self.steps: list[tuple[float, float]] = []
        self.validation: list[tuple[float, float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch = clocks()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = clocks()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(since(self._step))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._val = clocks()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.validation.append(since(self._val))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append(since(self._epoch))


def fit_one_epoch(name: str, data_path: str, root: Path) -> EpochClock:
    """One epoch of `sigma fit` with the bundled beauty/<name> recipe, timed by an EpochClock."""
    from sigma_lightning.cli import run_sigma

    cli = run_sigma(
        ["fit", "--config", f"beauty/{name}", "--data.path", data_path, "--trainer.max_epochs", "1",
         "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
         "--trainer.callbacks+=bench_train_epoch.EpochClock"],
        malloc="keep",
    )  # fmt: skip
    return next(c for c in cli.trainer.callbacks if type(c).__name__ == "EpochClock")


def plain_ranking(module: SeqRecModule, data: SeqRecDataModule) -> tuple[float, float]:
    """Seconds of the validation ranking alone: every validation batch through evaluation_ranks."""
    module.eval()
    start = clocks()
    with torch.no_grad():
        for batch in data.val_dataloader():
            module.evaluation_ranks(batch)
    module.train()
    return since(start)


def epoch_ratio(name: str, args: argparse.Namespace, root: Path, recbole: bool) -> dict:
    """The fit epoch(s) and the plain steps and ranking of the same data, interleaved: plain steps,
    fit, (RecBole), plain steps, fit (where RecBole runs, ours brackets it)."""
    data = SeqRecDataModule(args.data, max_seq_len=50, batch_size=2048)
    torch.manual_seed(0)
    module = SeqRecModule(BACKBONES[name](50), num_items=data.num_items)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    full, last = full_and_last(list(data.train_dataloader()))
    picked = spread(full, args.batches)
    train_step(module, optimizer, picked[0])  # warm-up
    half = len(picked) // 2
    steps = [train_step(module, optimizer, b) for b in picked[:half]]
    ranking = [plain_ranking(module, data)]
    fits = [fit_one_epoch(name, args.data, root / f"{name}-0")]
    result: dict = {}
    if recbole:
        result["recbole"] = recbole_epoch(args.recbole_python, args.data, root)
        fits.append(fit_one_epoch(name, args.data, root / f"{name}-1"))
    steps += [train_step(module, optimizer, b) for b in picked[half:]]
    ranking.append(plain_ranking(module, data))
    fraction = 0.0 if last is None else last["target"].numel() / full[0]["target"].numel()
    projected = project(steps, len(full), fraction)
    rank = tuple(statistics.fmean(r[i] for r in ranking) for i in range(2))
    epoch = tuple(statistics.fmean(f.epochs[0][i] for f in fits) for i in range(2))
    in_fit = tuple(statistics.fmean(sum(s[i] for s in f.steps) for f in fits) for i in range(2))
    in_val = tuple(statistics.fmean(sum(s[i] for s in f.validation) for f in fits) for i in range(2))
    result.update(
        batches=len(full) + (last is not None), steps_timed=len(steps), epochs=[f.epochs[0] for f in fits],
        epoch=epoch, plain_steps=projected, plain_ranking=rank, steps_in_fit=in_fit, validation_in_fit=in_val,
        ratio=tuple(epoch[i] / (projected[i] + rank[i]) for i in range(2)),
    )  # fmt: skip
    return result


def recbole_epoch(python: str, data_path: str, root: Path) -> tuple[float, float]:
    """RecBole 1.2's SASRec, one epoch (training + validation) in its own environment: (wall, CPU)."""
    out = root / "recbole.json"
    subprocess.run(
        [python, "-m", "research.recbole_crosscheck", data_path, "--epochs", "1", "--out", str(out)],
        cwd=REPO, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    epoch = json.loads(out.read_text())["epochs"][0]
    return epoch["train_and_valid_seconds"], epoch["train_and_valid_cpu_seconds"]


# ---- --ratios: SIGMA's step against SASRec's ---------------------------------------------------
def generated_batch(batch: int, width: int, num_items: int, seed: int) -> dict[str, Tensor]:
    """Every position real: ids in 1..num_items, (batch, width), and targets (batch,)."""
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, num_items + 1, (batch, width), generator=g),
            "target": torch.randint(1, num_items + 1, (batch,), generator=g)}  # fmt: skip


def step_ratios(args: argparse.Namespace, num_items: int) -> dict:
    """Median step seconds (wall, CPU) of SASRec and SIGMA, as computed now and as before the
    last-position tail, at each width; rounds interleave the models so they share the load."""
    out = {}
    for width in args.widths:
        batch = generated_batch(2048 * 50 // width, width, num_items, seed=width)
        runs = {}
        for name in ("sasrec", "sigma"):
            for variant in ("now", "before"):
                torch.manual_seed(0)
                backbone = BACKBONES[name](max(width, 50))
                module = SeqRecModule(backbone if variant == "now" else EveryPosition(backbone), num_items=num_items)
                runs[name, variant] = (module, torch.optim.Adam(module.parameters(), lr=1e-3), [])
        for module, optimizer, _ in runs.values():
            train_step(module, optimizer, batch)  # warm-up
        for _ in range(args.rounds):
            for module, optimizer, times in runs.values():
                times.append(train_step(module, optimizer, batch))
        med = {key: tuple(statistics.median(t[i] for t in times) for i in range(2)) for key, (_, _, times) in runs.items()}
        out[width] = {"batch": batch["target"].numel(), "median": med,
                      "ratio_now": tuple(med["sigma", "now"][i] / med["sasrec", "now"][i] for i in range(2)),
                      "ratio_before": tuple(med["sigma", "before"][i] / med["sasrec", "before"][i] for i in range(2)),
                      "paired_now": paired_ratio(runs["sigma", "now"][2], runs["sasrec", "now"][2])}  # fmt: skip
    return out


def paired_ratio(times: list[tuple[float, float]], baseline: list[tuple[float, float]]) -> tuple[float, float]:
    """Median over rounds of each round's time / the baseline's time in the same round (wall, CPU):
    the two steps of a round ran seconds apart, so a slow spell of the machine that spans them
    cancels, where the ratio of the two medians can pair a fast spell with a slow one."""
    return tuple(statistics.median(t[i] / b[i] for t, b in zip(times, baseline)) for i in range(2))


def print_ratios(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench_train_epoch-"))
    print(f"runs under {root}")
    wc = lambda t: f"{t[1]:7.1f} CPU s ({t[0]:7.1f} wall)"  # noqa: E731
    num_items = SeqRecDataModule(args.data, max_seq_len=50).num_items
    steps = step_ratios(args, num_items)
    print("\nstep seconds, median of", args.rounds, "interleaved rounds (generated batches, every position real)")
    for width, r in steps.items():
        for (name, variant), t in r["median"].items():
            print(f"  width {width:>4} batch {r['batch']:>4} {name:<7} {variant:<7} {wc(t)}")
        print(f"  width {width:>4}: SIGMA / SASRec now {r['ratio_now'][1]:.2f} CPU ({r['ratio_now'][0]:.2f} wall), "
              f"before {r['ratio_before'][1]:.2f} CPU ({r['ratio_before'][0]:.2f} wall); "
              f"now, median of the rounds' ratios {r['paired_now'][1]:.2f} CPU ({r['paired_now'][0]:.2f} wall)")  # fmt: skip
    for name in args.epoch_backbones:
        recbole = args.recbole_python is not None and name == "sasrec"
        r = epoch_ratio(name, args, root, recbole)
        print(f"\n{name}, uniform batches: epoch (training + validation) of `sigma fit` vs its parts alone")
        print(f"  epoch                      {wc(r['epoch'])}   each: {[round(e[1], 1) for e in r['epochs']]} CPU s")
        print(f"  training steps alone       {wc(r['plain_steps'])}   ({r['steps_timed']} of {r['batches']} batches timed)")
        print(f"  validation ranking alone   {wc(r['plain_ranking'])}")
        print(f"  steps inside the fit       {wc(r['steps_in_fit'])}")
        print(f"  validation inside the fit  {wc(r['validation_in_fit'])}")
        print(f"  epoch / (steps + ranking)  {r['ratio'][1]:.3f} CPU ({r['ratio'][0]:.3f} wall)")
        if recbole:
            rb = r["recbole"]
            print(f"  RecBole 1.2 SASRec epoch   {wc(rb)}")
            print(f"  RecBole / ours             {rb[1] / r['epoch'][1]:.2f} CPU ({rb[0] / r['epoch'][0]:.2f} wall)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--max-seq-len", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--batches", type=int, default=4, help="full batches timed per backbone (spread over the epoch)")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--bucketing", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep",
                        help="keep: reuse freed memory, as the `sigma` command does (cpu_memory.py)")
    parser.add_argument("--subnormals", choices=["flush", "ieee"], default="flush",
                        help="flush: subnormal floats to zero, as the `sigma` command does (FlushSubnormals)")
    parser.add_argument("--ratios", action="store_true", help="the issue-18 ratios instead of the table")
    parser.add_argument("--widths", nargs="+", type=int, default=[50, 200], help="--ratios: widths of the step ratio")
    parser.add_argument("--rounds", type=int, default=3, help="--ratios: interleaved rounds of the step ratio")
    parser.add_argument("--epoch-backbones", nargs="*", default=["sasrec"], choices=sorted(BACKBONES),
                        help="--ratios: backbones whose fit epoch is timed against its steps and ranking")
    parser.add_argument("--recbole-python", help="--ratios: a python with recbole==1.2.1 (docs/notes/recbole-crosscheck.md)")
    args = parser.parse_args()
    kept = args.malloc == "keep" and keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(args.subnormals == "flush")
    flushed = subnormals_flushed()
    print(f"torch {torch.__version__}, threads {args.threads}, data {args.data}, batch {args.batch_size}, "
          f"freed memory kept: {kept}, subnormals flushed: {flushed}")
    if args.ratios:
        sys.modules.setdefault("bench_train_epoch", sys.modules[__name__])  # the fit's --trainer.callbacks+=
        print_ratios(args)
        return
    print(f"{'backbone':<14} {'bucketing':<9} {'s/batch':>8} {'mean L':>7} {'epoch (s)':>10}")
    for bucket in [b == "on" for b in args.bucketing]:
        data = SeqRecDataModule(args.data, max_seq_len=args.max_seq_len, batch_size=args.batch_size,
                                bucket_by_length=bucket)  # fmt: skip
        for name in args.backbones:
            per_batch, width, epoch = seconds_per_batch(data, name, args.batches)
            print(f"{name:<14} {str(bucket):<9} {per_batch:>8.2f} {width:>7.1f} {epoch:>10.0f}")


if __name__ == "__main__":
    main()
