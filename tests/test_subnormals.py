"""Subnormal floats are flushed to zero while sigma's Trainer runs (FlushSubnormals), and the
caller's mode is back afterwards."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from sigma_lightning.callbacks import FlushSubnormals, subnormals_flushed
from sigma_lightning.module import SeqRecModule
from tests.test_cli import run


@pytest.fixture(autouse=True)
def ieee_mode():
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-to-zero mode for torch.set_flush_denormal")
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)


def test_the_probe_tells_the_two_modes_apart():
    assert not subnormals_flushed()
    torch.set_flush_denormal(True)
    assert subnormals_flushed()


def test_sigma_fit_trains_and_validates_with_subnormals_flushed_and_restores_the_mode(tmp_path, monkeypatch):
    seen = []
    for hook in ("training_step", "validation_step"):
        original = getattr(SeqRecModule, hook)

        def probe(self, *args, _original=original, _hook=hook, **kwargs):
            seen.append((_hook, subnormals_flushed()))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(SeqRecModule, hook, probe)
    run(tmp_path, "fit", "--trainer.max_epochs", "1")
    assert {hook for hook, _ in seen} == {"training_step", "validation_step"}
    assert all(flushed for _, flushed in seen), seen
    assert not subnormals_flushed()  # the caller's IEEE mode is back


@pytest.mark.parametrize("before", [False, True])
def test_the_callback_puts_back_the_mode_it_found(before):
    torch.set_flush_denormal(before)
    seen = []

    class Probe(BoringModel):
        def training_step(self, batch, batch_idx):
            seen.append(subnormals_flushed())
            return super().training_step(batch, batch_idx)

    trainer = Trainer(max_steps=2, callbacks=[FlushSubnormals()], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(Probe())
    assert seen == [True, True]
    assert subnormals_flushed() == before


def test_a_run_that_raises_puts_the_mode_back_too(tmp_path):
    with pytest.raises(SystemExit):
        run(tmp_path, "fit", "--trainer.max_epochs", "2", "--optimizer.init_args.lr", "1e6")  # stops on a NaN loss
    assert not subnormals_flushed()
