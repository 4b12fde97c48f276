"""`sigma fit` really stopped by signals, then resumed with `--ckpt_path last` (subprocesses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sigma_lightning.checkpoints import read_checkpoint
from tests.test_cli import run, tiny_args

MAIN = "import sys; from sigma_lightning.cli import main; sys.exit(main(sys.argv[1:]))"
SMALL_BATCHES = ["--data.batch_size", "8"]  # 78 batches an epoch: a signal lands mid-epoch
SLURM = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "sigma-test", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
         "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}  # fmt: skip

pytestmark = pytest.mark.slow


def start_fit(tmp_path: Path, *extra: str, runs: str = "runs", env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    """`sigma fit` on the tiny data as a subprocess (one thread, output to a log file)."""
    log = tmp_path / f"{runs}.log"
    args = tiny_args(tmp_path, "fit", *SMALL_BATCHES, *extra, runs=runs)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-c", MAIN, *args], stdout=out, stderr=subprocess.STDOUT,
                                   env=environment, cwd=tmp_path)  # fmt: skip
    return process, log


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"sigma fit ended (status {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def checkpoints_of(tmp_path: Path, runs: str = "runs") -> Path:
    return tmp_path / runs / "quickstart" / "version_0" / "checkpoints"


def test_sigterm_mid_fit_saves_a_resumable_checkpoint_and_exits_non_zero(tmp_path):
    process, log = start_fit(tmp_path, "--trainer.max_epochs", "1000")
    wait_for(lambda: "epoch 0:" in log.read_text(), process, "the first epoch's line")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 2
    lines = log.read_text().strip().splitlines()
    assert lines[-1].startswith("sigma: stopped by SIGTERM at epoch ") and "resume with --ckpt_path last" in lines[-1]
    saved = read_checkpoint(checkpoints_of(tmp_path) / "last.ckpt")
    assert f"step {saved['global_step']}; saved" in lines[-1] and saved["global_step"] >= 78
    cli = run(tmp_path, "fit", *SMALL_BATCHES, "--trainer.max_epochs", str(saved["epoch"] + 2), "--ckpt_path", "last")
    assert cli.trainer.current_epoch == saved["epoch"] + 2 and cli.trainer.global_step > saved["global_step"]


def test_sigusr1_under_slurm_saves_lightnings_requeue_checkpoint_and_sigterm_then_stops(tmp_path, monkeypatch):
    """SLURM's warning signal before the time limit (`#SBATCH --signal=SIGUSR1@90`): Lightning saves
    hpc_ckpt_1.ckpt in the working folder and requeues (scontrol is absent here: it says so); the
    SIGTERM of the requeue then saves last.ckpt and exits non-zero. The requeued job, same command,
    resumes from the hpc checkpoint by itself."""
    process, log = start_fit(tmp_path, "--trainer.max_epochs", "1000", env=SLURM)
    wait_for(lambda: "epoch 0:" in log.read_text(), process, "the first epoch's line")
    process.send_signal(signal.SIGUSR1)
    wait_for(lambda: (tmp_path / "hpc_ckpt_1.ckpt").is_file(), process, "Lightning's hpc checkpoint")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) != 0
    assert "Requeuing SLURM job 4242 failed" in log.read_text()
    hpc = read_checkpoint(tmp_path / "hpc_ckpt_1.ckpt")  # written through AtomicCheckpointIO: checksummed
    assert read_checkpoint(checkpoints_of(tmp_path) / "last.ckpt")["global_step"] >= hpc["global_step"]
    monkeypatch.chdir(tmp_path)
    for name, value in SLURM.items():
        monkeypatch.setenv(name, value)
    cli = run(tmp_path, "fit", *SMALL_BATCHES, "--trainer.max_epochs", str(hpc["epoch"] + 2))
    assert Path(cli.trainer.ckpt_path).name == "hpc_ckpt_1.ckpt"
    assert cli.trainer.current_epoch == hpc["epoch"] + 2


def test_kill_9_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path):
    """Killed with SIGKILL (nothing can be saved) after the first epoch's checkpoint; `--ckpt_path
    last` then finishes the run with exactly the weights, optimizer state and best checkpoint of a
    run never interrupted: atomic end-of-epoch checkpoints and the saved RNG states."""
    epochs = ["--trainer.max_epochs", "3"]  # killed in epoch 1: two epochs, and a boundary, after the resume
    straight, _ = start_fit(tmp_path, *epochs, runs="straight")
    victim, _ = start_fit(tmp_path, *epochs, runs="victim")
    wait_for(lambda: (checkpoints_of(tmp_path, "victim") / "last.ckpt").is_file(), victim, "the first checkpoint")
    victim.kill()
    assert victim.wait(timeout=30) == -signal.SIGKILL
    killed_at = read_checkpoint(checkpoints_of(tmp_path, "victim") / "last.ckpt")["epoch"]
    assert killed_at < 2
    resumed, log = start_fit(tmp_path, *epochs, "--ckpt_path", "last", runs="victim")
    assert resumed.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert straight.wait(timeout=300) == 0
    for name in ["last.ckpt", *(p.name for p in checkpoints_of(tmp_path, "straight").glob("best*.ckpt"))]:
        expected = read_checkpoint(checkpoints_of(tmp_path, "straight") / name)
        got = read_checkpoint(checkpoints_of(tmp_path, "victim") / name)  # same file name: same best epoch and score
        assert got["epoch"] == expected["epoch"] and got["global_step"] == expected["global_step"]
        for key, value in expected["state_dict"].items():
            assert torch.equal(got["state_dict"][key], value), f"{name}: {key} differs after kill -9 and resume"
        for key, value in expected["optimizer_states"][0]["state"][0].items():
            assert torch.equal(got["optimizer_states"][0]["state"][0][key], value), f"{name}: Adam {key} differs"
