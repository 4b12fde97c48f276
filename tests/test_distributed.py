"""Many processes: DDP over gloo on this CPU, two ranks, against one process (docs/distributed.md).

The reference is a one-process fit, test and predict run in this process. The two-process runs are
real processes, started the three ways docs/distributed.md describes:

* two ranks spawned as `srun` starts the tasks of a 2-node SLURM job (its SLURM_* variables,
  `--trainer.num_nodes 2`; the spawn method: a forked rank can inherit a lock another thread holds
  and deadlock), each running fit, validate, test and predict through `run_sigma`, as the `sigma`
  command does;
* `sigma test ... --config ddp.yaml --trainer.devices 2`, whose second rank Lightning's own
  launcher starts;
* `torchrun --nproc_per_node 2 -m sigma_lightning.cli predict ...`.

The data: 165 users (odd: a padded shard would count a user twice) with 862 training samples (even,
so 2 ranks x 32 samples hold exactly the 1-process run's batches of 64), no dropout: the 2-process
fit is the 1-process fit up to float rounding, and a different global batch would show.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import Callback, EarlyStopping

from sigma_lightning.cli import BUNDLED_CONFIGS, MONITOR, run_sigma
from sigma_lightning.data.datamodule import SeqRecDataModule, per_process_batch
from sigma_lightning.data.synthetic import SyntheticConfig
from sigma_lightning.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
USERS = 165
DATA = [
    "--data.synthetic.num_users", str(USERS), "--data.synthetic.num_items", "40", "--data.synthetic.max_length", "12",
    "--data.use_cache", "false", "--data.batch_size", "64",
]  # fmt: skip
FIT = [
    "fit", "--config", "quickstart.yaml", *DATA, "--trainer.max_epochs", "4", "--trainer.accelerator", "cpu",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--model.backbone.init_args.dropout", "0", "--model.backbone.init_args.attn_dropout", "0",
    "--model.history_groups", "[5, 8]",  # three groups of these short histories (4 to 11 items)
    "--early_stopping.patience", "1", "--early_stopping.min_delta", "0.03",  # stops after 3 of 4 epochs
]  # fmt: skip
TWO_NODES = ["--trainer.strategy", "ddp", "--trainer.devices", "1", "--trainer.num_nodes", "2", "--trainer.accelerator",
             "cpu"]  # the spawned ranks: two "nodes" of one process each  # fmt: skip
SPAWN_TIMEOUT_S = 300  # a collective only some ranks reach hangs: fail instead of waiting forever


class RankRecorder(Callback):
    """Writes what this rank saw after each epoch (validation metrics, early stopping's and the best
    checkpoint's state) to `<folder>/rank<r>.json` when training ends. Read when the next epoch
    starts (and at the end): both decide in on_train_epoch_end, the checkpoints after every callback."""

    def __init__(self, folder: str) -> None:
        self.folder, self.epochs = Path(folder), []

    def _snapshot(self, trainer) -> None:
        stopping = next(c for c in trainer.callbacks if isinstance(c, EarlyStopping))
        best = next(c for c in trainer.checkpoint_callbacks if c.monitor == MONITOR)
        self.epochs.append({
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
            "wait_count": stopping.wait_count, "best_score": float(stopping.best_score),
            "should_stop": bool(trainer.should_stop),
            "best_model_score": float(best.best_model_score), "best_model_path": Path(best.best_model_path).name,
        })  # fmt: skip

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch > 0:
            self._snapshot(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._snapshot(trainer)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.epochs))


def recorder(folder: Path) -> list[str]:
    return [f"--trainer.callbacks+={__name__}.RankRecorder", "--trainer.callbacks.folder", str(folder)]


def evaluation(run: Path, stage: str) -> list[str]:
    """The command line of `sigma <stage>` of `run`'s best checkpoint."""
    return [stage, "--config", str(run / "config.yaml"), "--ckpt_path", str(next(run.glob("checkpoints/best*.ckpt")))]


def stage_metrics(cli) -> dict[str, float]:
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def group_csv(run: Path) -> list[dict]:
    with (run / "test" / "history_groups.csv").open() as file:
        return list(csv.DictReader(file))


# ---- the runs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> SimpleNamespace:
    """One process, in this one: fit (its per-epoch record), test (metrics and groups file), predict."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("one")
    run_sigma([*FIT, "--trainer.default_root_dir", str(folder), *recorder(folder / "record")])
    run = next(folder.glob("runs/quickstart/version_*"))
    tested = stage_metrics(run_sigma(evaluation(run, "test")))
    groups = group_csv(run)
    run_sigma([*evaluation(run, "predict"), "--predictions.path", str(folder / "predictions.parquet")])
    return SimpleNamespace(
        folder=folder, run=run, record=json.loads((folder / "record" / "rank0.json").read_text()),
        test=tested, groups=groups, predictions=pl.read_parquet(folder / "predictions.parquet"),
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, folder: str, reference_run: str) -> None:
    """One of two ranks, as `srun` starts the tasks of a SLURM job on 2 nodes with one task each (the
    SLURM_* variables that Lightning's SLURMEnvironment reads; both "nodes" are this machine): fit,
    then validate, test and predict of the 1-process run's checkpoint; writes rank<r>.json."""
    os.environ.update(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1", SLURM_NNODES="2", SLURM_NODEID=str(rank),
                      SLURM_PROCID=str(rank), SLURM_LOCALID="0", SLURM_JOB_ID="4242", SLURM_JOB_NAME="sigma",
                      SLURM_NODELIST="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    out, run = {}, Path(reference_run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = run_sigma([*FIT, *TWO_NODES, "--trainer.default_root_dir", f"{folder}/fit",
                         *recorder(Path(folder) / "record"), "--verbose"])  # fmt: skip
        out["cluster"] = type(fit.trainer.strategy.cluster_environment).__name__
        out["node_rank"] = fit.trainer.node_rank
        for stage in ("validate", "test"):
            out[stage] = stage_metrics(run_sigma([*evaluation(run, stage), *TWO_NODES, "--verbose"]))
        run_sigma([*evaluation(run, "predict"), *TWO_NODES, "--predictions.path", f"{folder}/predictions.parquet"])
    out["warnings"] = [str(w.message) for w in caught]
    # Clocks that disagree: rank 1's budget is spent after the first epoch, rank 0's never is.
    budget = ["--budget.seconds", "1e-9" if rank else "1e9", "--trainer.limit_train_batches", "2"]
    stopped = run_sigma([*FIT, *TWO_NODES, "--trainer.default_root_dir", f"{folder}/budget", *budget])
    out["budget_epochs"] = stopped.trainer.current_epoch
    # Weights that disagree: rank 1's optimizer makes its weights (and so its loss) non-finite in a
    # step or two, rank 0's stays finite; every rank must stop at the same step, not wait for the other.
    lr = ["--optimizer.init_args.lr", "1e30" if rank else "0.001", "--trainer.limit_train_batches", "4"]
    try:
        run_sigma([*FIT, *TWO_NODES, "--trainer.default_root_dir", f"{folder}/diverged", *lr])
        out["diverged"] = None
    except SystemExit as stop:
        out["diverged"] = str(stop)
    Path(folder, f"rank{rank}.json").write_text(json.dumps(out))


@pytest.fixture(scope="module")
def two(one, tmp_path_factory) -> SimpleNamespace:
    """Two spawned ranks: the 2-process fit, and validate/test/predict of `one`'s checkpoint (in a
    copy of its run folder, so the test's groups file is the 2-process run's)."""
    folder = tmp_path_factory.mktemp("two")
    run = folder / "reference" / one.run.name
    run.parent.mkdir()
    subprocess.run(["cp", "-r", str(one.run), str(run)], check=True)
    (run / "test" / "history_groups.csv").unlink()
    context = mp.start_processes(_rank, args=(free_port(), str(folder), str(run)), nprocs=2, start_method="spawn",
                                 join=False)  # fmt: skip
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two ranks did not finish in {SPAWN_TIMEOUT_S} s (a collective only one rank reached?)")
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]
    records = [json.loads((folder / "record" / f"rank{r}.json").read_text()) for r in range(2)]
    return SimpleNamespace(folder=folder, run=run, ranks=ranks, records=records,
                           predictions=pl.read_parquet(folder / "predictions.parquet"))  # fmt: skip


# ---- what they must agree on -------------------------------------------------------------------


@pytest.mark.slow
def test_one_checkpoint_tests_to_the_same_metrics_on_one_and_two_processes_each_user_once(one, two):
    for rank in two.ranks:  # every rank holds every user's metrics, not its shard's
        test = rank["test"]
        assert set(test) == set(one.test)
        for name, value in one.test.items():
            assert test[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
        counted = sum(v for k, v in test.items() if k.startswith("test/history") and k.endswith("/users"))
        assert counted == USERS  # each user exactly once: none dropped, none repeated by padding
    assert sum(int(row["users"]) for row in one.groups) == USERS and len(one.groups) == 3
    assert_rows_close(group_csv(two.run), one.groups)  # the saved groups file too


def assert_rows_close(rows: list[dict], expected: list[dict]) -> None:
    """Two history_groups.csv tables: the same groups and user counts, metrics to float rounding."""
    assert [r["group"] for r in rows] == [r["group"] for r in expected]
    for row, want in zip(rows, expected):
        assert row["users"] == want["users"]
        for key in want:
            if key not in ("group", "users"):
                assert float(row[key]) == pytest.approx(float(want[key]), rel=1e-5, abs=1e-6), (row["group"], key)


@pytest.mark.slow
def test_validate_on_two_processes_gives_the_best_epochs_validation(one, two):
    # The best checkpoint's epoch: its validation metrics, as the 1-process fit recorded them.
    best = max(one.record, key=lambda e: e["metrics"][MONITOR])
    for rank in two.ranks:
        for name, value in best["metrics"].items():
            assert rank["validate"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


@pytest.mark.slow
def test_a_two_process_fit_with_the_same_global_batch_follows_the_one_process_fit(one, two):
    """Same global batch (64 = 2 x 32), no dropout: the same steps up to float rounding, so the
    same validation loss per epoch (a global batch of 128 takes half the steps and misses by far)."""
    assert len(two.records[0]) == len(one.record)  # early stopping stopped at the same epoch
    for epoch, reference in zip(two.records[0], one.record):
        assert epoch["metrics"]["val/loss"] == pytest.approx(reference["metrics"]["val/loss"], rel=1e-4)
        for name in ("val/HR@10", "val/NDCG@10", "val/MRR@10"):
            assert epoch["metrics"][name] == pytest.approx(reference["metrics"][name], abs=2 / USERS), name


@pytest.mark.slow
def test_early_stopping_and_checkpointing_decide_the_same_on_every_rank(one, two):
    assert two.records[0] == two.records[1]  # metrics, wait counts, best scores and paths, every epoch
    assert two.records[0][-1]["should_stop"] and len(two.records[0]) < 4  # it did stop early
    saved = sorted(p.name for p in two.folder.glob("fit/runs/quickstart/version_*/checkpoints/best*.ckpt"))
    assert saved == [two.records[0][-1]["best_model_path"]]  # the one file every rank names


@pytest.mark.slow
def test_predict_on_two_processes_writes_each_user_once_as_one_process_does(one, two):
    assert two.predictions["user"].n_unique() == USERS
    assert two.predictions.group_by("user").len()["len"].max() == 10  # k rows each, none twice
    assert two.predictions.select("user", "rank", "item").equals(one.predictions.select("user", "rank", "item"))
    assert two.predictions["score"].to_list() == pytest.approx(one.predictions["score"].to_list(), rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_no_rank_warns_about_unsynced_logging(two):
    for rank in two.ranks:
        assert not [w for w in rank["warnings"] if "sync_dist" in w]


@pytest.mark.slow
def test_a_wall_clock_budget_spent_on_one_rank_stops_every_rank(two):
    """Each rank reads its own clock; were the decision its own, rank 0 would start an epoch that
    rank 1 left and wait for it forever (the two fixtures' timeout would fail the test)."""
    assert [rank["budget_epochs"] for rank in two.ranks] == [1, 1]


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_the_same_step(two):
    here, other = (rank["diverged"] for rank in reversed(two.ranks))  # rank 1's loss, then rank 0
    assert "training stopped at epoch 0" in here and "the training loss is" in here
    assert "not finite on another process" in other
    step = re.compile(r"epoch \d+, step \d+")
    assert step.search(here).group() == step.search(other).group()


@pytest.mark.slow
def test_the_ranks_ran_under_lightnings_slurm_support_as_two_nodes(two):
    assert [rank["cluster"] for rank in two.ranks] == ["SLURMEnvironment"] * 2
    assert [rank["node_rank"] for rank in two.ranks] == [0, 1]


@pytest.mark.slow
def test_sigma_test_command_with_the_ddp_config_launches_two_processes(one, tmp_path):
    """The real command line: Lightning's launcher starts rank 1 as `sigma ...` again; the bundled
    ddp.yaml (devices set to 2 here: this machine has no GPU) after the run's config."""
    run = tmp_path / one.run.name
    subprocess.run(["cp", "-r", str(one.run), str(run)], check=True)
    command = [str(Path(sys.executable).parent / "sigma"), *evaluation(run, "test"), "--config", "ddp.yaml",
               "--trainer.devices", "2", "--trainer.accelerator", "cpu", "--verbose"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # the run's config names RankRecorder
    done = subprocess.run(command, capture_output=True, text=True, timeout=SPAWN_TIMEOUT_S, cwd=tmp_path, env=env,
                          start_new_session=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr
    assert "sync_dist" not in done.stderr
    assert_rows_close(group_csv(run), one.groups)
    hr = f"{one.test['test/HR@10']:.6f}"[:6]  # the printed results table
    assert any(line.split("│")[1:2] and "test/HR@10" in line and hr in line for line in done.stdout.splitlines())


@pytest.mark.slow
def test_torchrun_starts_sigma_predict_on_two_processes(one, tmp_path):
    run = tmp_path / one.run.name
    subprocess.run(["cp", "-r", str(one.run), str(run)], check=True)
    output = tmp_path / "predictions.parquet"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "sigma_lightning.cli", *evaluation(run, "predict"), "--config", "ddp.yaml",
               "--trainer.devices", "2", "--trainer.accelerator", "cpu", "--predictions.path", str(output)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=SPAWN_TIMEOUT_S, cwd=tmp_path, env=env,
                          start_new_session=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr
    written = pl.read_parquet(output)
    assert written.select("user", "rank", "item").equals(one.predictions.select("user", "rank", "item"))


def test_the_ddp_config_is_bundled_and_names_the_strategy():
    text = (BUNDLED_CONFIGS / "ddp.yaml").read_text()
    assert "strategy: ddp" in text


# ---- fast checks of the pieces -----------------------------------------------------------------


def test_batch_size_is_the_global_batch_shared_equally(tmp_path):
    dm = SeqRecDataModule(synthetic=SyntheticConfig(num_users=60, num_items=30, max_length=10), use_cache=False,
                          batch_size=16)  # fmt: skip
    sizes = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        sizes.append([b["target"].numel() for b in dm.train_dataloader()][0])
    assert sizes == [8, 8] and per_process_batch(2048, 4) == 512
    with pytest.raises(DataError, match=r"data.batch_size=15 is the global batch.*multiple of 2, e.g. 14 or 16"):
        per_process_batch(15, 2)
    dm.batch_size = 15
    with pytest.raises(DataError, match="data.batch_size=15"):
        dm.setup("fit")  # before the first step


def test_a_killed_runs_parts_of_another_rank_are_not_merged(tmp_path):
    """A 2-process predict killed before its merge leaves rank 1's parts; a 1-process predict to
    the same path must not merge them into its file."""
    common = ["--config", "quickstart.yaml", *DATA, "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    run_sigma(["fit", *common, "--trainer.limit_train_batches", "1", "--trainer.enable_model_summary", "false"])
    run = next(tmp_path.glob("runs/quickstart/version_*"))
    output = tmp_path / "predictions.parquet"
    parts = tmp_path / f".{output.name}.parts"
    parts.mkdir()
    stale = pl.DataFrame({"user": ["stale"], "rank": [1], "item": ["x"], "score": [1.0], "from_popularity": [False],
                          "exclude_seen": [True]}, schema_overrides={"score": pl.Float32})  # fmt: skip
    stale.write_parquet(parts / "rank00001-00-00000000.parquet")
    run_sigma([*evaluation(run, "predict"), "--predictions.path", str(output)])
    written = pl.read_parquet(output)
    assert "stale" not in written["user"].to_list() and written["user"].n_unique() == USERS
