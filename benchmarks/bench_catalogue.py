"""Peak memory and step time of each training loss on a generated catalogue of 10^4-10^6 items (CPU),
and of evaluation's ranking and top-K scored in item chunks against the whole (B, N) matrix.

    python benchmarks/bench_catalogue.py --threads 1                      # 10^4, 10^5, 10^6 items, batch 2048
    python benchmarks/bench_catalogue.py --num-items 100000 --batch-size 512 --steps 3 --json catalogue.json

For each catalogue size N one generated batch (`--seq-len` 10 item ids per row, about Beauty's mean
length-bucketed width, so that the loss rather than the backbone is what differs; ids and targets
drawn by a Zipf popularity) trains SASRec (its recipe, hidden size 64) with each loss of
sigma_lightning/losses.py: `full` (FullSoftmax, the (B, N) logits), `chunked` (ChunkedSoftmax),
`sampled-uniform`, `sampled-popularity` (log-Q corrected) and `sampled-in-batch`. A step is
forward, loss, backward and Adam over every parameter (the item table included). Time: the median of
`--steps` steps, fewer where a row's steps have taken `--budget-s` seconds (a step at 10^6 items can
take minutes on one thread; the table gives the count). Gradients and Adam's state are allocated
first by a step that moves no weight, so memory is the peak resident memory during the steps above
what the process held before them: model, gradients, Adam's state (bench_efficiency.PeakMemory).

The full softmax is not run where it cannot fit: its peak is predicted as the chunked loss's peak
plus `c` copies of the (B, N) float32 matrix, `c` measured at the largest N where both ran (3 if
none did), and a prediction above `--memory-fraction` of the memory the kernel says is available
(MemAvailable) is reported as "does not fit" with the prediction, instead of risking the OOM killer
on a shared machine. The same holds for evaluation's one-block scoring. Where the full softmax runs,
the chunked loss is checked against it on the same representations and table: the loss value and
both gradients. Evaluation compares `scoring.rank_targets` and `scoring.top_k_chunked` with chunks of
`--score-chunk-size` items (the module's default) against one block of all N items (the full
matrix), and checks that both give the same ranks and top-K.
Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
from bench_efficiency import PeakMemory, build_model

from sigma_lightning.losses import ChunkedSoftmax, FullSoftmax, Loss, SampledSoftmax
from sigma_lightning.scoring import rank_targets, top_k_chunked

LOSSES = ("chunked", "full", "sampled-uniform", "sampled-popularity", "sampled-in-batch")
FLOAT32 = 4


def popularity(num_items: int, exponent: float, generator: torch.Generator) -> torch.Tensor:
    """(N,) Zipf probabilities, p ~ rank^-exponent, with the ranks shuffled over the item ids."""
    weights = torch.arange(1, num_items + 1, dtype=torch.float64).pow(-exponent)
    return (weights / weights.sum())[torch.randperm(num_items, generator=generator)]


def generate(num_items: int, batch_size: int, seq_len: int, seed: int, exponent: float = 0.8) -> dict:
    """One batch over a generated catalogue: input_ids (B, L) in 1..N (no padding), target (B,) and
    counts (N,), how often each item is a target in a generated training set of 20 N samples
    (what SampledSoftmax's popularity and in-batch negatives sample by)."""
    generator = torch.Generator().manual_seed(seed)
    probs = popularity(num_items, exponent, generator)  # (N,)
    draws = torch.multinomial(probs, batch_size * (seq_len + 1), replacement=True, generator=generator) + 1
    draws = draws.view(batch_size, seq_len + 1)  # (B, L + 1)
    counts = torch.poisson(probs * 20 * num_items, generator=generator).long()  # (N,)
    return {"input_ids": draws[:, :-1], "target": draws[:, -1], "counts": counts}


def make_loss(name: str, counts: torch.Tensor, args: argparse.Namespace) -> Loss:
    if name == "full":
        return FullSoftmax()
    if name == "chunked":
        return ChunkedSoftmax(args.chunk_size)
    negatives = name.removeprefix("sampled-").replace("-", "_")
    loss = SampledSoftmax(args.num_negatives, negatives)
    if loss.needs_item_counts:
        loss.set_item_counts(counts)
    return loss


def available_mb() -> float:
    """MemAvailable from /proc/meminfo (what the kernel can give without swapping), MB; inf elsewhere."""
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable")) / 1024
    except (OSError, StopIteration):
        return float("inf")


def matrix_mb(batch_size: int, num_items: int) -> float:
    """One (B, N) float32 matrix, MB."""
    return batch_size * num_items * FLOAT32 / 2**20


def timed_peak(fn: Callable[[], object], repeats: int, budget_s: float) -> tuple[float, int, float | None, object]:
    """(median seconds, calls, peak MB above the start, the last result) of up to `repeats` calls of
    fn, fewer once `budget_s` seconds are spent (at least one)."""
    memory = PeakMemory()
    memory.start()
    times, result = [], None
    while len(times) < repeats and (not times or sum(times) < budget_s):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times), memory.peak_mb(), result


def new_model(num_items: int, args: argparse.Namespace):
    torch.manual_seed(args.seed)
    return build_model(args.backbone, args.seq_len, num_items, args.hidden_size)


def measure_training(name: str, data: dict, num_items: int, args: argparse.Namespace) -> dict:
    """One row: seconds per step and peak MB of training with loss `name`, and the first step's loss."""
    model = new_model(num_items, args).train()
    model.loss = make_loss(name, data["counts"], args)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    input_ids, target = data["input_ids"], data["target"]

    def step() -> float:
        user = model(input_ids)  # (B, D)
        value = model.loss(user, model.item_embedding.weight[1:], target - 1)  # as SeqRecModule.training_step
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated: the baseline holds them
        value.backward()
        optimizer.step()
        return value.item()

    allocate_state(model, optimizer)
    torch.manual_seed(args.seed)
    losses = []
    seconds, steps, peak, _ = timed_peak(lambda: losses.append(step()), args.steps, args.budget_s)
    return {"items": num_items, "loss": name, "seconds": seconds, "steps": steps, "peak_mb": peak,
            "first_loss": losses[0]}  # fmt: skip


def allocate_state(model: torch.nn.Module, optimizer: torch.optim.Adam) -> None:
    """Allocate every gradient and Adam's state before measuring, without a (slow) real step: an
    Adam step from zero gradients and zero moments moves no parameter (the update is 0 / eps)."""
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters())), "the allocating step moved a weight"


def check_chunked(data: dict, num_items: int, args: argparse.Namespace) -> dict:
    """ChunkedSoftmax against FullSoftmax on one model's representations (B, D) and item table (N, D):
    the loss values and the largest gradient differences, relative to the largest gradient entry."""
    model = new_model(num_items, args).eval()
    with torch.no_grad():
        user = model(data["input_ids"])  # (B, D)
    items = model.item_embedding.weight[1:].detach()  # (N, D)
    target = data["target"] - 1
    results = {}
    for name, loss in (("full", FullSoftmax()), ("chunked", ChunkedSoftmax(args.chunk_size))):
        u, e = user.clone().requires_grad_(), items.clone().requires_grad_()
        value = loss(u, e, target)
        value.backward()
        results[name] = (value.item(), u.grad, e.grad)
    (full, grad_u, grad_e), (chunked, grad_u_c, grad_e_c) = results["full"], results["chunked"]
    return {
        "items": num_items, "full_loss": full, "chunked_loss": chunked, "loss_diff": abs(full - chunked),
        "grad_user_rel": ((grad_u - grad_u_c).abs().max() / grad_u.abs().max()).item(),
        "grad_items_rel": ((grad_e - grad_e_c).abs().max() / grad_e.abs().max()).item(),
    }  # fmt: skip


def measure_scoring(data: dict, num_items: int, args: argparse.Namespace, copies: dict) -> list[dict]:
    """Evaluation's ranks (with cross-entropy) and predict's top-K in chunks vs one block of all N
    items; the one-block run is skipped where its predicted peak does not fit."""
    model = new_model(num_items, args).eval()
    with torch.no_grad():
        user = model(data["input_ids"])  # (B, D)
    items = model.item_embedding.weight[1:].detach()  # (N, D)
    del model
    target = data["target"] - 1
    tasks = {
        "ranks": lambda chunk: rank_targets(user, items, target, chunk),
        "top-K": lambda chunk: top_k_chunked(user, items, args.k, chunk),
    }
    rows = []
    for task, run in tasks.items():
        chunk = args.score_chunk_size
        seconds, calls, peak, chunked = timed_peak(lambda: run(chunk), args.steps, args.budget_s)  # noqa: B023
        row = {"items": num_items, "task": task, "chunked_seconds": seconds, "calls": calls, "chunked_peak_mb": peak}
        predicted = predicted_full_mb(peak, copies.get(task), user.size(0), num_items)
        if predicted > args.memory_fraction * available_mb():
            row.update(full_seconds=None, full_peak_mb=None, full_predicted_mb=predicted, equal=None)
        else:
            seconds, _, peak_full, full = timed_peak(lambda: run(num_items), calls, args.budget_s)  # noqa: B023
            row.update(full_seconds=seconds, full_peak_mb=peak_full, full_predicted_mb=predicted)
            row["equal"] = same_scoring(task, chunked, full)
            copies[task] = (peak_full - peak) / matrix_mb(user.size(0), num_items)
            del full
        rows.append(row)
        del chunked
    return rows


def same_scoring(task: str, chunked: tuple, full: tuple) -> bool:
    """Ranks equal exactly and cross-entropies to float32 rounding; top-K ids and scores equal."""
    if task == "ranks":
        return torch.equal(chunked[0], full[0]) and torch.allclose(chunked[1], full[1], rtol=1e-5, atol=1e-5)
    return torch.equal(chunked[0], full[0]) and torch.equal(chunked[1], full[1])


def predicted_full_mb(chunked_peak: float | None, copies: float | None, batch_size: int, num_items: int) -> float:
    """The one-block / full-softmax peak: the chunked run's peak plus `copies` (B, N) float32 matrices."""
    return (chunked_peak or 0.0) + (3.0 if copies is None else copies) * matrix_mb(batch_size, num_items)


def run(args: argparse.Namespace) -> dict:
    """Every row for every catalogue size, the sizes in increasing order."""
    training, exactness, scoring = [], [], []
    copies: dict[str, float] = {}  # (B, N) matrices the full computations hold beyond the chunked ones
    for num_items in sorted(args.num_items):
        data = generate(num_items, args.batch_size, args.seq_len, args.seed)
        rows = {}
        for name in args.losses:  # chunked first: the full softmax's prediction needs its peak
            if name == "full":
                predicted = predicted_full_mb(rows.get("chunked", {}).get("peak_mb"), copies.get("train"),
                                              args.batch_size, num_items)  # fmt: skip
                if predicted > args.memory_fraction * available_mb():
                    rows[name] = {"items": num_items, "loss": name, "seconds": None, "peak_mb": None,
                                  "first_loss": None, "predicted_mb": predicted,
                                  "available_mb": available_mb()}  # fmt: skip
                    print(f"N={num_items:,} full: predicted {predicted:,.0f} MB, does not fit", flush=True)
                    continue
            rows[name] = measure_training(name, data, num_items, args)
            print(f"N={num_items:,} {name}: {rows[name]['seconds']:.2f} s, {rows[name]['peak_mb']:,.0f} MB", flush=True)
        full, chunked = rows.get("full"), rows.get("chunked")
        if full and chunked and full["peak_mb"] is not None:
            full["predicted_mb"] = predicted
            copies["train"] = (full["peak_mb"] - chunked["peak_mb"]) / matrix_mb(args.batch_size, num_items)
            exactness.append(check_chunked(data, num_items, args))
        training.extend(rows.values())
        scoring.extend(measure_scoring(data, num_items, args, copies))
        print(f"N={num_items:,} scoring done", flush=True)
    return {"training": training, "exactness": exactness, "scoring": scoring, "copies": copies}


def ratio(value: float | None, reference: float | None) -> str:
    return "n/a" if value is None or not reference else f"{value / reference:.2f}"


def format_tables(result: dict) -> str:
    lines = ["| items | loss | s/step | steps | x full | peak MB | x full | first loss |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    full = {r["items"]: r for r in result["training"] if r["loss"] == "full"}
    for r in result["training"]:
        ref = full.get(r["items"], {})
        if r["seconds"] is None:
            lines.append(f"| {r['items']:,} | {r['loss']} | does not fit: predicted peak {r['predicted_mb']:,.0f} MB, "
                         f"{r['available_mb']:,.0f} MB available | | | | | |")  # fmt: skip
            continue
        lines.append(f"| {r['items']:,} | {r['loss']} | {r['seconds']:.2f} | {r['steps']} | "
                     f"{ratio(r['seconds'], ref.get('seconds'))} | {r['peak_mb']:,.0f} | "
                     f"{ratio(r['peak_mb'], ref.get('peak_mb'))} | {r['first_loss']:.4f} |")  # fmt: skip
    lines += ["", "| items | full loss | chunked loss | abs. diff | grad user (rel.) | grad items (rel.) |",
              "| ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in result["exactness"]:
        lines.append(f"| {r['items']:,} | {r['full_loss']:.6f} | {r['chunked_loss']:.6f} | {r['loss_diff']:.1e} | "
                     f"{r['grad_user_rel']:.1e} | {r['grad_items_rel']:.1e} |")  # fmt: skip
    lines += ["", "| items | evaluation | calls | chunked s | one block s | chunked MB | one block MB | equal |",
              "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for r in result["scoring"]:
        if r["full_seconds"] is None:
            full_s, full_mb, equal = "does not fit", f"predicted {r['full_predicted_mb']:,.0f}", "n/a"
        else:
            full_s, full_mb, equal = f"{r['full_seconds']:.2f}", f"{r['full_peak_mb']:,.0f}", str(r["equal"])
        lines.append(f"| {r['items']:,} | {r['task']} | {r['calls']} | {r['chunked_seconds']:.2f} | {full_s} | "
                     f"{r['chunked_peak_mb']:,.0f} | {full_mb} | {equal} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-items", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=10,
                        help="history width; 10 is about Beauty's mean length-bucketed batch width (9)")  # fmt: skip
    parser.add_argument("--backbone", default="sasrec", help="a bundled recipe (benchmarks/bench_efficiency.py)")
    parser.add_argument("--hidden-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--chunk-size", type=int, default=ChunkedSoftmax().chunk_size, help="ChunkedSoftmax's")
    parser.add_argument("--num-negatives", type=int, default=1024, help="SampledSoftmax's (uniform, popularity)")
    parser.add_argument("--score-chunk-size", type=int, default=32768, help="SeqRecModule's default")
    parser.add_argument("--k", type=int, default=10, help="top-K's K")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (and evaluation calls) per row")
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="no further step of a row once its steps took this long (at least one runs)")
    parser.add_argument("--memory-fraction", type=float, default=0.7,
                        help="skip a full computation predicted to need more than this share of "
                        "MemAvailable")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows (and the machine) to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.losses = sorted(args.losses, key=LOSSES.index)  # chunked before full
    started = time.perf_counter()
    result = run(args)
    machine = {"torch": torch.__version__, "threads": args.threads, "platform": platform.platform(),
               "processor": platform.processor(), "seconds": time.perf_counter() - started}  # fmt: skip
    print(f"torch {machine['torch']}, {args.threads} threads, batch {args.batch_size}, L {args.seq_len}, "
          f"{args.backbone}, seed {args.seed}, {machine['seconds']:.0f} s in all\n{format_tables(result)}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": machine, "args": vars(args), **result}, out, indent=1)


if __name__ == "__main__":
    main()
