"""Checks the `sigma` command makes before it builds anything.

* The trainer's and the optimizer's settings are in range. Lightning and torch check them late (the
  optimizer only when training starts) and answer with a traceback, for some with a
  ZeroDivisionError; here a bad value is one ConfigError naming the setting as it is written in
  YAML (`trainer.max_epochs`, `optimizer.init_args.lr`) and its valid range.
* `trainer.precision` 16-mixed on a CPU run is one ConfigError (fp16 autocast needs a GPU; Lightning
  would switch to bf16 with a warning only).
* The installed Lightning has the LightningCLI hook that SigmaCLI overrides (`_parse_ckpt_path`,
  private, in Lightning since 2.5.5). Where it is missing the override would silently never run, so
  the command stops and names the Lightning release it needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning
import torch
from lightning.pytorch.cli import LightningCLI

from sigma_lightning.errors import ConfigError, SigmaError, check_range

LIGHTNING_NEEDED = "lightning>=2.5.5,<3"  # keep equal to pyproject.toml's dependency
CHECKPOINT_HOOK = "_parse_ckpt_path"

# The lowest valid value of each trainer setting; -1 means "no limit" for max_epochs and max_steps,
# "the whole validation set" for num_sanity_val_steps; 0 for log_every_n_steps means "never".
TRAINER_LOWEST = {
    "max_epochs": -1,
    "min_epochs": 0,
    "max_steps": -1,
    "min_steps": 0,
    "check_val_every_n_epoch": 1,
    "accumulate_grad_batches": 1,
    "log_every_n_steps": 0,
    "num_sanity_val_steps": -1,
    "gradient_clip_val": 0,
    "limit_train_batches": 0,
    "limit_val_batches": 0,
    "limit_test_batches": 0,
    "limit_predict_batches": 0,
}
# Optimizer arguments torch checks only when it builds the optimizer: (lowest, lowest is valid).
OPTIMIZER_LOWEST = {"lr": (0, False), "weight_decay": (0, True), "eps": (0, True), "momentum": (0, True)}


def check_run_settings(config: Mapping[str, Any]) -> None:
    """Raise ConfigError for the first trainer or optimizer setting out of range.
    `config` is one subcommand's parsed settings (LightningCLI's `config[subcommand]`)."""
    trainer = config.get("trainer")
    for key, lowest in TRAINER_LOWEST.items():
        value = trainer.get(key) if trainer is not None else None
        if _is_number(value):
            check_range(f"trainer.{key}", value, lowest)
    check_precision(trainer)
    check_optimizer("optimizer", config.get("optimizer"))


FP16_MIXED = ("16-mixed", "16")  # Lightning's names for fp16 autocast (16 as a number too)


def check_precision(trainer: Mapping[str, Any] | None) -> None:
    """Raise ConfigError for fp16 mixed precision on a CPU run: CPU autocast has no fp16, and
    Lightning would silently train in bf16 instead. A run is on the CPU when `trainer.accelerator`
    is "cpu", or "auto"/unset where no CUDA or MPS device is available."""
    if trainer is None or str(trainer.get("precision")) not in FP16_MIXED:
        return
    accelerator = str(trainer.get("accelerator") or "auto")
    on_cpu = accelerator == "cpu" or (
        accelerator == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available()
    )
    if on_cpu:
        raise ConfigError(
            f"trainer.precision={trainer.get('precision')} (fp16 mixed precision) needs a GPU, and this run "
            f"is on the CPU (trainer.accelerator={accelerator}): use --trainer.precision bf16-mixed (or 32-true)."
        )


def check_optimizer(section: str, optimizer: Any) -> None:
    """Range checks of an optimizer section (`class_path` and `init_args`), whatever its class."""
    init_args = optimizer.get("init_args") if hasattr(optimizer, "get") else None
    if not hasattr(init_args, "get"):
        return
    for key, (lowest, inclusive) in OPTIMIZER_LOWEST.items():
        value = init_args.get(key)
        if _is_number(value):
            check_range(f"{section}.init_args.{key}", value, lowest, low_inclusive=inclusive)
    for i, beta in enumerate(init_args.get("betas") or ()):
        if _is_number(beta):
            check_range(f"{section}.init_args.betas[{i}]", beta, 0, 1)


def require_checkpoint_hook(cli_class: type = LightningCLI) -> None:
    """Raise SigmaError unless `cli_class` has the hook SigmaCLI overrides."""
    if not callable(getattr(cli_class, CHECKPOINT_HOOK, None)):
        raise SigmaError(
            f"the sigma command needs {LIGHTNING_NEEDED}; lightning {lightning.__version__} is installed, whose "
            f"LightningCLI has no {CHECKPOINT_HOOK} hook (added in 2.5.5), so a --ckpt_path run could not keep "
            f"the evaluation settings. Install a supported release: pip install '{LIGHTNING_NEEDED}'."
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
