"""The `sigma` command: LightningCLI over SeqRecModule and SeqRecDataModule.

    sigma fit --config beauty.yaml                 # a bare name resolves to the bundled config
    sigma fit --config beauty.yaml --ckpt_path last  # resume the latest run of that config
    sigma test --config beauty.yaml --ckpt_path runs/beauty-sasrec/version_0/checkpoints/last.ckpt
    sigma fit --config beauty.yaml --print_config  # every setting
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from sigma_lightning.callbacks import (
    EpochSummary,
    LogDataStatistics,
    RNGStateCheckpoint,
    TrainingClock,
    WallClockBudget,
)
from sigma_lightning.checkpoint_config import EVALUATION_SETTINGS, check_checkpoint_model
from sigma_lightning.cpu_memory import keep_freed_memory
from sigma_lightning.data.datamodule import SeqRecDataModule
from sigma_lightning.data.readers import DataError
from sigma_lightning.module import SeqRecModule

BUNDLED_CONFIGS = Path(__file__).parent / "configs"
MONITOR = "val/NDCG@10"


class SigmaCLI(LightningCLI):
    """LightningCLI with the package's defaults: best/last checkpoints and early stopping on
    val/NDCG@10, the item count linked from data to model, safe checkpoint loading, a resume
    (`--ckpt_path last`) that continues the same run folder or fails loudly, and a warning when
    the config's model settings differ from a checkpoint's (sigma_lightning/checkpoint_config.py)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_items", "model.num_items", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": MONITOR,
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,  # Lightning writes it only with a new best: see below
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-epoch{epoch:03d}-ndcg{val/NDCG@10:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        # last.ckpt after every epoch. ModelCheckpoint(save_last=True) rewrites it only when it saves a
        # top-k checkpoint, so `--ckpt_path last` would resume from the best epoch and replay the rest.
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.monitor": None,
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.filename": "last",
                "last_checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {"early_stopping.monitor": MONITOR, "early_stopping.mode": "max", "early_stopping.patience": 10}
        )
        parser.add_lightning_class_args(WallClockBudget, "budget")  # --budget.seconds: stop, resume later
        parser.add_argument(
            "--model_from_config",
            type=bool,
            default=False,
            help="With --ckpt_path: build the model from the config's settings, not the checkpoint's.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        sub = self.config[subcommand]
        # Checkpoints hold only tensors and plain values: never unpickle code when opening one.
        if "weights_only" in sub:
            sub["weights_only"] = True
        if sub.get("ckpt_path") is not None:
            sub["ckpt_path"] = resolve_checkpoint(str(sub["ckpt_path"]), sub.get("trainer"), subcommand)
            check_checkpoint_model(sub["ckpt_path"], sub["model"].as_dict(), sub.get("model_from_config", False))

    def _parse_ckpt_path(self) -> None:
        # LightningCLI's hook that replaces the model settings with the checkpoint's: kept, except with
        # --model_from_config, and evaluation settings (`--model.mask_history true` on a test) stay.
        subcommand = self.config.get("subcommand")
        if not subcommand or self.config[subcommand].get("model_from_config"):
            return
        model = self.config[subcommand]["model"]
        evaluation = {key: model.get(key) for key in EVALUATION_SETTINGS}
        super()._parse_ckpt_path()
        for key, value in evaluation.items():
            self.config[subcommand]["model"][key] = value


def resolve_checkpoint(ckpt_path: str, trainer_config: Any, subcommand: str) -> str:
    """Turn `last`/`best` into a file under the configured TensorBoard run folder, and point the
    logger at the run the checkpoint came from so a resumed run continues in place.

    Lightning's own `ckpt_path="last"` only looks in the *new* run's folder, so it silently starts
    from scratch; here a missing checkpoint is an error naming where we looked.
    """
    logger = trainer_config.get("logger") if trainer_config is not None else None
    init_args = logger.get("init_args") if hasattr(logger, "get") else None
    if ckpt_path in ("last", "best"):
        if init_args is None:
            raise SystemExit(
                f"--ckpt_path {ckpt_path} needs a TensorBoardLogger run folder (trainer.logger) to search; "
                "pass the checkpoint file instead."
            )
        run_root = Path(init_args.get("save_dir") or ".") / str(init_args.get("name") or "")
        found = newest_checkpoint(run_root, ckpt_path)
        if found is None:
            raise SystemExit(
                f"--ckpt_path {ckpt_path}: no checkpoint matching {run_root}/*/checkpoints/{ckpt_path}*.ckpt. "
                f"Run `sigma fit` without --ckpt_path to start, or pass a checkpoint file."
            )
        ckpt_path = str(found)
    elif not Path(ckpt_path).is_file():
        raise SystemExit(f"--ckpt_path {ckpt_path}: no such file.")
    match = re.search(r"[/\\]([^/\\]+)[/\\]checkpoints[/\\][^/\\]+\.ckpt$", ckpt_path)
    if subcommand == "fit" and init_args is not None and match:
        init_args["version"] = match.group(1)  # continue logging into the checkpoint's run folder
    return ckpt_path


def newest_checkpoint(run_root: Path, which: str) -> Path | None:
    """The newest `last*.ckpt` or `best*.ckpt` (which: "last" or "best") in any version of a run
    folder (`<run_root>/*/checkpoints/`), or None."""
    found = sorted(run_root.glob(f"*/checkpoints/{which}*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve_config_names(argv: list[str]) -> list[str]:
    """`--config beauty.yaml` (or `--config beauty`) that is not a file -> the bundled config."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = bundled_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + bundled_config(arg.split("=", 1)[1])
    return out


def bundled_config(name: str) -> str:
    if Path(name).exists():
        return name
    for candidate in (BUNDLED_CONFIGS / name, BUNDLED_CONFIGS / f"{name}.yaml"):
        if candidate.is_file():
            return str(candidate)
    return name  # let jsonargparse report the missing file


def main(args: list[str] | None = None) -> None:
    """Entry point of the `sigma` command. Returns None: the console script exits with
    `sys.exit(main())`, which would turn any returned object into exit status 1."""
    keep_freed_memory()  # a CPU step reuses the last step's memory (see cpu_memory.py)
    run_sigma(args)


def run_sigma(args: list[str] | None = None) -> SigmaCLI:
    """Runs the CLI like `sigma ...` and returns it (its trainer, model, datamodule), for scripts and
    notebooks. Bad data or settings end with one message (SystemExit), not a traceback."""
    try:
        return _build_cli(args)
    except (DataError, ValueError, TypeError) as error:
        if isinstance(error, DataError) or _raised_by_a_constructor(error):
            raise SystemExit(f"sigma: error: {error}") from None
        raise


def _raised_by_a_constructor(error: Exception) -> bool:
    """True for errors raised by an `__init__` of this package (a setting it rejected)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame if tb is not None else None
    return bool(frame and frame.f_code.co_name == "__init__" and "sigma_lightning" in frame.f_code.co_filename)


def _build_cli(args: list[str] | None = None) -> SigmaCLI:
    if args is None:  # from the console: rewrite sys.argv in place so LightningCLI reads it as usual
        sys.argv[1:] = resolve_config_names(sys.argv[1:])
        argv = None
    else:
        argv = resolve_config_names(args)
    # The CLI's `optimizer:` section replaces SeqRecModule's default Adam by design.
    warnings.filterwarnings("ignore", message=".*configure_optimizers` will be overridden by")
    return SigmaCLI(
        SeqRecModule,
        SeqRecDataModule,
        trainer_defaults={
            "use_distributed_sampler": False,  # the data module shards itself (no padded duplicates)
            "callbacks": [LogDataStatistics(), RNGStateCheckpoint(), TrainingClock(), EpochSummary()],
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "default"},
            },
        },
        save_config_kwargs={"overwrite": True},
        args=argv,
    )


if __name__ == "__main__":
    main()
