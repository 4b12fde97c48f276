"""Guards the CLI installs so that a run that went wrong never looks like a success.

* `StopOnNonFinite`: a NaN or inf training loss stops training at that step, and a checkpoint of
  non-finite weights is never written (as best, last or otherwise); `TrainingDiverged` names the
  epoch, the step and the likely causes (learning rate, fp16 precision).
* `CheckpointOnSigterm`: Lightning's signal connector turns SIGTERM (also the one SLURM sends before
  a requeue or at the time limit) into `SIGTERMException` at the next batch boundary; this callback
  then saves a resumable `last.ckpt` in the run's checkpoint folder. The CLI exits non-zero with
  `stopped_message`. SLURM's SIGUSR1 with auto-requeue is Lightning's own (an `hpc_ckpt_N.ckpt`).
* `bounded_yaml_load`: the CLI's YAML loader. It refuses a document whose expanded size (aliases
  counted at every use) or nesting is out of bounds before anything is built, so an alias bomb costs
  milliseconds, and names the file and line of a syntax error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import get_loader, set_loader
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from sigma_lightning.checkpoints import non_finite
from sigma_lightning.errors import ConfigError, SigmaError


class TrainingDiverged(SigmaError):
    """Training produced a non-finite loss or weights; nothing of it was saved."""


def _diverged(trainer: Trainer, what: str) -> TrainingDiverged:
    """The one message of a diverged run: where, what, and what to change."""
    lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
    precision = str(trainer.precision)
    fp16 = "16" in precision and "bf16" not in precision
    causes = [
        f"a learning rate too high (lr={lr:g}; try 10x lower: --optimizer.init_args.lr {lr / 10:g})"
        if lr is not None
        else "a learning rate too high",
        f"fp16 overflow (trainer.precision={precision}; use --trainer.precision bf16-mixed or 32-true)"
        if fp16
        else "with trainer.precision 16-mixed, fp16 overflow (use bf16-mixed)",
    ]
    return TrainingDiverged(
        f"training stopped at epoch {trainer.current_epoch}, step {trainer.global_step}: {what}. "
        f"No checkpoint of these weights was saved. Likely causes: {'; or '.join(causes)}."
    )


class StopOnNonFinite(Callback):
    """Raise `TrainingDiverged` at the first non-finite training loss, and before any checkpoint of
    non-finite weights is written. The loss check reads one scalar per step; the weight check runs
    only when a checkpoint is saved (the step whose update made the weights NaN still had a finite
    loss, and an epoch can end on it: validation of NaN weights scores 0, which ModelCheckpoint
    would otherwise keep as the best so far)."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        here = isinstance(loss, Tensor) and not bool(torch.isfinite(loss).all())
        # Under DDP every rank stops at the same step: a rank raising alone would leave the others
        # waiting in the next gradient all-reduce (one boolean all-reduce per step; none on one process).
        if trainer.strategy.reduce_boolean_decision(here, all=False):
            what = f"the training loss is {float(loss)}" if here else "the training loss is not finite on another process"
            raise _diverged(trainer, f"{what} (batch {batch_idx} of the epoch)")

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        bad = non_finite(checkpoint.get("state_dict", {}))
        if bad:
            raise _diverged(trainer, f"the weights hold NaN or inf ({', '.join(bad[:3])})")


class CheckpointOnSigterm(Callback):
    """On SIGTERM during `fit`, save `<run>/checkpoints/<filename>.ckpt` (the file `--ckpt_path last`
    resumes from) and note on the exception where it went. Saved at a batch boundary, so the state is
    consistent; the resumed epoch draws its remaining batches afresh (Lightning warns that a mid-epoch
    resume of a non-resumable data loader is not exact); an end-of-epoch resume is."""

    def __init__(self, filename: str = "last") -> None:
        self.filename = filename

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        where = f"at epoch {trainer.current_epoch}, step {trainer.global_step}"
        if trainer.state.fn != TrainerFn.FITTING:
            exception.add_note(f"stopped by SIGTERM {where} of `{trainer.state.fn}`; nothing was saved")
            return
        path = self.folder(trainer) / f"{self.filename}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # the full training state, to resume
        exception.add_note(f"stopped by SIGTERM {where}; saved {path}: resume with --ckpt_path last")

    @staticmethod
    def folder(trainer: Trainer) -> Path:
        """The checkpoint folder of the run (ModelCheckpoint's), else `<log dir>/checkpoints`."""
        callback = trainer.checkpoint_callback
        if callback is not None and getattr(callback, "dirpath", None):
            return Path(callback.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


def stopped_message(error: SIGTERMException) -> str:
    """What `CheckpointOnSigterm` noted on the exception (or that the run was stopped)."""
    return "; ".join(getattr(error, "__notes__", [])) or "stopped by SIGTERM before training began; nothing was saved"


# ---- YAML ----------------------------------------------------------------------------------
YAML_MODE = "sigma_yaml"
"""The jsonargparse parser mode of the CLI: YAML with bounds (`bounded_yaml_load`)."""
MAX_YAML_CHARS = 1_000_000
MAX_YAML_NODES = 100_000
"""Values in a document with every alias expanded; the bundled configs have about a hundred."""
MAX_YAML_DEPTH = 100


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key
            yield value
    elif isinstance(node, yaml.SequenceNode):
        yield from node.value


def expanded_size(root: yaml.Node, where: str) -> int:
    """Number of nodes of the document with every alias expanded, computed once per distinct node
    (linear in the text, however large the expansion). ConfigError past the bounds or on a
    recursive alias."""
    size: dict[int, int] = {}
    open_nodes: set[int] = set()  # ancestors of the node being visited
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 0, False)]
    while stack:
        node, depth, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            size[key] = 1 + sum(size[id(child)] for child in _children(node))
            if size[key] > MAX_YAML_NODES:
                raise ConfigError(
                    f"{where}: the YAML expands to more than {MAX_YAML_NODES} values (aliases repeat what they "
                    f"name at every use; line {node.start_mark.line + 1} alone is past it). Refused: write the "
                    "settings out, or use fewer nested aliases."
                )
        elif key not in size:
            if key in open_nodes:
                raise ConfigError(f"{where}, line {node.start_mark.line + 1}: a YAML alias refers to itself.")
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(f"{where}, line {node.start_mark.line + 1}: YAML nested deeper than {MAX_YAML_DEPTH}.")
            open_nodes.add(key)
            stack.append((node, depth, True))
            stack.extend((child, depth + 1, False) for child in _children(node))
    return size[id(root)]


def _syntax_error(error: yaml.YAMLError, where: str) -> ConfigError:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    line = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = " ".join(filter(None, [getattr(error, "context", None), getattr(error, "problem", None)])) or str(error)
    return ConfigError(f"{where}{line}: YAML syntax error: {problem}. Fix the file there.")


def bounded_yaml_load(stream: str, path: Any = "") -> Any:
    """jsonargparse's YAML loader behind bounds on size, expansion and nesting. A config file's
    syntax error becomes a ConfigError naming the file and line; a command-line value's keeps
    jsonargparse's handling (a value that is not YAML is taken as a string)."""
    # jsonargparse passes a config file's base name, from inside the file's folder: name it in full
    where = os.path.abspath(path) if path and os.path.isfile(path) else str(path) or f"the value {stream[:60]!r}"
    if len(stream) > MAX_YAML_CHARS:
        raise ConfigError(f"{where}: {len(stream)} characters of YAML; a config is limited to {MAX_YAML_CHARS}.")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(stream)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as error:
        if path:
            raise _syntax_error(error, where) from None
        raise
    finally:
        loader.dispose()
    if root is not None:
        expanded_size(root, where)
    return get_loader("yaml")(stream)


def register_yaml_mode() -> str:
    """Register `bounded_yaml_load` as jsonargparse's loader of YAML_MODE (its own name: parsers
    outside this package keep plain YAML) and return the mode's name."""
    set_loader(YAML_MODE, bounded_yaml_load, exceptions=(yaml.YAMLError,))
    return YAML_MODE
