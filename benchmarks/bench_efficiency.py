"""Training throughput, inference time and peak memory of every backbone, and how time and memory
grow with the sequence length: SIGMA's Table 3 (Liu et al., 2024) measured on this machine.

    python benchmarks/bench_efficiency.py --threads 1 --json eff.json --plot eff.png --markdown eff.md
    python benchmarks/bench_efficiency.py --device cuda --json eff-cuda.json --plot eff-cuda.png
    python benchmarks/bench_efficiency.py --backbones sasrec sigma --lengths 50 200 --repeats 2

One run measures two things, for each backbone built from its bundled recipe
(sigma_lightning/configs/backbones/<name>.yaml, the papers' settings; SASRec's max_seq_len and
EchoMamba4Rec's filter_len follow the length as the recipes tie them):

* the papers' setting: max_seq_len 50, a batch of 2048 (the papers' batch), Beauty's 12,101 items.
  A training step is forward, the model's loss (full-softmax cross-entropy over every item, as
  `sigma fit`), backward and Adam: sequences per second. An inference batch is what validation and
  test run (eval mode, no gradients, the user representation and the full ranking of every item by
  SeqRecModule.evaluation_ranks): milliseconds per batch.
* the length sweep: the same two at every max_seq_len of --lengths (50 200 800 3200), each at one
  batch size for the whole sweep (--sweep-train-batch, --sweep-infer-batch: growth with length means
  something only at a fixed batch; a batch of 2048 at 3200 does not fit in memory), and the growth
  exponents: the slope of log(time) and log(memory) against log(L), least squares over every length
  and between the two longest (where the per-batch constants, the item softmax among them, matter least).

Sequences are full-length random ids, no padding: the cost of RecBole's padded batches and the worst
case of ours. Each measurement is the median of --repeats rounds after one warm-up round; within a
length every backbone runs once per round, in a rotating order, so that the ratios between backbones
are measured under the same machine load. Memory: on the CPU the rise of the process's resident
memory (the kernel's high-water mark, reset before each measurement) above what it held before (the
models, their gradients and Adam's state, the batch); on CUDA torch.cuda.max_memory_allocated above
memory_allocated before, and the absolute max_memory_allocated. Not a test: numbers depend on the
machine and its load; docs/efficiency.md records one run with its command. notebooks/compare.ipynb
plots `run()`'s rows.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser

from sigma_lightning.cli import BUNDLED_CONFIGS
from sigma_lightning.models.echomamba4rec import linear_fft_length
from sigma_lightning.module import SeqRecModule
from sigma_lightning.ops.backend import scan_backend_report

BACKBONES = ("sasrec", "gru4rec", "mamba4rec", "echomamba4rec", "sigma")
BEAUTY_ITEMS = 12_101
PAPER_LENGTH, PAPER_BATCH = 50, 2048  # the papers' max length and batch on Beauty (docs/models.md)
LENGTHS = (50, 200, 800, 3200)
PHASES = ("train", "inference")
# SIGMA paper, Table 3: Beauty, inference time per batch (ms) and GPU memory (GB) on an NVIDIA L4.
PAPER_TABLE3 = {
    "sasrec": (123, 7.58), "mamba4rec": (72, 2.58), "echomamba4rec": (78, 3.01), "sigma": (68, 2.89),
}  # fmt: skip


class PeakMemory:
    """Peak resident memory of this process above a baseline, from Linux's VmHWM.

    `start()` hands freed heap memory back to the kernel (malloc_trim), resets the high-water mark
    to the current resident size and records it; `peak_mb()` is the rise since. Returns None where
    /proc/self/clear_refs is missing (not Linux). `total_mb()` is None: the process's whole resident
    size holds every model of the run and the Python runtime, nothing one step needs."""

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

    def total_mb(self) -> float | None:
        return None


class CudaPeakMemory:
    """Peak CUDA memory held by tensors (torch.cuda.max_memory_allocated) above a baseline; the
    allocator's cache and the CUDA context (what nvidia-smi adds) are not counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline = 0

    def start(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = torch.cuda.memory_allocated(self.device)

    def peak_mb(self) -> float:
        return (torch.cuda.max_memory_allocated(self.device) - self.baseline) / 2**20

    def total_mb(self) -> float:
        """Everything allocated at the peak: models, gradients, optimiser state and the step's tensors."""
        return torch.cuda.max_memory_allocated(self.device) / 2**20


def memory_meter(device: torch.device) -> PeakMemory | CudaPeakMemory:
    return CudaPeakMemory(device) if device.type == "cuda" else PeakMemory()


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels: a CUDA call returns before its work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


@dataclass
class Case:
    """One backbone at one length, with its optimiser, on the measuring device."""

    name: str
    max_seq_len: int
    model: SeqRecModule
    optimizer: torch.optim.Optimizer


def make_case(name: str, max_seq_len: int, num_items: int, device: torch.device, seed: int,
              hidden_size: int | None = None) -> Case:  # fmt: skip
    torch.manual_seed(seed)  # the same initial weights whatever else the run builds before
    model = build_model(name, max_seq_len, num_items, hidden_size).to(device)
    return Case(name, max_seq_len, model, torch.optim.Adam(model.parameters(), lr=1e-3))


def make_batch(max_seq_len: int, batch_size: int, num_items: int, device: torch.device, seed: int) -> dict:
    """Full-length random histories and targets, the same for every backbone at this (L, B)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + max_seq_len * 7919 + batch_size)
    input_ids = torch.randint(1, num_items + 1, (batch_size, max_seq_len), generator=generator)  # (B, L)
    target = torch.randint(1, num_items + 1, (batch_size,), generator=generator)  # (B,)
    return {"input_ids": input_ids.to(device), "target": target.to(device)}


def train_step(case: Case, batch: dict) -> None:
    """What `sigma fit` does with one batch: forward, the model's loss, backward, Adam."""
    model = case.model.train()
    user = model(batch["input_ids"])  # (B, D)
    loss = model.loss(user, model.item_embedding.weight[1:], batch["target"] - 1)
    case.optimizer.zero_grad(set_to_none=False)  # gradients stay allocated: the baseline holds them
    loss.backward()
    case.optimizer.step()


def inference_batch(case: Case, batch: dict) -> None:
    """What validation and test do with one batch: eval mode, no gradients, every item ranked."""
    model = case.model.eval()
    with torch.inference_mode():
        model.evaluation_ranks(batch)  # (B,) ranks and cross-entropies over all items


STEPS: dict[str, Callable[[Case, dict], None]] = {"train": train_step, "inference": inference_batch}


def measure(cases: Sequence[Case], phase: str, batch: dict, repeats: int, device: torch.device,
            log: Callable[[str], None] = lambda _: None) -> list[dict]:  # fmt: skip
    """One row per case: `phase` ("train" or "inference") on `batch`, once to warm up (Adam's state,
    lazy kernels, first-touch pages), then `repeats` rounds, each running every case once in an
    order rotated by one per round."""
    step, meter = STEPS[phase], memory_meter(device)
    times: list[list[float]] = [[] for _ in cases]
    peaks: list[list[float | None]] = [[] for _ in cases]
    totals: list[list[float | None]] = [[] for _ in cases]
    for case in cases:
        step(case, batch)
        synchronize(device)
    gc.collect()
    gc.freeze()  # the meter's gc.collect() then skips the objects already here (0.5 s each otherwise)
    try:
        for round_ in range(repeats):
            for i in [(round_ + j) % len(cases) for j in range(len(cases))]:
                meter.start()
                start = time.perf_counter()
                step(cases[i], batch)
                synchronize(device)
                times[i].append(time.perf_counter() - start)
                peaks[i].append(meter.peak_mb())
                totals[i].append(meter.total_mb())
            log(f"  {phase} L={cases[0].max_seq_len} B={len(batch['target'])} round {round_ + 1}/{repeats}: "
                + ", ".join(f"{c.name} {times[i][-1]:.3f} s" for i, c in enumerate(cases)))  # fmt: skip
    finally:
        gc.unfreeze()
    return [row(case, phase, batch, times[i], peaks[i], totals[i]) for i, case in enumerate(cases)]


def _median(values: list) -> float | None:
    return None if not values or values[0] is None else statistics.median(values)


def row(case: Case, phase: str, batch: dict, times: list[float], peaks: list, totals: list) -> dict:
    batch_size = len(batch["target"])
    seconds, peak = statistics.median(times), _median(peaks)
    return {
        "backbone": case.name, "phase": phase, "max_seq_len": case.max_seq_len, "batch_size": batch_size,
        "num_items": case.model.num_items, "parameters": sum(p.numel() for p in case.model.parameters()),
        "repeats": len(times), "seconds_per_batch": seconds, "seconds_min": min(times),
        "sequences_per_second": batch_size / seconds, "ms_per_sequence": 1000 * seconds / batch_size,
        "peak_mb": peak, "mb_per_sequence": None if peak is None else peak / batch_size,
        "peak_total_mb": _median(totals),
    }  # fmt: skip


def measure_length(backbones: Sequence[str], max_seq_len: int, batch_sizes: dict[str, int], num_items: int,
                   repeats: int, device: torch.device, seed: int, hidden_size: int | None = None,
                   log: Callable[[str], None] = lambda _: None) -> list[dict]:  # fmt: skip
    """Rows of every backbone at one length, for each phase in `batch_sizes` (phase -> batch)."""
    cases = [make_case(name, max_seq_len, num_items, device, seed, hidden_size) for name in backbones]
    rows = []
    for phase, batch_size in batch_sizes.items():
        batch = make_batch(max_seq_len, batch_size, num_items, device, seed)
        rows += measure(cases, phase, batch, repeats, device, log)
    return rows


def sweep(backbones: Sequence[str], lengths: Sequence[int], batch_sizes: dict[str, int], num_items: int,
          repeats: int, device: torch.device, seed: int, hidden_size: int | None = None,
          log: Callable[[str], None] = lambda _: None) -> list[dict]:  # fmt: skip
    """Rows of every (backbone, phase, length), each length's backbones interleaved; sorted by
    backbone (in `backbones`' order), phase, then length."""
    rows = [r for L in sorted(lengths)
            for r in measure_length(backbones, L, batch_sizes, num_items, repeats, device, seed, hidden_size, log)]
    return sort_rows(rows, backbones)


def sort_rows(rows: list[dict], backbones: Sequence[str]) -> list[dict]:
    """By backbone (in `backbones`' order), phase, then length."""
    order = {name: i for i, name in enumerate(backbones)}
    return sorted(rows, key=lambda r: (order[r["backbone"]], PHASES.index(r["phase"]), r["max_seq_len"]))


def run(backbones=BACKBONES, lengths=(50, 100, 200), batch_size: int = 256, num_items: int = BEAUTY_ITEMS,
        steps: int = 5, hidden_size: int | None = None, device: str = "cpu", seed: int = 0) -> list[dict]:  # fmt: skip
    """Training rows of every (backbone, length), backbone by backbone, lengths increasing: the
    median of `steps` steps at one batch size, the backbones interleaved within a length."""
    return sweep(backbones, lengths, {"train": batch_size}, num_items, steps, torch.device(device), seed, hidden_size)


def growth_exponent(lengths: Sequence[float], values: Sequence[float | None]) -> float | None:
    """Least-squares slope of log(value) on log(length): 1 for linear growth, 2 for quadratic.
    None with fewer than two lengths or a value missing or not positive (no logarithm)."""
    if len(lengths) < 2 or len(set(lengths)) < 2 or any(v is None or v <= 0 for v in values):
        return None
    return statistics.linear_regression([math.log(L) for L in lengths], [math.log(v) for v in values]).slope


def exponents(rows: list[dict]) -> list[dict]:
    """Per backbone and phase, the growth exponents of time and memory with max_seq_len: fitted over
    every length ("fit") and between the two longest ("last")."""
    out = []
    for name in dict.fromkeys(r["backbone"] for r in rows):
        for phase in PHASES:
            part = sorted((r for r in rows if r["backbone"] == name and r["phase"] == phase),
                          key=lambda r: r["max_seq_len"])  # fmt: skip
            if len(part) < 2:
                continue
            lengths = [r["max_seq_len"] for r in part]
            entry = {"backbone": name, "phase": phase, "lengths": lengths}
            for key, label in (("seconds_per_batch", "time"), ("peak_mb", "memory")):
                values = [r[key] for r in part]
                entry[f"{label}_fit"] = growth_exponent(lengths, values)
                entry[f"{label}_last"] = growth_exponent(lengths[-2:], values[-2:])
            out.append(entry)
    return out


# ---- output ------------------------------------------------------------------------------------
def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def paper_setting_table(rows: list[dict]) -> str:
    """One line per backbone: training throughput and memory, inference time and memory."""
    lines = ["| backbone | parameters | train s/batch | train sequences/s | train peak MB | inference ms/batch "
             "| inference peak MB |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name in dict.fromkeys(r["backbone"] for r in rows):
        train = next(r for r in rows if r["backbone"] == name and r["phase"] == "train")
        infer = next(r for r in rows if r["backbone"] == name and r["phase"] == "inference")
        lines.append(f"| {name} | {train['parameters']:,} | {train['seconds_per_batch']:.2f} | "
                     f"{train['sequences_per_second']:,.0f} | {_num(train['peak_mb'])} | "
                     f"{1000 * infer['seconds_per_batch']:,.0f} | {_num(infer['peak_mb'])} |")  # fmt: skip
    return "\n".join(lines)


def paper_comparison_table(rows: list[dict]) -> str:
    """Our inference batch beside the paper's Table 3, each also as a ratio to its SASRec."""
    infer = {r["backbone"]: r for r in rows if r["phase"] == "inference"}
    memory_key = "peak_total_mb" if any(r["peak_total_mb"] is not None for r in infer.values()) else "peak_mb"
    base = infer.get("sasrec")
    lines = ["| backbone | paper ms/batch | paper GB | paper time / SASRec | paper memory / SASRec | our ms/batch "
             "| our peak MB | our time / SASRec | our memory / SASRec |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip

    def ratio(a, b):
        return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}"

    for name, r in infer.items():
        ms, gb = PAPER_TABLE3.get(name, (None, None))
        ours_ms, ours_mb = 1000 * r["seconds_per_batch"], r[memory_key]
        lines.append(
            f"| {name} | {_num(ms)} | {_num(gb, 2)} | {ratio(ms, PAPER_TABLE3['sasrec'][0])} | "
            f"{ratio(gb, PAPER_TABLE3['sasrec'][1])} | {ours_ms:,.0f} | {_num(ours_mb)} | "
            f"{ratio(ours_ms, base and 1000 * base['seconds_per_batch'])} | "
            f"{ratio(ours_mb, base and base[memory_key])} |"
        )
    return "\n".join(lines)


def sweep_table(rows: list[dict]) -> str:
    """Per backbone and phase: ms and MB per sequence at each length (each phase at one batch)."""
    lengths = sorted({r["max_seq_len"] for r in rows})
    head = " | ".join(f"L={L} ms/seq | L={L} MB/seq" for L in lengths)
    lines = [f"| backbone | phase | batch | {head} |", "| --- | --- | ---: |" + " ---: | ---: |" * len(lengths)]
    for name in dict.fromkeys(r["backbone"] for r in rows):
        for phase in PHASES:
            part = {r["max_seq_len"]: r for r in rows if r["backbone"] == name and r["phase"] == phase}
            if not part:
                continue
            cells = " | ".join(f"{_num(part[L]['ms_per_sequence'], 2)} | {_num(part[L]['mb_per_sequence'], 2)}"
                               if L in part else "n/a | n/a" for L in lengths)  # fmt: skip
            lines.append(f"| {name} | {phase} | {next(iter(part.values()))['batch_size']} | {cells} |")
    return "\n".join(lines)


def exponents_table(entries: list[dict]) -> str:
    lines = ["| backbone | phase | time, fit | time, last | memory, fit | memory, last |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for e in entries:
        lines.append(f"| {e['backbone']} | {e['phase']} | {_num(e['time_fit'], 2)} | {_num(e['time_last'], 2)} | "
                     f"{_num(e['memory_fit'], 2)} | {_num(e['memory_last'], 2)} |")  # fmt: skip
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The run's tables as docs/efficiency.md shows them, headed by the command and machine."""
    machine, settings = result["machine"], result["settings"]
    parts = [f"`{settings['command']}`\n\n{machine['device']}, torch {machine['torch']}, "
             f"{machine['threads']} thread(s), seed {settings['seed']}, {settings['repeats']} rounds (medians); "
             f"{machine['scan_backend']}"]  # fmt: skip
    if result["paper_setting"]:
        parts += [f"### Papers' setting: L={settings['paper_length']}, batch {settings['paper_batch']}, "
                  f"{settings['num_items']:,} items\n\n" + paper_setting_table(result["paper_setting"]),
                  "### Beside the paper's Table 3 (inference batch)\n\n"
                  + paper_comparison_table(result["paper_setting"])]  # fmt: skip
    if result["sweep"]:
        batches = settings["sweep_batches"]
        parts += [f"### Growth with max_seq_len (training batch {batches['train']}, inference batch "
                  f"{batches['inference']})\n\n" + sweep_table(result["sweep"]),
                  "### Growth exponents (slope of log time and log memory on log L)\n\n"
                  + exponents_table(result["exponents"])]  # fmt: skip
    return "\n\n".join(parts) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Time and memory per sequence against max_seq_len, log-log, one colour per backbone
    (training solid, inference dashed), with slope-1 and slope-2 guides from the lowest first point."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend (a notebook's) alone
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullLocator

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    time_ax, memory_ax = fig.subplots(1, 2)
    colours, markers = {}, dict(zip(dict.fromkeys(r["backbone"] for r in rows), "osD^vP*X"))
    lengths = sorted({r["max_seq_len"] for r in rows})
    for ax, key, label in ((time_ax, "ms_per_sequence", "ms per sequence"),
                           (memory_ax, "mb_per_sequence", "peak MB per sequence")):  # fmt: skip
        for name in dict.fromkeys(r["backbone"] for r in rows):
            for phase, style in (("train", "-"), ("inference", "--")):
                part = sorted((r for r in rows if r["backbone"] == name and r["phase"] == phase and r[key]),
                              key=lambda r: r["max_seq_len"])  # fmt: skip
                if part:
                    (line,) = ax.plot([r["max_seq_len"] for r in part], [r[key] for r in part], style,
                                      color=colours.get(name), marker=markers[name], markersize=5)  # fmt: skip
                    colours[name] = line.get_color()
        for slope, guide in ((1, ":"), (2, "-.")):
            values = [r[key] for r in rows if r[key] and r["max_seq_len"] == lengths[0]]
            if len(lengths) > 1 and values:
                y0 = min(values)
                ax.plot(lengths, [y0 * (L / lengths[0]) ** slope for L in lengths], guide, color="grey", linewidth=1)
        ax.set(xscale="log", yscale="log", xlabel="max_seq_len", ylabel=label)
        ax.xaxis.set_minor_locator(NullLocator())  # only the measured lengths are labelled
        ax.set_xticks(lengths, [str(L) for L in lengths])
        ax.grid(True, which="major", alpha=0.3)
    time_ax.set_title("time per sequence")
    memory_ax.set_title("peak memory per sequence (above model and optimiser)")
    handles = [Line2D([], [], color=c, marker=markers[name], label=name) for name, c in colours.items()]
    handles += [Line2D([], [], color="black", linestyle=style, label=label) for style, label in
                (("-", "training step"), ("--", "inference batch"), (":", "slope 1"), ("-.", "slope 2"))]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize="small")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def machine_info(device: torch.device, threads: int) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        described = f"{name}, CUDA {torch.version.cuda}"
    else:
        described = f"CPU ({cpu_model()}, {len(os.sched_getaffinity(0))} cores visible)"
    return {"device": described, "torch": torch.__version__, "threads": threads, "platform": platform.platform(),
            "python": platform.python_version(), "scan_backend": scan_backend_report(device)}  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES))
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS), help="the sweep's max_seq_len")
    parser.add_argument("--num-items", type=int, default=BEAUTY_ITEMS)
    parser.add_argument("--paper-length", type=int, default=PAPER_LENGTH, help="max_seq_len of the papers' setting")
    parser.add_argument("--paper-batch", type=int, default=PAPER_BATCH, help="batch of the papers' setting; 0 skips it")
    parser.add_argument("--sweep-train-batch", type=int, default=4, help="training batch at every length of the sweep")
    parser.add_argument("--sweep-infer-batch", type=int, default=16,
                        help="inference batch at every length of the sweep")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="measured rounds (medians) after one warm-up round")
    parser.add_argument("--hidden-size", type=int, default=None, help="default: each recipe's (64)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch's CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="weights and batches")
    parser.add_argument("--json", type=Path, help="write the rows, exponents, settings and machine here")
    parser.add_argument("--plot", type=Path, help="write the sweep's PNG plot here")
    parser.add_argument("--markdown", type=Path, help="write the tables here (they are printed too)")
    parser.add_argument("--from-json", type=Path, help="measure nothing: the tables and plot of this --json result")
    args = parser.parse_args(argv)
    for name in ("repeats", "num_items", "sweep_train_batch", "sweep_infer_batch", "threads", "paper_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.lengths) < 1:
        parser.error("--lengths must be at least 1")
    return args


def write_outputs(result: dict, args: argparse.Namespace) -> None:
    """Print the tables; write the --json, --markdown and --plot files asked for."""
    tables = markdown(result)
    print(tables, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(tables)
    if args.plot and result["sweep"]:
        machine = result["machine"]
        title = f"{machine['device']}, torch {machine['torch']}, {machine['threads']} thread(s)"
        plot(result["sweep"], args.plot, title)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        write_outputs(result, args)
        return result
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"bench_efficiency: --device {args.device} but torch {torch.__version__} sees no GPU: "
                         "use --device cpu or a CUDA build of torch.")  # fmt: skip
    torch.set_num_threads(args.threads)
    command = "python " + shlex.join([sys.argv[0] if argv is None else "benchmarks/bench_efficiency.py",
                                      *(sys.argv[1:] if argv is None else argv)])  # fmt: skip
    settings = {"command": command, "seed": args.seed, "repeats": args.repeats, "num_items": args.num_items,
                "hidden_size": args.hidden_size, "paper_length": args.paper_length, "paper_batch": args.paper_batch,
                "lengths": sorted(args.lengths),
                "sweep_batches": {"train": args.sweep_train_batch, "inference": args.sweep_infer_batch}}  # fmt: skip
    machine = machine_info(device, args.threads)
    started = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s]{line}", flush=True)

    log(f" {machine['device']}, torch {machine['torch']}, {args.threads} thread(s); {command}")
    paper = []
    if args.paper_batch:
        batches = {"train": args.paper_batch, "inference": args.paper_batch}
        paper = sort_rows(measure_length(args.backbones, args.paper_length, batches, args.num_items, args.repeats,
                                         device, args.seed, args.hidden_size, log), args.backbones)  # fmt: skip
    rows = sweep(args.backbones, args.lengths, settings["sweep_batches"], args.num_items, args.repeats, device,
                 args.seed, args.hidden_size, log)  # fmt: skip
    result = {"machine": machine, "settings": settings, "seconds": time.perf_counter() - started,
              "paper_setting": paper, "sweep": rows, "exponents": exponents(rows),
              "paper_table3": {k: {"ms_per_batch": ms, "gb": gb} for k, (ms, gb) in PAPER_TABLE3.items()}}  # fmt: skip
    write_outputs(result, args)
    log(f" done in {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
