"""The command line as people expect it: --trainer.default_root_dir holds the runs, evaluations do
not start run folders, fit ends with a summary whose commands work as printed, and the output is
quiet unless --verbose."""

import json
import logging
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from jsonargparse import Namespace
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sigma_lightning.cli import run_sigma
from sigma_lightning.quiet import LIGHTNING_LOGGERS, quiet_output, split_verbose
from sigma_lightning.run_folders import place_under_root_dir, run_folder
from sigma_lightning.run_summary import fit_summary
from tests.test_cli import TINY

# What a quiet `sigma` run must not print, each with a run below that would print it (checked by
# the --verbose run, so none of these absences is vacuous).
NOISE = (
    "litlogger",  # Lightning's advertising tip
    "Total FLOPs",  # the model summary of a model without example input
    "isinstance(treespec, LeafSpec)` is deprecated",  # torch's _pytree deprecation through Lightning
    "dirpath has changed",  # sigma test of a checkpoint
    "exists and is not empty",  # a resumed fit
    "Couldn't infer the batch indices",  # sigma predict
    "args parameter is intended",  # args given beside a command line
)


def tiny(subcommand: str, *extra: str, cache: Path) -> list[str]:
    """`sigma <subcommand>` on tiny quickstart data; the logger's save_dir stays the recipe's `runs`."""
    return [subcommand, "--config", "quickstart.yaml", *TINY, "--data.cache_dir", str(cache), *extra]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's relative `runs` lands here, never in the repository
    return tmp_path


def test_default_root_dir_holds_runs_checkpoints_and_logs(in_tmp):
    root = in_tmp / "elsewhere"
    run_sigma(tiny("fit", "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(root), cache=in_tmp / "c"))
    run = root / "runs" / "quickstart" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list(run.glob("events.out.tfevents.*")) and (run / "config.yaml").is_file()
    assert not (in_tmp / "runs").exists()
    # --ckpt_path last searches the same folder and continues the same run in place
    cli = run_sigma(tiny("fit", "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(root),
                         "--ckpt_path", "last", cache=in_tmp / "c"))  # fmt: skip
    assert cli.trainer.current_epoch == 2
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]


def test_the_save_dir_rule():
    def rule(save_dir, root):
        init_args = Namespace(save_dir=save_dir)
        logger = Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger", init_args=init_args)
        config = Namespace(default_root_dir=root, logger=logger)
        place_under_root_dir(config)
        return config.logger.init_args.save_dir

    assert rule("runs", "/scratch/me") == "/scratch/me/runs"
    assert rule("/data/runs", "/scratch/me") == "/data/runs"  # an absolute save_dir is kept
    assert rule("runs", None) == "runs"  # no root: relative to the current folder, as before
    assert Path(rule("runs", "out")).is_absolute()  # so a saved config.yaml means the same anywhere
    assert run_folder("r/q/version_3/checkpoints/best.ckpt") == Path("r/q/version_3")
    assert run_folder("/models/best.ckpt") == Path("/models")


def test_evaluations_log_into_the_checkpoints_run_folder(in_tmp):
    cache = in_tmp / "c"
    run_sigma(tiny("fit", "--trainer.max_epochs", "1", cache=cache))
    run = in_tmp / "runs" / "quickstart" / "version_0"
    for subcommand in ("test", "validate", "predict", "test"):
        run_sigma(tiny(subcommand, "--ckpt_path", "last", cache=cache))
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # no new version_N
    assert {"test", "validate", "predict"} <= {p.name for p in run.iterdir()}
    tags = EventAccumulator(str(run / "test")).Reload().Tags()["scalars"]
    assert "test/HR@10" in tags  # beside the training run in `tensorboard --logdir runs/quickstart`
    run_sigma(tiny("validate", cache=cache))  # no checkpoint: a fixed folder, still no version_N
    assert sorted(p.name for p in run.parent.iterdir()) == ["validate", "version_0"]


def test_the_summary_commands_work_as_printed(in_tmp):
    cache = in_tmp / "c"
    cli = run_sigma(tiny("fit", "--trainer.max_epochs", "2", cache=cache))
    run = Path("runs/quickstart/version_0")
    summary = fit_summary(cli.trainer, Path(cli.trainer.log_dir))
    best = next(run.glob("checkpoints/best-*.ckpt"))
    assert "fit finished after 2 epochs" in summary
    assert f"run folder       {run}" in summary
    score = float(cli.trainer.checkpoint_callback.best_model_score)
    assert f"best checkpoint  {best} (val/NDCG@10 = {score:.4f})" in summary
    labels = ("test it", "recommend", "TensorBoard")
    test_cmd, predict_cmd, board_cmd = (printed_command(summary, label) for label in labels)
    assert test_cmd[:2] == ["sigma", "test"] and predict_cmd[:2] == ["sigma", "predict"]
    tested = run_sigma(test_cmd[1:])
    assert 0 <= float(tested.trainer.callback_metrics["test/HR@10"]) <= 1
    run_sigma(predict_cmd[1:])
    assert (run / "predictions.parquet").is_file()
    assert board_cmd == ["tensorboard", "--logdir", "runs/quickstart"]


def printed_command(summary: str, label: str) -> list[str]:
    """The words of the command on the summary line that starts with `label`."""
    line = next(line.strip() for line in summary.splitlines() if line.strip().startswith(label))
    return shlex.split(line[len(label):])


def test_a_budget_stop_says_how_to_continue(in_tmp):
    cli = run_sigma(tiny("fit", "--trainer.max_epochs", "3", "--budget.seconds", "0.001", cache=in_tmp / "c"))
    first = fit_summary(cli.trainer, None).splitlines()[0]
    assert first == "sigma: stopped by --budget.seconds after epoch 0; continue with --ckpt_path last"


def test_split_verbose():
    assert split_verbose(["fit", "--verbose", "--config", "q.yaml"]) == (["fit", "--config", "q.yaml"], True)
    assert split_verbose(["fit", "--config", "q.yaml", "--verbose"]) == (["fit", "--config", "q.yaml"], True)
    # Lightning's own `sigma test --verbose false` (the results table) is left to the parser
    assert split_verbose(["test", "--verbose", "false"]) == (["test", "--verbose", "false"], False)
    assert split_verbose(["fit"]) == (["fit"], False)


def test_quiet_output_hides_only_dependencies_noise_and_restores_everything():
    log_filters = [logging.getLogger(n).filters[:] for n in LIGHTNING_LOGGERS]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        with quiet_output():
            warnings.warn_explicit("old api", FutureWarning, "torch/_pytree.py", 1, module="torch.utils._pytree")
            warnings.warn_explicit("old api", DeprecationWarning, "x.py", 1, module="tensorboard.compat")
            warnings.warn_explicit("ours", DeprecationWarning, "m.py", 1, module="sigma_lightning.module")
            warnings.warn("a real problem", UserWarning)
        assert warnings.filters == filters
    assert sorted(str(w.message) for w in caught) == ["a real problem", "ours"]
    assert [logging.getLogger(n).filters for n in LIGHTNING_LOGGERS] == log_filters


SCRIPT = """
import json, sys
from sigma_lightning.cli import main
for argv in json.loads(open(sys.argv[1]).read()):
    main(argv)
"""


def sigma_session(tmp_path: Path, *flags: str) -> str:
    """fit, resume, test and predict through the `sigma` entry point in one process; the output."""
    tmp_path.mkdir()
    cache = tmp_path / "c"
    summary = ["--trainer.enable_model_summary", "true"]
    runs = [
        tiny("fit", "--trainer.max_epochs", "1", *summary, *flags, cache=cache),
        tiny("fit", "--trainer.max_epochs", "2", "--ckpt_path", "last", *flags, cache=cache),
        tiny("test", "--ckpt_path", "last", *flags, cache=cache),
        tiny("predict", "--ckpt_path", "last", *flags, cache=cache),
    ]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "runs.json")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_quiet_by_default_and_verbose_shows_everything(tmp_path):
    quiet = sigma_session(tmp_path / "quiet")
    assert [noise for noise in NOISE if noise in quiet] == []
    assert "best checkpoint" in quiet and "sigma: wrote" in quiet  # the package's own lines stay
    verbose = sigma_session(tmp_path / "verbose", "--verbose")
    assert [noise for noise in NOISE if noise not in verbose] == []
