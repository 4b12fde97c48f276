"""End-to-end through the `sigma` CLI on tiny synthetic data: fit, test, resume, safe loading, one
clean message for every bad setting, no process-wide state left behind."""

import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import lightning
import pytest
import torch
from lightning.pytorch.cli import LightningCLI

from sigma_lightning.callbacks import TrainingClock, WallClockBudget
from sigma_lightning.checkpoints import AtomicCheckpointIO
from sigma_lightning.cli import bundled_config, main, resolve_config_names, run_sigma
from sigma_lightning.cli_checks import CHECKPOINT_HOOK, LIGHTNING_NEEDED

TINY = [
    "--data.path", "synthetic",
    "--data.synthetic.num_users", "120",
    "--data.synthetic.num_items", "40",
    "--data.synthetic.num_topics", "4",
    "--data.synthetic.max_length", "12",
    "--data.max_seq_len", "10",
    "--data.batch_size", "64",
    "--model.backbone.init_args.hidden_size", "16",
    "--model.backbone.init_args.max_seq_len", "10",
    "--trainer.accelerator", "cpu",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]


def tiny_args(tmp_path: Path, subcommand: str, *extra: str, runs: str = "runs") -> list[str]:
    """`sigma <subcommand>` on the tiny quickstart data, cache and run folders under tmp_path."""
    cache = ["--data.cache_dir", str(tmp_path / "cache")]
    logger = ["--trainer.logger.init_args.save_dir", str(tmp_path / runs)]
    return [subcommand, "--config", "quickstart.yaml", *TINY, *cache, *logger, *extra]


def run(tmp_path: Path, *args: str):
    return run_sigma(tiny_args(tmp_path, *args))


def sigma_command() -> list[str]:
    """The installed `sigma` script of this environment, else the same entry point through Python."""
    script = shutil.which("sigma", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "sigma_lightning.cli"]


@pytest.mark.slow
def test_fit_then_test_from_checkpoint(tmp_path):
    cli = run(tmp_path, "fit", "--trainer.max_epochs", "2")
    run_dir = tmp_path / "runs" / "quickstart" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert list(run_dir.glob("checkpoints/best-epoch*-ndcg*.ckpt"))
    assert list(run_dir.glob("events.out.tfevents.*"))  # TensorBoard
    assert "val/NDCG@10" in cli.trainer.callback_metrics
    ckpt = torch.load(last, weights_only=True)  # holds no pickled code
    assert ckpt["hyper_parameters"]["backbone"]["class_path"] == "sigma_lightning.models.SASRec"

    cli = run(tmp_path, "test", "--ckpt_path", str(last))
    metrics = cli.trainer.callback_metrics
    for name in ("test/HR@10", "test/NDCG@10", "test/MRR@10"):
        assert 0.0 <= float(metrics[name]) <= 1.0
    tested = cli.model.state_dict()  # the test scored the checkpoint's weights, not a fresh model
    for key, value in ckpt["state_dict"].items():
        torch.testing.assert_close(tested[key], value, msg=f"{key} is not the checkpoint's")
    # (`sigma predict` writes a file: tests/test_recommend.py)


@pytest.mark.slow
def test_resume_last_continues_the_same_run(tmp_path):
    run(tmp_path, "fit", "--trainer.max_epochs", "1")
    cli = run(tmp_path, "fit", "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert cli.trainer.current_epoch == 2  # continued from epoch 1, did not restart
    runs = sorted(p.name for p in (tmp_path / "runs" / "quickstart").iterdir())
    assert runs == ["version_0"]  # logged into the same folder
    # and the resumed run equals an uninterrupted one (same data order, same weights)
    straight = run_sigma(tiny_args(tmp_path, "fit", "--trainer.max_epochs", "2", runs="straight"))
    resumed_state = cli.model.state_dict()
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed_state[key], value, msg=f"{key} differs after resume")


def test_resume_without_a_checkpoint_fails_loudly(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint matching") as exit_info:
        run(tmp_path, "fit", "--trainer.max_epochs", "1", "--ckpt_path", "last")
    assert exit_info.value.code == 2


def test_bare_config_names_resolve_to_bundled_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolved = resolve_config_names(["fit", "--config", "beauty.yaml", "--config=backbones/gru4rec"])
    assert Path(resolved[2]).is_file() and resolved[2].endswith("configs/beauty.yaml")
    assert resolved[3].startswith("--config=") and resolved[3].endswith("backbones/gru4rec.yaml")
    (tmp_path / "beauty.yaml").write_text("seed_everything: 1\n")
    assert bundled_config("beauty.yaml") == "beauty.yaml"  # a local file wins


def test_switching_backbone_with_a_second_config(tmp_path):
    cli = run_sigma(
        ["fit", "--config", "quickstart.yaml", "--config", "backbones/gru4rec.yaml", *TINY[:-10],
         "--model.backbone.init_args.hidden_size", "16", "--trainer.max_epochs", "1",
         "--trainer.enable_progress_bar", "false", "--data.cache_dir", str(tmp_path / "cache"),
         "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    )
    assert type(cli.model.backbone).__name__ == "GRU4Rec"


def test_a_run_builds_only_its_subcommands_parser_and_the_help_lists_every_one(tmp_path, capsys):
    """Building a subcommand's parser inspects the trainer's, model's and data's signatures, on
    every run: only the one named is built. Without one named first, all four are."""
    cli = run(tmp_path, "validate")
    assert list(cli.subcommands()) == ["validate"] and "val/NDCG@10" in cli.trainer.callback_metrics
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out.split("Available subcommands:")[1].split()
    assert all(subcommand in listed for subcommand in ("fit", "validate", "test", "predict"))
    with pytest.raises(SystemExit) as exit_info:
        main(["fitt", "--config", "quickstart.yaml"])
    assert exit_info.value.code == 2 and "(choose from 'fit', 'validate', 'test', 'predict')" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["quickstart", "beauty", "sports", "games", "yelp", "ml-1m", "ml-100k"])
def test_every_bundled_config_parses(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", f"{name}.yaml", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: sigma_lightning.models" in printed and "max_seq_len" in printed


# (setting, bad value, what the one line must name). Checked where they are read: the optimizer's and
# the trainer's after parsing (cli_checks.py), the model's, the data's and the backbones' by their
# constructors, Lightning's own checks through its MisconfigurationException.
BAD_SETTINGS = [
    ("model.backbone.init_args.dropout", "1.5", "dropout"),
    ("optimizer.init_args.lr", "-1", "optimizer.init_args.lr"),
    ("optimizer.init_args.weight_decay", "-0.1", "optimizer.init_args.weight_decay"),
    ("trainer.max_epochs", "-5", "trainer.max_epochs"),
    ("trainer.check_val_every_n_epoch", "0", "trainer.check_val_every_n_epoch"),
    ("trainer.accumulate_grad_batches", "0", "trainer.accumulate_grad_batches"),
    ("trainer.limit_train_batches", "2.5", "limit_train_batches"),
    ("model.backbone.init_args.num_heads", "3", "num_heads"),
    ("model.learning_rate", "0", "model.learning_rate"),
    ("model.top_k", "[0, 10]", "model.top_k"),
    ("data.max_seq_len", "0", "max_seq_len"),
    ("data.path", "/nonexistent/interactions.csv", "/nonexistent/interactions.csv"),
    ("budget.seconds", "0", "budget.seconds"),
    ("ckpt_path", "no-such.ckpt", "no-such.ckpt"),
]


@pytest.mark.parametrize(("setting", "value", "named"), BAD_SETTINGS, ids=[s for s, _, _ in BAD_SETTINGS])
def test_a_bad_setting_ends_with_one_line_naming_it(tmp_path, capsys, setting, value, named):
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, "fit", "--trainer.max_epochs", "1", f"--{setting}", value)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sigma: error:")]
    assert errors == [str(exit_info.value)]  # one line, and the exception says the same
    assert named in errors[0]


@pytest.mark.slow
def test_the_sigma_command_reports_a_bad_setting_in_one_line_and_exit_status_2(tmp_path):
    done = subprocess.run([*sigma_command(), *tiny_args(tmp_path, "fit", "--optimizer.init_args.lr", "-1")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "sigma: error: optimizer.init_args.lr=-1.0 is out of range: expected 0 < optimizer.init_args.lr. "
        "Set `optimizer.init_args.lr` within it."
    )


def test_run_sigma_leaves_the_warning_filters_as_they_were(tmp_path, recwarn):
    """The `optimizer:` section makes Lightning warn that it replaces SeqRecModule's Adam; the CLI
    silences that one warning for its own call only."""
    before = list(warnings.filters)
    for _ in range(2):
        run(tmp_path, "fit", "--trainer.max_epochs", "0")
        assert warnings.filters == before
    assert not [w for w in recwarn if "configure_optimizers` will be overridden" in str(w.message)]


def test_a_lightning_without_the_checkpoint_hook_is_named(tmp_path, monkeypatch, capsys):
    """SigmaCLI overrides LightningCLI's private `_parse_ckpt_path`; where Lightning lacks it the
    override would silently never run. The command stops and names the release it needs, the one
    pyproject.toml requires."""
    monkeypatch.delattr(LightningCLI, CHECKPOINT_HOOK)
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, "fit", "--trainer.max_epochs", "1")
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("sigma: error: the sigma command needs lightning>=2.5.5,<3")
    assert f"lightning {lightning.__version__} is installed" in message
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert LIGHTNING_NEEDED in pyproject["project"]["dependencies"]


@pytest.mark.slow
def test_the_sigma_command_exits_with_status_0(tmp_path):
    """`sigma` is installed as `sys.exit(main())`: a successful run must exit 0 and print nothing
    of its own on stderr (a returned object would become status 1 and be printed)."""
    args = tiny_args(tmp_path, "validate")
    script = "import sys; from sigma_lightning.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SigmaCLI object" not in done.stderr
    assert "val/NDCG@10" in done.stdout


@pytest.mark.slow
def test_wall_clock_budget_stops_at_an_epoch_boundary_and_the_run_resumes(tmp_path):
    cli = run(tmp_path, "fit", "--trainer.max_epochs", "3", "--budget.seconds", "0.001")
    budget = next(c for c in cli.trainer.callbacks if isinstance(c, WallClockBudget))
    assert budget.stopped and cli.trainer.current_epoch == 1  # one epoch, then stopped
    last = tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    first_clock = next(c for c in cli.trainer.callbacks if isinstance(c, TrainingClock))
    saved_seconds = torch.load(last, weights_only=True)["callbacks"]["TrainingClock"]["seconds"]
    assert 0 < saved_seconds <= first_clock.seconds  # the run's training time travels in the checkpoint
    cli = run(tmp_path, "fit", "--trainer.max_epochs", "3", "--ckpt_path", "last")
    budget = next(c for c in cli.trainer.callbacks if isinstance(c, WallClockBudget))
    assert not budget.stopped and cli.trainer.current_epoch == 3
    clock = next(c for c in cli.trainer.callbacks if isinstance(c, TrainingClock))
    assert clock.previous_seconds == saved_seconds and clock.seconds > saved_seconds  # summed, not restarted


def test_last_checkpoint_is_the_latest_epoch_even_without_a_new_best(tmp_path):
    """`--ckpt_path last` must resume from the newest epoch. Lightning's save_last=True rewrites
    last.ckpt only when a top-k checkpoint is saved; with mode=min on a rising metric the best stays
    at epoch 0 while last.ckpt must follow every epoch."""
    run(tmp_path, "fit", "--trainer.max_epochs", "3", "--checkpoint.mode", "min")
    folder = tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints"
    assert torch.load(folder / "last.ckpt", weights_only=True)["epoch"] == 2
    (best,) = folder.glob("best*.ckpt")
    assert torch.load(best, weights_only=True)["epoch"] == 0


@pytest.mark.slow
def test_a_checkpoint_says_which_model_settings_it_is_used_with(tmp_path):
    """With --ckpt_path LightningCLI builds the model from the checkpoint's settings; a different
    value in the config would be ignored without a word: the CLI names it, and uses the config's
    value when asked. Settings the checkpoint predates keep the config's value: named too."""
    run(tmp_path, "fit", "--trainer.max_epochs", "1")
    last = tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    changed = ("--model.backbone.init_args.dropout", "0.45")
    named = r"model.backbone.init_args.dropout: checkpoint 0.2, config 0.45"
    for args in (("test", "--ckpt_path", str(last)), ("fit", "--trainer.max_epochs", "2", "--ckpt_path", "last")):
        with pytest.warns(UserWarning, match=rf"used: the checkpoint's .*\n  {named}"):
            cli = run(tmp_path, *args, *changed)
        assert cli.model.backbone.blocks[0].attention.dropout.p == 0.2
    with pytest.warns(UserWarning, match=rf"used: the config's.*\n  {named}"):
        cli = run(tmp_path, "test", "--ckpt_path", str(last), *changed, "--model_from_config", "true")
    assert cli.model.backbone.blocks[0].attention.dropout.p == 0.45

    older = tmp_path / "older.ckpt"  # as if written before the backbone had an `attn_dropout` setting
    checkpoint = torch.load(last, weights_only=True)
    del checkpoint["hyper_parameters"]["backbone"]["init_args"]["attn_dropout"]
    AtomicCheckpointIO().save_checkpoint(checkpoint, older)  # with its checksum, as the trainer writes it
    with pytest.warns(UserWarning, match=r"predates these settings.*model.backbone.init_args.attn_dropout = 0.4"):
        cli = run(tmp_path, "test", "--ckpt_path", str(older), "--model.backbone.init_args.attn_dropout", "0.4")
    assert cli.model.backbone.blocks[0].attention.attn_dropout == 0.4


def test_evaluation_settings_follow_the_config_without_a_warning(tmp_path, recwarn):
    run(tmp_path, "fit", "--trainer.max_epochs", "1")
    last = tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    cli = run(tmp_path, "test", "--ckpt_path", str(last), "--model.top_k", "[10, 5]", "--model.mask_history", "true")
    assert cli.model.hparams.mask_history is True and "test/HR@5" in cli.trainer.callback_metrics
    assert not [w for w in recwarn if "model settings differ" in str(w.message) or "predates" in str(w.message)]
