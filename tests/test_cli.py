"""End-to-end through the `sigma` CLI on tiny synthetic data: fit, test, resume, safe loading."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sigma_lightning.callbacks import TrainingClock, WallClockBudget
from sigma_lightning.cli import bundled_config, main, resolve_config_names, run_sigma

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

    cli = run(tmp_path, "predict", "--ckpt_path", str(last))  # top-k per user (file output: a later issue)
    batches = cli.trainer.predict_loop.predictions
    users = torch.cat([b["user"] for b in batches])
    items = torch.cat([b["items"] for b in batches])
    assert len(users) == len(set(users.tolist())) == cli.datamodule.data.num_users  # every user once
    assert items.shape[1] == 20 and items.min() >= 1 and items.max() <= cli.datamodule.num_items


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
    with pytest.raises(SystemExit, match="no checkpoint matching"):
        run(tmp_path, "fit", "--trainer.max_epochs", "1", "--ckpt_path", "last")


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


@pytest.mark.parametrize("name", ["quickstart", "beauty", "sports", "games", "yelp", "ml-1m", "ml-100k"])
def test_every_bundled_config_parses(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", f"{name}.yaml", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: sigma_lightning.models" in printed and "max_seq_len" in printed


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--data.path", "/nonexistent/interactions.csv"], "data file not found: /nonexistent/interactions.csv"),
        (["--data.max_seq_len", "0"], "max_seq_len must be >= 1"),
        (["--model.backbone.init_args.num_heads", "3"], "must be divisible by num_heads"),
    ],
)
def test_bad_settings_end_with_one_message(tmp_path, override, message):
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, "fit", *override)
    assert str(exit_info.value).startswith("sigma: error: ") and message in str(exit_info.value)


def test_the_sigma_command_exits_with_status_0(tmp_path):
    """`sigma` is installed as `sys.exit(main())`: a successful run must exit 0 and print nothing
    of its own on stderr (a returned object would become status 1 and be printed)."""
    args = tiny_args(tmp_path, "validate")
    script = "import sys; from sigma_lightning.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SigmaCLI object" not in done.stderr
    assert "val/NDCG@10" in done.stdout


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
    with pytest.raises(SystemExit, match="budget.seconds"):
        run(tmp_path, "fit", "--budget.seconds", "0")


def test_last_checkpoint_is_the_latest_epoch_even_without_a_new_best(tmp_path):
    """`--ckpt_path last` must resume from the newest epoch. Lightning's save_last=True rewrites
    last.ckpt only when a top-k checkpoint is saved; with mode=min on a rising metric the best stays
    at epoch 0 while last.ckpt must follow every epoch."""
    run(tmp_path, "fit", "--trainer.max_epochs", "3", "--checkpoint.mode", "min")
    folder = tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints"
    assert torch.load(folder / "last.ckpt", weights_only=True)["epoch"] == 2
    (best,) = folder.glob("best*.ckpt")
    assert torch.load(best, weights_only=True)["epoch"] == 0


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
    torch.save(checkpoint, older)
    with pytest.warns(UserWarning, match=r"predates these settings.*model.backbone.init_args.attn_dropout = 0.4"):
        cli = run(tmp_path, "test", "--ckpt_path", str(older), "--model.backbone.init_args.attn_dropout", "0.4")
    assert cli.model.backbone.blocks[0].attention.attn_dropout == 0.4


def test_evaluation_settings_follow_the_config_without_a_warning(tmp_path, recwarn):
    run(tmp_path, "fit", "--trainer.max_epochs", "1")
    last = tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    cli = run(tmp_path, "test", "--ckpt_path", str(last), "--model.top_k", "[10, 5]", "--model.mask_history", "true")
    assert cli.model.hparams.mask_history is True and "test/HR@5" in cli.trainer.callback_metrics
    assert not [w for w in recwarn if "model settings differ" in str(w.message) or "predates" in str(w.message)]
