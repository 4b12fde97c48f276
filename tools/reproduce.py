"""Runs one recipe to the end across as many invocations as it takes, then tests it once and
records the result; `--table` prints every recorded result as the rows of docs/results.md.

    python tools/reproduce.py beauty/sigma --seed 43 --runs ~/sigma-runs/runs \\
        --budget 3600 -- --data.path ../shared/data/beauty/Beauty.txt --data.bucket_by_length true
    python tools/reproduce.py beauty/sigma --seed 42 --tag no-ds-gate --runs ... \\
        -- --model.backbone.init_args.ds_gate false --data.path ...
    python tools/reproduce.py --table --runs ~/sigma-runs/runs   # or --runs docs/records

Each invocation resumes the run from its last checkpoint if there is one (`--ckpt_path last`), trains
for at most `--budget` seconds of wall time (stopping at an epoch boundary), and once training has
ended by early stopping or max_epochs, tests the best validation checkpoint (selection on
validation NDCG@10 only) and writes `<run>/result.json`: the command, seed, epochs, best epoch, the
test metrics as the protocol defines them and again with each user's history items excluded from
the ranking (`test_history_masked`; both read the one selected checkpoint), machine, and training
wall time (the TrainingClock callback keeps it in every checkpoint, so it sums every invocation; an
invocation killed mid-epoch loses only the time after its last checkpoint, which produced nothing
kept). A run with a result is not trained again (one recorded before the history-masked test gets
that test added). The run folder is `<runs>/<data>-<model>[-<tag>]-s<seed>`. With `--records
docs/records` the result is copied to `docs/records/<run>.json` too: run folders live outside the
repository and go with the machine, the records are committed, and `--table --runs docs/records`
makes the table from them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from sigma_lightning.callbacks import TrainingClock, WallClockBudget
from sigma_lightning.cli import newest_checkpoint, run_sigma
from sigma_lightning.cpu_memory import keep_freed_memory

METRICS = ("HR@10", "NDCG@10", "MRR@10")
# Test HR/NDCG/MRR@10 the papers report for the bundled recipes (SIGMA paper, Table 2; MODELS.md).
PAPER = {
    "beauty/sasrec": (0.0852, 0.0532, 0.0392), "beauty/mamba4rec": (0.0880, 0.0540, 0.0436),
    "beauty/echomamba4rec": (0.0903, 0.0567, 0.0447), "beauty/sigma": (0.0986, 0.0604, 0.0488),
    "beauty/gru4rec": (0.0612, 0.0334, 0.0242),
    "sports/sasrec": (0.0721, 0.0546, 0.0513), "sports/mamba4rec": (0.0676, 0.0563, 0.0527),
    "sports/echomamba4rec": (0.0689, 0.0569, 0.0534), "sports/sigma": (0.0735, 0.0590, 0.0556),
    "ml-1m/sasrec": (0.2998, 0.1692, 0.1279), "ml-1m/mamba4rec": (0.3253, 0.1868, 0.1413),
    "ml-1m/echomamba4rec": (0.3239, 0.1848, 0.1429), "ml-1m/sigma": (0.3308, 0.1906, 0.1479),
}  # fmt: skip


def run_name(recipe: str, seed: int, tag: str | None) -> str:
    return "-".join([recipe.replace("/", "-"), *([tag] if tag else []), f"s{seed}"])


def machine(device: torch.device, num_devices: int = 1) -> str:
    """Host, processor and core count, and what trained: the accelerator the trainer ran on (name and
    count) or the CPU threads torch used. Read from the trainer's device, not from what the host has:
    a CPU run on a machine with a GPU is a CPU run."""
    if device.type == "cuda":
        computes = torch.cuda.get_device_name(device)
        computes = f"{num_devices} x {computes}" if num_devices > 1 else computes
    elif device.type == "cpu":
        computes = f"CPU, {torch.get_num_threads()} threads"
    else:
        computes = f"{device.type}, {num_devices} device(s)"
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else []
    processor = names[0].strip() if names else platform.processor() or platform.machine()
    return f"{platform.node()}: {processor} ({os.cpu_count()} cores), {computes}; torch {torch.__version__}"


def train_and_test(
    recipe: str, seed: int, tag: str | None, runs: Path, budget: float | None, extra: list[str], records: Path | None = None
) -> dict:
    """One invocation: resume or start, train within the budget, test once training has ended. A
    finished run's result is also written to `records/<name>.json` when `records` is given."""
    name = run_name(recipe, seed, tag)
    folder = runs / name
    progress_file = folder / "progress.json"
    common = [
        "--config", f"{recipe}.yaml", "--seed_everything", str(seed), *extra,
        "--trainer.logger.init_args.save_dir", str(runs), "--trainer.logger.init_args.name", name,
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    if (folder / "result.json").is_file():
        return keep_record(recorded_result(folder / "result.json", common), records)
    resume = ["--ckpt_path", "last"] if newest_checkpoint(folder, "last") else []
    progress = {"wall_time_s": 0.0, "invocations": 0, "killed_invocations": 0, "epochs": 0, "running": False}
    if progress_file.is_file():
        progress.update(json.loads(progress_file.read_text()))
    # An invocation killed before it returned (no --budget, or a machine taken away) leaves "running".
    progress["killed_invocations"] += int(progress["running"])
    progress["invocations"] += 1
    progress["running"] = True
    folder.mkdir(parents=True, exist_ok=True)
    progress_file.write_text(json.dumps(progress, indent=1))
    cli = run_sigma(["fit", *common, *resume, *(["--budget.seconds", str(budget)] if budget else [])])
    trainer = cli.trainer
    clock = next(c for c in trainer.callbacks if isinstance(c, TrainingClock))
    progress.update(wall_time_s=clock.seconds, epochs=trainer.current_epoch)
    progress["running"] = False
    progress_file.write_text(json.dumps(progress, indent=1))
    budget_stop = next(c for c in trainer.callbacks if isinstance(c, WallClockBudget)).stopped
    if budget_stop or trainer.interrupted:
        return {"name": name, "status": "training", **progress}
    # found afresh: the checkpoint callback's own path is stale if the run folder was moved
    best = str(newest_checkpoint(folder, "best"))
    result = {
        "name": name, "status": "done", "recipe": recipe, "seed": seed, "tag": tag, "overrides": extra,
        "command": " ".join(["python", *sys.argv]), "machine": machine(trainer.strategy.root_device, trainer.num_devices),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "best_checkpoint": best, "best_val_ndcg10": float(trainer.checkpoint_callback.best_model_score),
        **progress,
        "test": test_metrics(common, best), "test_history_masked": test_metrics(common, best, mask_history=True),
    }  # fmt: skip
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    return keep_record(result, records)


def keep_record(result: dict, records: Path | None) -> dict:
    """Copies a finished run's result into `records` (e.g. docs/records, committed), so that the
    table can be made again where the run folders, with their checkpoints, are not kept."""
    if records is not None:
        records.mkdir(parents=True, exist_ok=True)
        (records / f"{result['name']}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def test_metrics(common: list[str], checkpoint: str, mask_history: bool = False) -> dict[str, float]:
    """Test metrics of a checkpoint: as the protocol says (the recipe's `mask_history`, off), or with
    the user's history items excluded from the ranking (a second reading, never used for selection)."""
    masked = ["--model.mask_history", "true"] if mask_history else []
    tested = run_sigma(["test", *common, "--ckpt_path", checkpoint, *masked])
    metrics = tested.trainer.callback_metrics
    return {k.removeprefix("test/"): float(v) for k, v in metrics.items() if k.startswith("test/")}


def recorded_result(path: Path, common: list[str]) -> dict:
    """A finished run's result; one recorded before the history-masked test gets it added."""
    result = json.loads(path.read_text())
    if "test_history_masked" not in result:
        result["test_history_masked"] = test_metrics(common, result["best_checkpoint"], mask_history=True)
        path.write_text(json.dumps(result, indent=1))
    return result


def results(folder: Path) -> list[dict]:
    """The finished runs' results under `folder`: run folders' `result.json` and records `<name>.json`
    (a run found as both counts once)."""
    found = {}
    for path in sorted(folder.glob("*/result.json")) + sorted(folder.glob("*.json")):
        r = json.loads(path.read_text())
        if not {"name", "recipe", "test"} <= set(r):
            raise ValueError(f"{path} is not a result record of tools/reproduce.py (no name, recipe or test): move it out of {folder}")
        found.setdefault(r["name"], r)
    return [found[name] for name in sorted(found)]


def table(runs: Path) -> str:
    """Markdown rows, one per (recipe, tag): each seed's best validation NDCG@10, and mean and spread
    over seeds of the test metrics. `runs` holds run folders, records, or both."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results(runs):
        groups.setdefault((r["recipe"], r["tag"] or ""), []).append(r)
    lines = [
        "| recipe | tag | seeds | epochs (best) | best val NDCG@10 | " + " | ".join(f"test {m}" for m in METRICS)
        + " | paper | history masked | wall time |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " | --- | --- | --- |",
    ]
    for (recipe, tag), rs in groups.items():
        cells = []
        for m in METRICS:
            values = [r["test"][m] for r in rs]
            spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.4f}{spread}")
        epochs = ", ".join(f"{r['epochs']} ({Path(r['best_checkpoint']).name.split('-')[1]})" for r in rs)
        selected_on = ", ".join(f"{r['best_val_ndcg10']:.4f}" for r in rs)  # what the choice was made on
        hours = ", ".join(duration(r["wall_time_s"]) for r in rs)
        seeds = ", ".join(str(r["seed"]) for r in rs)
        paper = " / ".join(f"{v:.4f}" for v in PAPER[recipe]) if recipe in PAPER else ""
        masked = [r["test_history_masked"] for r in rs if "test_history_masked" in r]
        masked_means = " / ".join(f"{statistics.mean(t[m] for t in masked):.4f}" for m in METRICS) if masked else ""
        lines.append(
            f"| {recipe} | {tag} | {seeds} | {epochs} | {selected_on} | " + " | ".join(cells) + f" | {paper} | {masked_means} | {hours} |"
        )
    lines.append("\nEach run's command and machine:")
    lines += [f"- {r['name']} ({r.get('machine', 'machine not recorded')}): `{command(r)}`" for rs in groups.values() for r in rs]
    unfinished = [p.parent for p in sorted(runs.glob("*/progress.json")) if not (p.parent / "result.json").exists()]
    if unfinished:
        lines.append("\nStill training (resume with the same command):")
    for folder in unfinished:
        progress = json.loads((folder / "progress.json").read_text())
        best = newest_checkpoint(folder, "best")
        lines.append(
            f"- {folder.name}: {progress['epochs']} epochs after {progress['invocations']} invocations "
            f"({progress['killed_invocations']} killed), {duration(progress['wall_time_s'])}, "
            f"best {best.stem if best else 'none yet'}"
        )
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """Hours to one decimal; minutes under an hour (a GPU run of minutes is not "0.0 h")."""
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def command(result: dict) -> str:
    """The reproduce.py command that trains and tests this run again (without --runs and --budget)."""
    tag = f" --tag {result['tag']}" if result.get("tag") else ""
    overrides = " ".join(result.get("overrides") or [])
    return f"python tools/reproduce.py {result['recipe']} --seed {result['seed']}{tag}" + (f" -- {overrides}" if overrides else "")


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", help="bundled recipe without .yaml, e.g. beauty/sigma")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tag", help="names a variant (ablation, init) given by the overrides after --")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--budget", type=float, help="seconds of training in this invocation")
    parser.add_argument("--records", type=Path, help="also write each finished run's result here (docs/records)")
    parser.add_argument("--table", action="store_true", help="print the results recorded under --runs (run folders or records)")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.runs))
        return
    if not args.recipe:
        parser.error("give a recipe (e.g. beauty/sigma) or --table")
    keep_freed_memory()  # as the `sigma` command does: no page faults for every step's big tensors
    result = train_and_test(args.recipe, args.seed, args.tag, args.runs, args.budget, extra, args.records)
    print(json.dumps({k: v for k, v in result.items() if k != "overrides"}, indent=1))


if __name__ == "__main__":
    main()
