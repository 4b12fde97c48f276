"""The lines `sigma fit` ends with: where the run is, its best checkpoint and score, and the exact
commands to test it, predict with it and open TensorBoard (docs/cli.md)."""

from __future__ import annotations

import shlex
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from sigma_lightning.run_folders import run_folder


class FitSummary(Callback):
    """Prints the summary once at the end of `fit`, on rank zero. The commands use the run's own
    config.yaml (every setting of this run, overrides included), so they work as printed."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_dir = trainer.log_dir  # on every rank: under DDP it is a collective (a broadcast)
        rank_zero_info(fit_summary(trainer, Path(log_dir) if log_dir else None))


def fit_summary(trainer: Trainer, log_dir: Path | None) -> str:
    best = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    lines = [f"sigma: {stop_reason(trainer)}"]
    if log_dir is not None:
        lines.append(f"  run folder       {shown(str(log_dir))}")
    if best is None or not best.best_model_path:
        lines.append("  best checkpoint  none (no validation metric was monitored)")
        return "\n".join(lines)
    score = best.monitor if best.best_model_score is None else f"{best.monitor} = {float(best.best_model_score):.4f}"
    lines.append(f"  best checkpoint  {shown(best.best_model_path)} ({score})")
    config = run_config(trainer, log_dir)
    common = (["--config", str(config)] if config else []) + ["--ckpt_path", best.best_model_path]
    predictions = run_folder(best.best_model_path) / "predictions.parquet"  # sigma predict's default, written out
    lines.append(f"  test it          {command('sigma', 'test', *common)}")
    lines.append(f"  recommend        {command('sigma', 'predict', *common, '--predictions.path', str(predictions))}")
    if any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers) and log_dir is not None:
        lines.append(f"  TensorBoard      {command('tensorboard', '--logdir', str(log_dir.parent))}")
    return "\n".join(lines)


def stop_reason(trainer: Trainer) -> str:
    """Why fit ended: the time budget (resume), early stopping, or the epoch limit."""
    if any(getattr(c, "stopped", False) for c in trainer.callbacks):  # WallClockBudget
        return f"stopped by --budget.seconds after epoch {trainer.current_epoch - 1}; continue with --ckpt_path last"
    early = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping) and c.stopped_epoch), None)
    if early is not None:
        return f"early stopping at epoch {early.stopped_epoch} ({early.monitor} stopped improving)"
    epochs = trainer.current_epoch
    return f"fit finished after {epochs} epoch{'s' if epochs != 1 else ''}"


def run_config(trainer: Trainer, log_dir: Path | None) -> Path | None:
    """The config.yaml LightningCLI saved in the run folder, if it did."""
    saver = next((c for c in trainer.callbacks if isinstance(c, SaveConfigCallback)), None)
    if saver is None or log_dir is None or not (log_dir / saver.config_filename).is_file():
        return None
    return log_dir / saver.config_filename


def command(*words: str) -> str:
    return " ".join(shlex.quote(shown(word)) for word in words)


def shown(word: str) -> str:
    """A path under the current folder relative to it (shorter to read and to copy), else as is."""
    path = Path(word)
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        return str(path.relative_to(Path.cwd()))
    return word
