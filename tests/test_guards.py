"""Guards: a diverged run stops with one message and saves nothing; YAML input is bounded."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from jsonargparse import get_loader
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from sigma_lightning.cli import BUNDLED_CONFIGS, run_sigma
from sigma_lightning.errors import ConfigError
from sigma_lightning.guards import MAX_YAML_NODES, StopOnNonFinite, TrainingDiverged, bounded_yaml_load
from tests.test_cli import run, tiny_args

MAIN = "import sys; from sigma_lightning.cli import main; sys.exit(main(sys.argv[1:]))"


# ---- non-finite training ----------------------------------------------------------------------
def test_a_nan_loss_stops_training_at_once_and_saves_no_checkpoint(tmp_path):
    with pytest.raises(SystemExit) as failed:
        run(tmp_path, "fit", "--trainer.max_epochs", "3", "--optimizer.init_args.lr", "1e6")
    message = str(failed.value)
    assert failed.value.code == 2 and message.startswith("sigma: error: training stopped at epoch 0, step ")
    assert "the training loss is nan" in message and "No checkpoint of these weights was saved" in message
    assert "lr=1e+06" in message and "bf16-mixed" in message
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


@pytest.mark.slow
def test_the_sigma_command_exits_non_zero_on_a_nan_loss(tmp_path):
    args = tiny_args(tmp_path, "fit", "--trainer.max_epochs", "3", "--optimizer.init_args.lr", "1e6")
    done = subprocess.run([sys.executable, "-c", MAIN, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("sigma: error: training stopped at epoch 0, step ")
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


class PoisonedAtEpochEnd(BoringModel):
    """Its weights turn NaN on the epoch's last training batch, after a finite loss: validation of
    them then logs a finite score (as NDCG@10 of NaN scores is 0), which ModelCheckpoint would keep."""

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if batch_idx == self.trainer.num_training_batches - 1:
            with torch.no_grad():
                self.layer.weight.fill_(float("nan"))

    def validation_step(self, batch, batch_idx) -> None:
        self.log("val/score", 0.0)


def fit_poisoned(folder: Path, callbacks: list) -> None:
    checkpoint = ModelCheckpoint(dirpath=folder, monitor="val/score", mode="max")
    trainer = Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=2, callbacks=[*callbacks, checkpoint],
                      logger=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(PoisonedAtEpochEnd())


def test_weights_that_turned_non_finite_are_never_checkpointed(tmp_path):
    fit_poisoned(tmp_path / "unguarded", [])  # the case is real: without the guard they are saved as best
    assert list((tmp_path / "unguarded").glob("*.ckpt"))
    with pytest.raises(TrainingDiverged, match=r"at epoch 0, step 4: the weights hold NaN or inf \(layer.weight"):
        fit_poisoned(tmp_path / "guarded", [StopOnNonFinite()])
    assert not (tmp_path / "guarded").exists() or not list((tmp_path / "guarded").glob("*.ckpt"))


def test_the_message_names_fp16_when_the_run_uses_it():
    one_process = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)
    trainer = SimpleNamespace(optimizers=[SimpleNamespace(param_groups=[{"lr": 0.01}])], precision="16-mixed",
                              current_epoch=3, global_step=120, strategy=one_process)  # fmt: skip
    guard = StopOnNonFinite()
    guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(2.5)}, None, 7)  # finite: nothing happens
    with pytest.raises(TrainingDiverged) as diverged:
        guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("inf"))}, None, 7)
    message = str(diverged.value)
    assert "epoch 3, step 120: the training loss is inf (batch 7" in message
    assert "lr=0.01; try 10x lower: --optimizer.init_args.lr 0.001" in message
    assert "fp16 overflow (trainer.precision=16-mixed; use --trainer.precision bf16-mixed" in message


# ---- YAML bounds ------------------------------------------------------------------------------
def bomb_text(levels: int = 9) -> str:
    """Billion laughs: each level lists the previous one 9 times; 9**9 values once expanded."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ntrainer:\n  max_epochs: *a{levels - 1}\n"


def test_an_alias_bomb_is_refused_before_it_is_built():
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"bomb.yaml: the YAML expands to more than {MAX_YAML_NODES} values"):
        bounded_yaml_load(bomb_text(), path="bomb.yaml")
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 0.5 and peak < 20 * 2**20
    assert len(bomb_text().splitlines()) < 64


def test_the_cli_refuses_an_alias_bomb_quickly_with_one_short_message(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(bomb_text())
    started = time.perf_counter()
    with pytest.raises(SystemExit) as failed:
        run_sigma(["fit", "--config", str(bomb)])
    assert time.perf_counter() - started < 5
    message = str(failed.value)
    assert failed.value.code == 2 and message.startswith(f"sigma: error: {bomb}: the YAML expands") and len(message) < 400


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: &a [1, *a]\n", "line 1: a YAML alias refers to itself"),
        ("a: " + "[" * 150 + "]" * 150 + "\n", "line 1: YAML nested deeper than 100"),
    ],
)
def test_recursive_and_deeply_nested_yaml_is_refused(text, expected):
    with pytest.raises(ConfigError, match=rf"given.yaml, {expected}"):
        bounded_yaml_load(text, path="given.yaml")


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("trainer:\n  max_epochs: 3\n  accelerator: [cpu\nmodel:\n  top_k: [10]\n")
    with pytest.raises(SystemExit) as failed:
        run_sigma(["fit", "--config", str(config)])
    message = str(failed.value)
    assert message.startswith(f"sigma: error: {config}, line 4, column ") and "YAML syntax error" in message
    assert "<unicode string>" not in message


def test_bounded_yaml_loads_what_plain_yaml_loads():
    """Every bundled config (anchors allowed) loads exactly as jsonargparse's own YAML loader does; a
    command-line value that is no YAML keeps jsonargparse's handling (taken as a string)."""
    configs = sorted(BUNDLED_CONFIGS.rglob("*.yaml"))
    assert len(configs) > 5
    for config in configs:
        text = config.read_text()
        assert bounded_yaml_load(text, path=str(config)) == get_loader("yaml")(text)
    shared = "lr: &lr 0.001\nsame: *lr\nlist: &l [1, 2]\nagain: *l\n"
    assert bounded_yaml_load(shared, path="x.yaml") == {"lr": 0.001, "same": 0.001, "list": [1, 2], "again": [1, 2]}
    with pytest.raises(yaml.YAMLError):
        bounded_yaml_load("a: b: c")
