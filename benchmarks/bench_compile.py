"""Training step and inference time of each backbone eager and with model.compile (torch.compile).

    python benchmarks/bench_compile.py --threads 1                          # sasrec and sigma, inductor
    python benchmarks/bench_compile.py --backbones sasrec mamba4rec --backend aot_eager --batch-size 256
    python benchmarks/bench_compile.py --device cuda --batch-size 2048 --json compile-cuda.json

Each backbone is built from its bundled recipe twice with the same seed (bench_efficiency.build_model):
one eager, one with the backbone compiled as `--model.compile true` does it
(`module.compile_backbone`). A training step is forward, full-softmax cross-entropy over
`--num-items` items (Beauty's 12,101), backward and Adam, on one batch of full-length random
sequences; inference is the forward of the same batch in eval mode under no_grad. The first compiled
step and the first compiled inference trace and compile (their seconds are reported as compile time);
then `--steps` rounds alternate an eager and a compiled call of each, so a change of the machine's
load hits both alike, and the medians are compared (on CUDA each call waits for its kernels before
its time is taken). "max diff" is the largest difference between the
eager and the compiled model's eval-mode representations (the same weights). Graphs and graph breaks
are dynamo's counts over the compiled model's calls. Not a test: numbers depend on the machine and
its load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from bench_efficiency import BACKBONES, BEAUTY_ITEMS, build_model, machine_info, synchronize
from timing import timed
from torch._dynamo.utils import counters

from sigma_lightning.module import compile_backbone


def seconds(fn) -> float:
    """Seconds of one call of `fn` (the rounds alternate eager and compiled calls, so one at a time)."""
    return timed(fn, repeats=1)[0]


def measure(name: str, args: argparse.Namespace) -> dict:
    """One row: compile seconds, median step and inference seconds eager and compiled, max diff."""
    device = torch.device(args.device)
    models = []
    for compiled in (False, True):
        torch.manual_seed(args.seed)
        model = build_model(name, args.seq_len, args.num_items).to(device)
        if compiled:
            compile_backbone(model.backbone, args.mode, args.backend)
        models.append(model)
    generator = torch.Generator().manual_seed(args.seed)
    input_ids = torch.randint(1, args.num_items + 1, (args.batch_size, args.seq_len), generator=generator)  # (B, L)
    target = torch.randint(1, args.num_items + 1, (args.batch_size,), generator=generator)  # (B,)
    input_ids, target = input_ids.to(device), target.to(device)
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]

    def step(i: int) -> None:
        model, optimizer = models[i], optimizers[i]
        model.train()
        loss = F.cross_entropy(model.item_scores(model(input_ids)), target - 1)
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()
        synchronize(device)

    def infer(i: int) -> torch.Tensor:
        models[i].eval()
        with torch.no_grad():
            user = models[i](input_ids)  # (B, D)
        synchronize(device)
        return user

    torch._dynamo.reset()
    counters.clear()
    step(0), infer(0)  # the eager warm-up: gradients, Adam's state, lazy kernels
    compile_train = seconds(lambda: step(1))
    compile_infer = seconds(lambda: infer(1))
    print(f"{name}: compiled in {compile_train:.0f} s (training step) + {compile_infer:.0f} s (inference)", flush=True)
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    times = {key: [] for key in ("step_eager", "step_compiled", "infer_eager", "infer_compiled")}
    for _ in range(args.steps):
        times["step_eager"].append(seconds(lambda: step(0)))
        times["step_compiled"].append(seconds(lambda: step(1)))
        times["infer_eager"].append(seconds(lambda: infer(0)))
        times["infer_compiled"].append(seconds(lambda: infer(1)))
    models[1].load_state_dict(models[0].state_dict())  # the same weights (dropout masks differed), copied in place
    max_diff = (infer(0) - infer(1)).abs().max().item()
    return {
        "backbone": name, "compile_train_s": compile_train, "compile_infer_s": compile_infer,
        **{key: statistics.median(values) for key, values in times.items()},
        "max_diff": max_diff, "graphs": graphs, "graph_breaks": breaks,
        "recompiles": counters["stats"]["unique_graphs"] - graphs,
    }  # fmt: skip


def format_table(rows: list[dict]) -> str:
    lines = ["| backbone | compile s (train + infer) | step eager s | step compiled s | x | infer eager s | "
             "infer compiled s | x | graphs / breaks | max diff |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['compile_train_s']:.0f} + {r['compile_infer_s']:.0f} | {r['step_eager']:.3f} | "
            f"{r['step_compiled']:.3f} | {r['step_eager'] / r['step_compiled']:.2f} | {r['infer_eager']:.3f} | "
            f"{r['infer_compiled']:.3f} | {r['infer_eager'] / r['infer_compiled']:.2f} | "
            f"{r['graphs']} / {r['graph_breaks']} | {r['max_diff']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=["sasrec", "sigma"])
    parser.add_argument("--backend", default="inductor", help="model.compile_backend")
    parser.add_argument("--mode", default="default", help="model.compile_mode")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--num-items", type=int, default=BEAUTY_ITEMS)
    parser.add_argument("--steps", type=int, default=5, help="timed rounds (eager, compiled) after compiling")
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows (and the machine) to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = [measure(name, args) for name in args.backbones]
    machine = {**machine_info(torch.device(args.device), args.threads), "seconds": time.perf_counter() - started}
    print(f"{machine['device']}\ntorch {machine['torch']}, {args.threads} threads, backend {args.backend}, mode {args.mode}, "
          f"batch {args.batch_size}, L {args.seq_len}, {args.num_items:,} items, seed {args.seed}, "
          f"{machine['seconds']:.0f} s in all\n{format_table(rows)}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": machine, "args": vars(args), "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()
