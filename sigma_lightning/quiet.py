"""What the `sigma` command leaves out of its output unless run with `--verbose`.

Hidden: dependencies' deprecation warnings (torch's `_pytree` LeafSpec, tensorboard's), Lightning's
advertising tips ("try installing litlogger"), its FLOPs column and "Total FLOPs: 0" (our batches
are dicts, so Lightning cannot count FLOPs), "dirpath has changed" and "Checkpoint directory ...
exists and is not empty" (a resumed or evaluated run in its own folder, as intended), and "Couldn't
infer the batch indices" (RecommendationWriter needs none), and LightningCLI's warning that args
were given beside a command line (run_sigma's purpose; notebooks have a sys.argv of their own).
Every other warning and message stays.

`quiet_output()` is scoped: the warning filters and logging filters it adds are removed when the
run ends, so a script calling `run_sigma` keeps its own settings (tests/test_cli.py).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import get_formatted_model_size, get_human_readable_count

HIDDEN_WARNINGS = (
    r"The dirpath has changed from",
    r"Checkpoint directory .* exists and is not empty",
    r"Couldn't infer the batch indices fetched from your dataloader",
    r"LightningCLI's args parameter is intended to run from within Python",  # run_sigma passes args by design
)
HIDDEN_LOG_LINES = re.compile(r"💡 Tip:|litlogger|litmodels")
# The loggers Lightning's rank_zero_info writes through (lightning_utilities picks one of the two).
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
VERBOSE_FLAG = "--verbose"


def split_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """Removes the bare `--verbose` flag from a command line: (the rest, whether it was there).
    `--verbose true|false` is left alone: it is Lightning's own `sigma test/validate` setting
    (print the results table)."""
    keep = []
    for i, arg in enumerate(argv):
        has_value = i + 1 < len(argv) and argv[i + 1].lower() in ("true", "false")
        if arg != VERBOSE_FLAG or has_value:
            keep.append(arg)
    return keep, len(keep) != len(argv)


class _HideLogLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not HIDDEN_LOG_LINES.search(record.getMessage())


@contextmanager
def quiet_output(verbose: bool = False) -> Iterator[None]:
    """Hides the noise listed in this module's docstring for the duration of the block (nothing
    with verbose=True); the caller's warning filters and loggers are as before afterwards."""
    if verbose:
        yield
        return
    hide = _HideLogLines()
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    with warnings.catch_warnings():
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            # Dependencies' deprecations only: the package's own would still be shown.
            warnings.filterwarnings("ignore", category=category, module=r"(?!sigma_lightning)")
        for message in HIDDEN_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        for logger in loggers:
            logger.addFilter(hide)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(hide)


class ModelSummaryWithoutFlops(RichModelSummary):
    """Lightning's model table without its FLOPs column and total when they are 0, which they are
    for any model without an `example_input_array` (this package's batches are dicts of histories)."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
        model_size: float, total_training_modes: dict[str, int], total_flops: int, **summarize_kwargs: Any,
    ) -> None:  # fmt: skip
        if total_flops:
            RichModelSummary.summarize(summary_data, total_parameters, trainable_parameters, model_size,
                                       total_training_modes, total_flops, **summarize_kwargs)  # fmt: skip
            return
        from rich import get_console
        from rich.table import Table

        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        for name, _ in columns:
            style = "dim" if name == " " else None  # " ": the row index
            table.add_column(name, justify="right" if name == "Params" else "left", style=style)
        for row in zip(*(values for _, values in columns)):
            table.add_row(*row)
        lines = [
            f"Trainable params: {get_human_readable_count(int(trainable_parameters))}",
            f"Non-trainable params: {get_human_readable_count(int(total_parameters - trainable_parameters))}",
            f"Total params: {get_human_readable_count(int(total_parameters))}",
            f"Total estimated model params size (MB): {get_formatted_model_size(model_size)}",
            f"Modules in train mode: {total_training_modes['train']}, in eval mode: {total_training_modes['eval']}",
        ]
        get_console().print(table, "\n".join(lines))


def drop_flops_column(trainer: Trainer) -> None:
    """Replaces the model summary Lightning added (only where enable_model_summary is on) by
    ModelSummaryWithoutFlops at the same depth."""
    for i, callback in enumerate(trainer.callbacks):
        if type(callback) in (ModelSummary, RichModelSummary):
            depth = getattr(callback, "_max_depth", 1)  # Lightning keeps it private; 1 is its default
            trainer.callbacks[i] = ModelSummaryWithoutFlops(max_depth=depth)
