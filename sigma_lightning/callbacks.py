"""Callbacks the CLI always adds: exact resume (RNG states), the run's training time, data
statistics in the logs, a line per epoch, a wall-clock budget per invocation, which selective
scan runs, and subnormal floats flushed to zero while the Trainer runs."""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from sigma_lightning.errors import check_range
from sigma_lightning.nn.mamba import Mamba
from sigma_lightning.ops.backend import scan_backend_report


class RNGStateCheckpoint(Callback):
    """Saves the global RNG states (Python, NumPy, torch CPU and CUDA) in every checkpoint and restores
    them on resume, so dropout draws after `--ckpt_path last` are the ones the uninterrupted run would
    have made. Lightning itself re-seeds instead, which silently changes a resumed run's results.
    Stored as tensors and plain values only (checkpoints load with weights_only=True)."""

    def state_dict(self) -> dict[str, Any]:
        version, mt_state, gauss = random.getstate()
        np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
        state = {
            "python": [version, list(mt_state), gauss],
            "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version, mt_state, gauss = state_dict["python"]
        random.setstate((version, tuple(mt_state), gauss))
        np_name, np_keys, np_pos, np_has_gauss, np_gauss = state_dict["numpy"]
        np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class LogDataStatistics(Callback):
    """Logs the data set's statistics (users, items, interactions, ...) as hyperparameters."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        stats = getattr(trainer.datamodule, "statistics", None)
        if stats:
            for logger in trainer.loggers:
                logger.log_hyperparams({f"data/{k}": v for k, v in stats.items()})


class EpochSummary(Callback):
    """One plain line per epoch (epoch, wall time, loss, validation metrics): readable in a log file
    on a server where the progress bar is off."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()  # a mid-epoch resume (after SIGTERM) skips on_train_epoch_start

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Runs after the epoch's validation, so both train and val numbers are current.
        metrics = trainer.callback_metrics
        shown = [k for k in ("train/loss_epoch", "val/loss", "val/HR@10", "val/NDCG@10", "val/MRR@10") if k in metrics]
        values = " ".join(f"{k}={float(metrics[k]):.4f}" for k in shown)
        rank_zero_info(f"epoch {trainer.current_epoch}: {time.perf_counter() - self._start:.1f}s {values}")


class WallClockBudget(Callback):
    """Ends this invocation of `fit` at the first epoch boundary after `seconds` of wall time (None:
    never), after that epoch's checkpoints are written; `--ckpt_path last` then continues the run.

    Unlike `Trainer(max_time=...)`, whose elapsed time is restored from the checkpoint and so bounds
    the whole run, this budget counts only the current process: it is for machines or sessions that
    allow a fixed time per job. The run is not finished when it stops this way: see `stopped`."""

    def __init__(self, seconds: float | None = None) -> None:
        if seconds is not None:
            check_range("budget.seconds", seconds, 0, low_inclusive=False)  # or null: no budget
        self.seconds = seconds
        self.stopped = False
        self._start = time.monotonic()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self.stopped = time.monotonic(), False

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After the epoch's validation; ModelCheckpoint (Lightning runs it last) then writes last.ckpt.
        if self.seconds is None or trainer.should_stop:
            return
        # Each rank reads its own clock: under DDP all stop when any is over (Lightning does not
        # reduce should_stop, and a rank starting an epoch the others left would wait forever).
        over = trainer.strategy.reduce_boolean_decision(time.monotonic() - self._start >= self.seconds, all=False)
        if over:
            rank_zero_info(f"budget: {self.seconds:.0f} s of wall time used; stopping here, resume with --ckpt_path last")
            self.stopped = trainer.should_stop = True


class TrainingClock(Callback):
    """Wall time the run has spent in `fit`, summed over every invocation that led to the current
    checkpoint: saved in each checkpoint and restored on resume, so a run trained across many
    sessions (or killed and resumed) reports its true cost. Time after the last checkpoint of a
    killed invocation is lost with the epochs it produced."""

    def __init__(self) -> None:
        self.previous_seconds = 0.0  # restored from the checkpoint
        self._start = time.monotonic()

    @property
    def seconds(self) -> float:
        """Total fit wall time of the run up to now."""
        return self.previous_seconds + time.monotonic() - self._start

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Runs after the checkpoint's callback states are restored: only this process's clock restarts.
        self._start = time.monotonic()

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_seconds = float(state_dict["seconds"])


class ScanBackendReport(Callback):
    """One line per scan_impl the model's Mamba blocks use, at the start of each fit, validate, test
    or predict (rank zero): which selective scan runs and why, e.g. the C kernel and its file, or
    the pure-PyTorch scan because no C compiler was found. Silent for models without Mamba blocks."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # setup() runs once per Trainer.fit/validate/test/predict, before the model is moved: the
        # device is the strategy's, not the parameters'.
        impls = sorted({m.scan_impl for m in pl_module.modules() if isinstance(m, Mamba)})
        for impl in impls:
            rank_zero_info(scan_backend_report(trainer.strategy.root_device, impl))


def subnormals_flushed() -> bool:
    """Whether CPU float arithmetic on this thread flushes subnormal numbers to zero now."""
    return (torch.tensor([1e-30]) * torch.tensor([1e-9])).item() == 0.0  # 1e-39 is subnormal in float32


class FlushSubnormals(Callback):
    """Flushes subnormal floats (|x| < 1.2e-38) to zero on CPU while a fit, validate, test or
    predict runs, and puts the previous mode back afterwards.

    x86 CPUs take a microcode assist for every operation on a subnormal. Gradients carried back
    through many steps of a recurrence (SIGMA's FE-GRU at width 200) shrink into that range, and
    the GRU's matrix products and the convolutions' backward slow down many times over
    (docs/efficiency.md, "Subnormal floats", has the measurement). Values move by less
    than 1.2e-38; the C selective scan flushes them the same way within each call. The mode belongs
    to the thread that sets it, which is the one that runs the training loop and its backward."""

    def __init__(self) -> None:
        self._previous: bool | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._previous = subnormals_flushed()
        torch.set_flush_denormal(True)  # False, and no change, where the CPU has no such mode

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore()  # Lightning skips teardown when a run raises

    def _restore(self) -> None:
        if self._previous is not None:
            torch.set_flush_denormal(self._previous)
            self._previous = None
