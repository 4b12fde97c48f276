"""The `sigma` command: LightningCLI over SeqRecModule and SeqRecDataModule.

    sigma fit --config beauty.yaml                 # a bare name resolves to the bundled config
    sigma fit --config beauty.yaml --ckpt_path last  # resume the latest run of that config
    sigma test --config beauty.yaml --ckpt_path runs/beauty-sasrec/version_0/checkpoints/last.ckpt
    sigma fit --config beauty.yaml --print_config  # every setting
    sigma reproduce beauty/sigma --seed 43 --budget 3600 -- --data.path ...  # sigma_lightning/reproduce.py

Python scripts and notebooks call `run_sigma([...])`, which runs the same and returns the CLI object.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sigma_lightning.callbacks import (
    EpochSummary,
    FlushSubnormals,
    LogDataStatistics,
    RNGStateCheckpoint,
    ScanBackendReport,
    TrainingClock,
    WallClockBudget,
)
from sigma_lightning.checkpoint_config import EVALUATION_SETTINGS, check_checkpoint_model
from sigma_lightning.checkpoints import AtomicCheckpointIO, check_fits, read_checkpoint, usable_checkpoint
from sigma_lightning.cli_checks import check_run_settings, require_checkpoint_hook
from sigma_lightning.cpu_memory import MallocSetting, keep_freed_memory
from sigma_lightning.data.datamodule import SeqRecDataModule
from sigma_lightning.errors import CheckpointError, ConfigError, SigmaError
from sigma_lightning.guards import CheckpointOnSigterm, StopOnNonFinite, register_yaml_mode, stopped_message
from sigma_lightning.module import SeqRecModule
from sigma_lightning.quiet import drop_flops_column, quiet_output, split_verbose
from sigma_lightning.recommend import RecommendationWriter
from sigma_lightning.run_folders import log_evaluation_in_run, place_under_root_dir
from sigma_lightning.run_summary import FitSummary

BUNDLED_CONFIGS = Path(__file__).parent / "configs"
MONITOR = "val/NDCG@10"


class SigmaCLI(LightningCLI):
    """LightningCLI with the package's defaults: best/last checkpoints and early stopping on
    val/NDCG@10, the item count linked from data to model, safe checkpoint loading, a resume
    (`--ckpt_path last`) that continues the same run folder or fails loudly, and a warning when
    the config's model settings differ from a checkpoint's (sigma_lightning/checkpoint_config.py).

    `malloc` is the default of the `--malloc` setting: "keep" for the `sigma` command, "default"
    (leave malloc alone) for `run_sigma`, which a script may call in a process it shares."""

    def __init__(self, *args: Any, malloc: MallocSetting = "default", quiet: bool = False, **kwargs: Any) -> None:
        require_checkpoint_hook()
        self.malloc_default = malloc
        self.quiet = quiet  # the model summary without its empty FLOPs column (quiet.py)
        self.ckpt_contents: dict | None = None  # --ckpt_path's contents, read once by parse_arguments
        self.named_subcommand = named_subcommand(sys.argv[1:] if kwargs.get("args") is None else kwargs["args"])
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:
        # Only the parser of the subcommand on the command line is built: each costs about 0.1 s of
        # signature inspection (trainer, model, data, callbacks), paid by every `sigma` run and every
        # run_sigma call. Without one named first (`sigma --help`, a typo), all four, as Lightning does.
        every = LightningCLI.subcommands()
        if self.named_subcommand in every:
            return {self.named_subcommand: every[self.named_subcommand]}
        return every

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
        parser.add_lightning_class_args(RecommendationWriter, "predictions")  # sigma predict: --predictions.path/.k
        parser.add_argument(
            "--model_from_config",
            type=bool,
            default=False,
            help="With --ckpt_path: build the model from the config's settings, not the checkpoint's.",
        )
        parser.add_argument(
            "--malloc",
            type=MallocSetting,
            default=self.malloc_default,
            help="keep: glibc's malloc keeps freed memory for the next step, so CPU training stops paying "
            "page faults for every step's large tensors (process-wide, results unchanged; "
            "sigma_lightning/cpu_memory.py). default: leave malloc as it is.",
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
        if subcommand == "predict" and sub.get("return_predictions") is None:
            sub["return_predictions"] = False  # RecommendationWriter writes them; memory stays bounded
        place_under_root_dir(sub.get("trainer"))  # before --ckpt_path last searches the run folders
        if sub.get("ckpt_path") is not None:
            sub["ckpt_path"] = resolve_checkpoint(str(sub["ckpt_path"]), sub.get("trainer"), subcommand)
            # Read (and checksummed) once here for every check of ours; before_fit lets it go.
            self.ckpt_contents = read_checkpoint(Path(sub["ckpt_path"]))
            check_checkpoint_model(sub["ckpt_path"], self.ckpt_contents, sub["model"].as_dict(),
                                   sub.get("model_from_config", False))  # fmt: skip
        log_evaluation_in_run(subcommand, sub)  # test/validate/predict: into the checkpoint's run folder
        check_run_settings(sub)

    def before_instantiate_classes(self) -> None:
        if self.config[self.subcommand].get("malloc") == "keep":
            keep_freed_memory()  # before the data and the model take their memory

    def instantiate_classes(self) -> None:
        # The CLI's `optimizer:` section replaces SeqRecModule's default Adam by design; Lightning warns
        # about it here. Scoped, so the caller's warning filters are left as they were.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*configure_optimizers` will be overridden by")
            super().instantiate_classes()
        if self.quiet:
            drop_flops_column(self.trainer)

    def before_fit(self) -> None:
        """A --ckpt_path checkpoint must load into the model as built (item catalogue, backbone,
        finite weights): one CheckpointError if not, before Lightning's traceback would be."""
        path = self.config_init[self.subcommand].get("ckpt_path")
        if path is not None:
            checkpoint, self.ckpt_contents = self.ckpt_contents, None  # Lightning reads its own copy to restore
            check_fits(Path(path), checkpoint, self.model)

    before_validate = before_test = before_predict = before_fit

    def _parse_ckpt_path(self) -> None:
        # LightningCLI's hook that replaces the model settings with the checkpoint's: kept, except with
        # --model_from_config, and evaluation settings (`--model.mask_history true` on a test) stay.
        # Private in Lightning (since 2.5.5): __init__ checks that it exists (cli_checks.py).
        subcommand = self.config.get("subcommand")
        if not subcommand or self.config[subcommand].get("model_from_config"):
            return
        model = self.config[subcommand]["model"]
        evaluation = {key: model.get(key) for key in EVALUATION_SETTINGS}
        super()._parse_ckpt_path()
        for key, value in evaluation.items():
            self.config[subcommand]["model"][key] = value


def named_subcommand(args: Any) -> str | None:
    """The subcommand a command line starts with (`fit` of `fit --config ...`), else None (a
    config dict or Namespace, `--help` or another option first)."""
    return args[0] if isinstance(args, list | tuple) and args and isinstance(args[0], str) else None


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
            raise ConfigError(
                f"--ckpt_path {ckpt_path} needs a TensorBoardLogger run folder (trainer.logger) to search; "
                "pass the checkpoint file instead."
            )
        run_root = Path(init_args.get("save_dir") or ".") / str(init_args.get("name") or "")
        found = newest_checkpoint(run_root, ckpt_path)
        if found is None:
            raise CheckpointError(
                f"--ckpt_path {ckpt_path}: no checkpoint matching {run_root}/*/checkpoints/{ckpt_path}*.ckpt. "
                f"Run `sigma fit` without --ckpt_path to start, or pass a checkpoint file."
            )
        ckpt_path = str(usable_checkpoint(found, fall_back=ckpt_path == "last"))  # a damaged last: the newest intact
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


DATA_SOURCES = {"--data.path": "--data.dataset=null", "--data.dataset": "--data.path=synthetic"}
"""Each way to name the data, and the argument that clears the other one."""


def data_source_override(argv: list[str]) -> list[str]:
    """`--data.path FILE` on the command line replaces a config file's `data.dataset`, and
    `--data.dataset NAME` a config file's `data.path`, as any command-line value replaces the
    config's: the argument clearing the other source goes just before it. Both on the command line
    are left as they are (the DataModule refuses the pair)."""
    given = [key for key in DATA_SOURCES if any(arg == key or arg.startswith(f"{key}=") for arg in argv)]
    if len(given) != 1:
        return list(argv)
    key = given[0]
    first = next(i for i, arg in enumerate(argv) if arg == key or arg.startswith(f"{key}="))
    return [*argv[:first], DATA_SOURCES[key], *argv[first:]]


def bundled_config(name: str) -> str:
    if Path(name).exists():
        return name
    for candidate in (BUNDLED_CONFIGS / name, BUNDLED_CONFIGS / f"{name}.yaml"):
        if candidate.is_file():
            return str(candidate)
    return name  # let jsonargparse report the missing file


def main(args: list[str] | None = None) -> None:
    """Entry point of the `sigma` command: `sigma reproduce ...` (sigma_lightning/reproduce.py), or
    LightningCLI's subcommands with `--malloc keep` by default. Returns None: the console script exits
    with `sys.exit(main())`, which would turn any returned object into exit status 1."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["reproduce"]:
        from sigma_lightning.reproduce import main as reproduce  # imported here: it imports this module

        reproduce(argv[1:])
        return
    run_sigma(args, malloc="keep")


class SigmaExit(SystemExit):
    """Exit status 2, as for a usage error; str() is the one-line message printed on stderr."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def run_sigma(args: list[str] | None = None, malloc: MallocSetting = "default") -> SigmaCLI:
    """Runs the CLI like `sigma ...` (args: the command line after `sigma`; None: sys.argv's) and
    returns it (its trainer, model, datamodule), for scripts and notebooks. Bad data or settings
    (the package's errors, Lightning's MisconfigurationException) print one line
    `sigma: error: <message>` on stderr and raise SigmaExit (exit status 2), not a traceback.
    `malloc`: the default of the `--malloc` setting; "default" changes nothing process-wide.
    Quiet unless `--verbose` is on the command line (sigma_lightning/quiet.py), only for this call."""
    if args is None:  # from the console: rewrite sys.argv in place so LightningCLI reads it as usual
        sys.argv[1:], verbose = split_verbose(data_source_override(resolve_config_names(sys.argv[1:])))
        argv = None
    else:
        argv, verbose = split_verbose(data_source_override(resolve_config_names(args)))
    try:
        with quiet_output(verbose):
            return _build_cli(argv, malloc, quiet=not verbose)
    except (SigmaError, MisconfigurationException) as error:
        message = f"sigma: error: {error}"
        print(message, file=sys.stderr)
        raise SigmaExit(message) from None
    except SIGTERMException as error:  # Lightning's SIGTERM exit has status 0: a scheduler would see success
        message = f"sigma: {stopped_message(error)}"
        print(message, file=sys.stderr)
        raise SigmaExit(message) from None


def default_callbacks() -> list[Callback]:
    """The callbacks every run gets, besides those the parser adds as settings (checkpoints, early
    stopping, budget); one a line, see sigma_lightning/callbacks.py."""
    return [
        LogDataStatistics(),
        RNGStateCheckpoint(),
        TrainingClock(),
        EpochSummary(),
        ScanBackendReport(),  # which selective scan runs, and why
        FlushSubnormals(),  # no slow subnormal arithmetic on CPU
        StopOnNonFinite(),  # sigma_lightning/guards.py
        CheckpointOnSigterm(),
        FitSummary(),  # the run folder, best checkpoint and the commands to use it (run_summary.py)
    ]


def _build_cli(argv: list[str] | None, malloc: MallocSetting, quiet: bool = False) -> SigmaCLI:
    return SigmaCLI(
        SeqRecModule,
        SeqRecDataModule,
        malloc=malloc,
        quiet=quiet,
        parser_kwargs={
            "description": "Train, validate, test and predict; `sigma reproduce --help` for long runs; "
            "--verbose (anywhere on the line) shows the dependencies' warnings and tips hidden by default.",
            "parser_mode": register_yaml_mode(),  # YAML with bounds: an alias bomb is refused (guards.py)
        },
        trainer_defaults={
            "use_distributed_sampler": False,  # the data module shards itself (no padded duplicates)
            "callbacks": default_callbacks(),
            # atomic, checksummed checkpoints (checkpoints.py); a class path so config.yaml records it
            "plugins": [{"class_path": f"{AtomicCheckpointIO.__module__}.{AtomicCheckpointIO.__qualname__}"}],
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
