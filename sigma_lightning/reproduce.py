"""`sigma reproduce`: runs one recipe to the end across as many invocations as it takes, then tests
it once and records the result; `--table` prints every recorded result as the rows of docs/results.md.

    sigma reproduce beauty/sigma --seed 43 --runs ~/sigma-runs/runs \\
        --budget 3600 -- --data.path data/beauty/Beauty.txt --data.bucket_by_length true
    sigma reproduce beauty/sigma --seed 42 --tag no-ds-gate --runs ... \\
        -- --model.backbone.init_args.ds_gate false --data.path ...
    sigma reproduce --table --runs ~/sigma-runs/runs   # or --runs docs/records

(`python -m sigma_lightning.reproduce ...` is the same.) Everything after `--` goes to `sigma fit`
and `sigma test` as given.

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
import shlex
import statistics
import sys
from datetime import datetime, timezone
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sigma_lightning.callbacks import TrainingClock, WallClockBudget
from sigma_lightning.cli import SigmaExit, newest_checkpoint, run_sigma
from sigma_lightning.cpu_memory import MallocSetting
from sigma_lightning.errors import DataError, SigmaError

METRICS = ("HR@10", "NDCG@10", "MRR@10")
# Test HR/NDCG/MRR@10 the papers report for the bundled recipes (SIGMA paper, Table 2; docs/models.md).
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
    recipe: str, seed: int, tag: str | None, runs: Path, budget: float | None, extra: list[str],
    records: Path | None = None, malloc: MallocSetting = "default", invocation: str | None = None,
) -> dict:
    """One invocation: resume or start, train within the budget, test once training has ended. A
    finished run's result is also written to `records/<name>.json` when `records` is given.
    `malloc` is the runs' `--malloc` default (the command's is "keep"); `invocation`, the command
    line recorded in the result (default: the `sigma reproduce` command of this run)."""
    name = run_name(recipe, seed, tag)
    folder = runs / name
    progress_file = folder / "progress.json"
    common = [
        "--config", f"{recipe}.yaml", "--seed_everything", str(seed), *extra,
        "--trainer.logger.init_args.save_dir", str(runs), "--trainer.logger.init_args.name", name,
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    sigma = runner(common, malloc)
    if (folder / "result.json").is_file():
        return keep_record(recorded_result(folder / "result.json", sigma), records)
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
    cli = sigma("fit", *resume, *(["--budget.seconds", str(budget)] if budget else []))
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
        "command": invocation or reproduce_command(recipe, seed, tag, extra), "machine": machine(trainer.strategy.root_device, trainer.num_devices),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "best_checkpoint": best, "best_val_ndcg10": float(trainer.checkpoint_callback.best_model_score),
        **progress,
        "test": test_metrics(sigma, best), "test_history_masked": test_metrics(sigma, best, mask_history=True),
    }  # fmt: skip
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    return keep_record(result, records)


def runner(common: list[str], malloc: MallocSetting) -> Callable[..., Any]:
    """`sigma(subcommand, *args)`: `sigma <subcommand> <common> <args>`, in that order, so that `args`
    (a checkpoint, `--model.mask_history true`) override the recipe and the run's settings."""

    def sigma(subcommand: str, *args: str) -> Any:
        return run_sigma([subcommand, *common, *args], malloc=malloc)

    return sigma


def keep_record(result: dict, records: Path | None) -> dict:
    """Copies a finished run's result into `records` (e.g. docs/records, committed), so that the
    table can be made again where the run folders, with their checkpoints, are not kept."""
    if records is not None:
        records.mkdir(parents=True, exist_ok=True)
        (records / f"{result['name']}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def test_metrics(sigma: Callable[..., Any], checkpoint: str, mask_history: bool = False) -> dict[str, float]:
    """Test metrics of a checkpoint: as the protocol says (the recipe's `mask_history`, off), or with
    the user's history items excluded from the ranking (a second reading, never used for selection).
    `sigma(*args)` runs `sigma <args> <the run's settings>`."""
    masked = ["--model.mask_history", "true"] if mask_history else []
    tested = sigma("test", "--ckpt_path", checkpoint, *masked)
    metrics = tested.trainer.callback_metrics
    return {k.removeprefix("test/"): float(v) for k, v in metrics.items() if k.startswith("test/")}


def recorded_result(path: Path, sigma: Callable[..., Any]) -> dict:
    """A finished run's result; one recorded before the history-masked test gets it added."""
    result = json.loads(path.read_text())
    if "test_history_masked" not in result:
        result["test_history_masked"] = test_metrics(sigma, result["best_checkpoint"], mask_history=True)
        path.write_text(json.dumps(result, indent=1))
    return result


def results(folder: Path) -> list[dict]:
    """The finished runs' results under `folder`: run folders' `result.json` and records `<name>.json`
    (a run found as both counts once)."""
    found = {}
    for path in sorted(folder.glob("*/result.json")) + sorted(folder.glob("*.json")):
        r = json.loads(path.read_text())
        if not {"name", "recipe", "test"} <= set(r):
            raise DataError(f"{path} is not a result record of sigma reproduce (no name, recipe or test): move it out of {folder}")
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
            values = [r["test"][m] for r in rs if (r.get("test") or {}).get(m) is not None]
            spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.4f}{spread}" if values else "n/a")
        epochs = ", ".join(f"{r.get('epochs', 'n/a')} ({best_epoch(r)})" for r in rs)
        selected_on = ", ".join(_fmt(r.get("best_val_ndcg10")) for r in rs)  # what the choice was made on
        hours = ", ".join(wall_time(r) for r in rs)
        seeds = ", ".join(str(r["seed"]) for r in rs)
        paper = " / ".join(f"{v:.4f}" for v in PAPER[recipe]) if recipe in PAPER else ""
        masked = [r["test_history_masked"] for r in rs if r.get("test_history_masked")]
        masked_means = " / ".join(_mean_or_na([t.get(m) for t in masked]) for m in METRICS) if masked else ""
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


def best_epoch(result: dict) -> str:
    """The best epoch: the record's `best_epoch`, else read off the best checkpoint's name."""
    if result.get("best_epoch") is not None:
        return f"epoch{int(result['best_epoch']):03d}"
    name = result.get("best_checkpoint")
    return Path(name).name.split("-")[1] if name else "n/a"


def wall_time(result: dict) -> str:
    """A run's training time; a transcribed record may hold only the time as it was printed."""
    if result.get("wall_time_s") is not None:
        return duration(result["wall_time_s"])
    return result.get("wall_time_as_printed") or "n/a"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _mean_or_na(values: list) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.mean(known):.4f}" if known else "n/a"


def duration(seconds: float) -> str:
    """Hours to one decimal; minutes under an hour (a GPU run of minutes is not "0.0 h")."""
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def command(result: dict) -> str:
    """The command that trains and tests a recorded run again (without --runs and --budget)."""
    return reproduce_command(result["recipe"], result["seed"], result.get("tag"), result.get("overrides") or [])


def reproduce_command(recipe: str, seed: int, tag: str | None, overrides: list[str]) -> str:
    """`sigma reproduce <recipe> --seed <seed> [--tag <tag>] [-- <overrides>]`, quoted for a shell."""
    words = ["sigma", "reproduce", recipe, "--seed", str(seed), *(["--tag", tag] if tag else [])]
    return shlex.join([*words, *(["--", *overrides] if overrides else [])])


def main(args: list[str] | None = None) -> None:
    """`sigma reproduce <args>` (None: sys.argv[1:]). A bad setting or records folder ends with one
    line `sigma: error: ...` and exit status 2."""
    argv = sys.argv[1:] if args is None else list(args)
    invocation = shlex.join(["sigma", "reproduce", *argv])
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog="sigma reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe", nargs="?", help="bundled recipe without .yaml, e.g. beauty/sigma")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tag", help="names a variant (ablation, init) given by the overrides after --")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--budget", type=float, help="seconds of training in this invocation")
    parser.add_argument("--records", type=Path, help="also write each finished run's result here (docs/records)")
    parser.add_argument("--table", action="store_true", help="print the results recorded under --runs (run folders or records)")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep", help="as `sigma fit --malloc` (cpu_memory.py)")
    options = parser.parse_args(argv)
    if not options.table and not options.recipe:
        parser.error("give a recipe (e.g. beauty/sigma) or --table")
    try:
        if options.table:
            print(table(options.runs))
            return
        result = train_and_test(options.recipe, options.seed, options.tag, options.runs, options.budget, extra,
                                options.records, options.malloc, invocation)  # fmt: skip
    except SigmaError as error:  # from reading records; run_sigma reports its own errors
        print(f"sigma: error: {error}", file=sys.stderr)
        raise SigmaExit(f"sigma: error: {error}") from None
    print(json.dumps({k: v for k, v in result.items() if k != "overrides"}, indent=1))


if __name__ == "__main__":
    main()
