"""The scan backend: set once (environment at the first scan, or explicitly), and said once per
run, with the reason, by `scan_backend_report` and the CLI's ScanBackendReport callback."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sigma_lightning import Mamba, callbacks
from sigma_lightning.cli import run_sigma
from sigma_lightning.errors import ConfigError
from sigma_lightning.ops import _cscan, backend
from sigma_lightning.ops.backend import (
    FAST_BACKEND_ENV,
    c_kernel_available,
    fast_backend,
    fast_backend_setting,
    scan_backend_report,
    set_fast_backend,
    use_fast_backend,
)

NO_KERNEL = _cscan.Status(None, None, "no C compiler found (set CC or install cc, gcc or clang)")


@pytest.fixture
def fresh_setting(monkeypatch):
    """As in a new process: the setting not read yet (restored after the test)."""
    monkeypatch.setattr(backend, "_setting", None)


def test_environment_is_read_once_at_the_first_scan(fresh_setting, monkeypatch):
    monkeypatch.setenv(FAST_BACKEND_ENV, "torch")
    assert fast_backend("cpu") == "torch"
    monkeypatch.setenv(FAST_BACKEND_ENV, "auto")  # too late: the setting is chosen
    assert fast_backend("cpu") == "torch" and fast_backend_setting() == "torch"


def test_explicit_setting_and_context_manager(fresh_setting, monkeypatch):
    monkeypatch.delenv(FAST_BACKEND_ENV, raising=False)
    c_or_torch = "c" if c_kernel_available() else "torch"
    assert fast_backend("cpu") == c_or_torch  # default "auto"
    assert set_fast_backend("torch") == "auto" and fast_backend("cpu") == "torch"
    with use_fast_backend("auto"):
        assert fast_backend("cpu") == c_or_torch
        with use_fast_backend("torch"):
            assert fast_backend("cpu") == "torch"
        assert fast_backend("cpu") == c_or_torch
    assert fast_backend_setting() == "torch"  # restored on leaving
    with pytest.raises(RuntimeError), use_fast_backend("auto"):
        raise RuntimeError("inside")
    assert fast_backend_setting() == "torch"  # restored after an error too
    set_fast_backend("c" if c_kernel_available() else "auto")
    assert fast_backend("meta") == "torch"  # not CPU tensors: the pure-PyTorch loop, whatever the setting


def test_bad_settings_name_where_they_came_from(fresh_setting, monkeypatch):
    monkeypatch.setenv(FAST_BACKEND_ENV, "fastest")
    with pytest.raises(ConfigError, match=f"{FAST_BACKEND_ENV}='fastest' is not a fast-scan backend: use one of auto, c, torch"):
        fast_backend("cpu")
    monkeypatch.setenv(FAST_BACKEND_ENV, "TORCH ")
    assert fast_backend_setting() == "torch"
    with pytest.raises(ConfigError, match=r"set_fast_backend\(name\)='gpu'"):
        set_fast_backend("gpu")
    assert fast_backend_setting() == "torch"  # a rejected setting changes nothing


def test_setting_c_without_a_kernel_fails_instead_of_running_slowly(monkeypatch):
    monkeypatch.setattr(_cscan, "_status", NO_KERNEL)
    with use_fast_backend("c"):
        with pytest.raises(RuntimeError, match="set to 'c'.*no C compiler found.*python -m sigma_lightning.ops.build"):
            fast_backend("cpu")
        assert "fails: the setting 'c' requires the C kernel" in scan_backend_report("cpu")
    with use_fast_backend("auto"):
        assert fast_backend("cpu") == "torch"


def test_report_says_which_scan_runs_and_why(monkeypatch):
    if c_kernel_available():
        with use_fast_backend("auto"):
            line = scan_backend_report("cpu")
        path = _cscan.status().built.path
        assert line.startswith("selective scan (scan_impl='auto', cpu tensors): the C kernel ")
        assert str(path) in line and path.is_file() and " ".join(_cscan.status().built.manifest["flags"]) in line
    with use_fast_backend("torch"):
        assert "the pure-PyTorch scan, because the fast backend is set to 'torch'" in scan_backend_report("cpu")
    monkeypatch.setattr(_cscan, "_status", NO_KERNEL)
    with use_fast_backend("auto"):
        line = scan_backend_report("cpu", "fast")
    assert line.startswith("selective scan (scan_impl='fast', cpu tensors): the pure-PyTorch scan (several times slower)")
    assert NO_KERNEL.error in line and "python -m sigma_lightning.ops.build" in line
    assert "the reference loop" in scan_backend_report("cpu", "reference")
    assert "scan_impl='cuda' cannot run: the tensors are on cpu" in scan_backend_report("cpu", "cuda")
    assert "pure-PyTorch chunked scan" in scan_backend_report("meta")
    with pytest.raises(ValueError, match="scan_impl"):
        scan_backend_report("cpu", "fastest")


class TwoBlocks(nn.Module):
    def __init__(self, impls: tuple[str, ...]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Mamba(8, d_state=4, scan_impl=impl) for impl in impls)


@pytest.mark.parametrize("impls", [(), ("auto", "auto"), ("reference", "auto")], ids=["none", "same", "two"])
def test_callback_reports_each_scan_impl_once(impls, monkeypatch):
    said = []
    monkeypatch.setattr(callbacks, "rank_zero_info", said.append)
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    callbacks.ScanBackendReport().setup(trainer, TwoBlocks(impls), "fit")
    assert said == [scan_backend_report("cpu", impl) for impl in sorted(set(impls))]


MAMBA4REC_FIT = [
    "fit", "--config", "quickstart.yaml",
    "--model.backbone", "sigma_lightning.models.Mamba4Rec",
    "--model.backbone.init_args.hidden_size", "16", "--model.backbone.init_args.num_layers", "1",
    "--data.path", "synthetic", "--data.synthetic.num_users", "60", "--data.synthetic.num_items", "30",
    "--data.synthetic.num_topics", "4", "--data.synthetic.max_length", "10", "--data.max_seq_len", "8",
    "--data.batch_size", "64", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]  # fmt: skip


@pytest.mark.slow
def test_sigma_fit_says_which_scan_runs_once(tmp_path, caplog):
    folders = ["--data.cache_dir", str(tmp_path / "cache"), "--trainer.logger.init_args.save_dir", str(tmp_path)]
    with caplog.at_level(logging.INFO):
        run_sigma([*MAMBA4REC_FIT, *folders])
    lines = [r.getMessage() for r in caplog.records if "selective scan (" in r.getMessage()]
    assert lines == [scan_backend_report("cpu", "auto")]
    assert any(r.getMessage().startswith("epoch 0:") for r in caplog.records)  # the run's other lines are here too
