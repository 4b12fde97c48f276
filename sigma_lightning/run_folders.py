"""Where a run's files go, one rule for fit, resume and evaluation (docs/cli.md):

    <root>/<save_dir>/<name>/version_N/   a fit: config.yaml, hparams.yaml, TensorBoard events, checkpoints/
    <run>/test/  <run>/validate/  <run>/predict/   `sigma test/validate/predict` of a checkpoint of <run>
    <root>/<save_dir>/<name>/test/ ...    the same without --ckpt_path (no run to attach to)

<root> is trainer.default_root_dir when set: a relative logger save_dir (the recipes' `runs`) is
taken relative to it, and written absolute so the run's config.yaml means the same from any folder;
an absolute save_dir is kept. Without default_root_dir, save_dir is relative to the current folder.
`--ckpt_path last|best` (cli.resolve_checkpoint) searches <root>/<save_dir>/<name>/*/checkpoints/.
An evaluation never starts a new version_N: its metrics sit in TensorBoard beside the run's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Loggers whose folder is save_dir/name/version: the rules apply to these; others are left alone.
FOLDER_LOGGERS = ("TensorBoardLogger", "CSVLogger")
EVALUATIONS = ("validate", "test", "predict")


def folder_logger_args(trainer_config: Any) -> Any:
    """The init_args of trainer.logger when it is a TensorBoardLogger or CSVLogger, else None."""
    logger = trainer_config.get("logger") if trainer_config is not None else None
    if not hasattr(logger, "get") or not str(logger.get("class_path") or "").endswith(FOLDER_LOGGERS):
        return None
    return logger.get("init_args")


def place_under_root_dir(trainer_config: Any) -> None:
    """A relative logger save_dir becomes <default_root_dir>/<save_dir> (absolute)."""
    init_args = folder_logger_args(trainer_config)
    root = trainer_config.get("default_root_dir") if trainer_config is not None else None
    if root is None or init_args is None:
        return
    save_dir = Path(init_args.get("save_dir") or ".").expanduser()
    if not save_dir.is_absolute():
        init_args["save_dir"] = str(Path(root).expanduser().absolute() / save_dir)


def run_folder(ckpt_path: str | Path) -> Path:
    """The run folder of a checkpoint: the parent of its `checkpoints/` folder, else its own folder."""
    folder = Path(ckpt_path).parent
    return folder.parent if folder.name == "checkpoints" else folder


def log_evaluation_in_run(subcommand: str, config: Any) -> None:
    """validate/test/predict log into <run>/<subcommand> (see the module docstring)."""
    init_args = folder_logger_args(config.get("trainer"))
    if subcommand not in EVALUATIONS or init_args is None:
        return
    ckpt_path = config.get("ckpt_path")
    if ckpt_path is not None:
        init_args["save_dir"], init_args["name"] = str(run_folder(ckpt_path)), ""
    init_args["version"] = subcommand
