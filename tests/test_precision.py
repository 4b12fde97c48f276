"""Mixed precision (issue 17): every backbone trains under `--trainer.precision bf16-mixed` on the
CPU to a finite loss and finite weights; under autocast the selective scans, EchoMamba4Rec's FFT
filter and the ranking still compute in float32; `16-mixed` on a CPU is one ConfigError."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from sigma_lightning import module as module_file
from sigma_lightning.cli import SigmaExit, run_sigma
from sigma_lightning.cli_checks import check_precision
from sigma_lightning.errors import ConfigError
from sigma_lightning.models import SIGMA, EchoMamba4Rec, GRU4Rec, Mamba4Rec, MambaConfig, SASRec
from sigma_lightning.models import echomamba4rec as echo_file
from sigma_lightning.module import SeqRecModule
from sigma_lightning.nn import mamba as mamba_file
from sigma_lightning.ops import _fast_op as fast_op_file
from sigma_lightning.ops import selective_scan as scan_file

L = 10  # data.max_seq_len of the tiny runs
# Each backbone at a tiny size, as the command line sets it (`--model.backbone <class> <init_args>`).
BACKBONE_ARGS = {
    "SASRec": ["--model.backbone.init_args.max_seq_len", str(L)],
    "GRU4Rec": [],
    "Mamba4Rec": ["--model.backbone.init_args.mamba.d_state", "4"],
    "EchoMamba4Rec": ["--model.backbone.init_args.mamba.d_state", "4",
                      "--model.backbone.init_args.filter_len", "32"],  # >= 2L - 1
    "SIGMA": ["--model.backbone.init_args.mamba.d_state", "4", "--model.backbone.init_args.flip_range", "3"],
}  # fmt: skip
TINY_RUN = [
    "--data.path", "synthetic", "--data.synthetic.num_users", "120", "--data.synthetic.num_items", "40",
    "--data.synthetic.num_topics", "4", "--data.synthetic.max_length", "12", "--data.max_seq_len", str(L),
    "--data.batch_size", "32", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


def bf16_fit(tmp_path: Path, backbone: str, *extra: str):
    folders = ["--data.cache_dir", str(tmp_path / "cache"), "--trainer.default_root_dir", str(tmp_path / "runs")]
    return run_sigma([
        "fit", "--config", "quickstart.yaml", "--model.backbone", f"sigma_lightning.models.{backbone}",
        "--model.backbone.init_args.hidden_size", "16", *BACKBONE_ARGS[backbone], *TINY_RUN, *folders,
        "--trainer.precision", "bf16-mixed", *extra,
    ])  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list(BACKBONE_ARGS))
def test_bf16_mixed_fit_on_cpu_reaches_finite_loss_and_weights(tmp_path, backbone):
    """Two epochs of `sigma fit --trainer.precision bf16-mixed` (CPU): autocast really ran (Lightning's
    bf16 plugin), every training loss and validation metric is finite, the loss went down, and every
    weight is finite and moved."""
    torch.manual_seed(0)
    cli = bf16_fit(tmp_path, backbone, "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1")
    assert cli.trainer.precision == "bf16-mixed"
    assert type(cli.trainer.precision_plugin).__name__ == "MixedPrecision"
    losses = []
    for name, value in cli.trainer.logged_metrics.items():
        assert math.isfinite(float(value)), f"{backbone}: {name} = {float(value)}"
        if name == "train/loss_epoch":
            losses.append(float(value))
    metrics = cli.trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss_epoch"])) and math.isfinite(float(metrics["val/NDCG@10"]))
    assert float(metrics["train/loss_epoch"]) < math.log(40), f"{backbone} learned nothing under bf16"
    for name, p in cli.model.named_parameters():
        assert p.dtype == torch.float32, f"{name} is stored in {p.dtype}: the master weights must stay float32"
        assert torch.isfinite(p).all(), f"{backbone}: {name} has non-finite values after a bf16 fit"


# ---- float32 where it matters, under autocast --------------------------------------------------------
def tiny_module(backbone: str) -> SeqRecModule:
    torch.manual_seed(0)
    mamba = MambaConfig(d_state=4)
    make = {
        "SASRec": lambda: SASRec(hidden_size=16, max_seq_len=L),
        "GRU4Rec": lambda: GRU4Rec(hidden_size=16),
        "Mamba4Rec": lambda: Mamba4Rec(hidden_size=16, mamba=mamba),
        "EchoMamba4Rec": lambda: EchoMamba4Rec(hidden_size=16, mamba=mamba, filter_len=32),
        "SIGMA": lambda: SIGMA(hidden_size=16, mamba=mamba, flip_range=3),
    }
    return SeqRecModule(make[backbone](), num_items=40)


def batch(num_items: int = 40) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, num_items + 1, (6, L), generator=g)
    ids[torch.arange(L).expand(6, L) < torch.tensor([[0], [3], [7], [1], [9], [5]])] = 0  # left padding
    return {"input_ids": ids, "target": torch.randint(1, num_items + 1, (6,), generator=g)}


class Probe:
    """Wraps a function; records, for each call, the dtypes of its tensor arguments and results and
    whether CPU autocast was on when it was called."""

    def __init__(self, fn) -> None:
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        result = self.fn(*args, **kwargs)
        flat = result if isinstance(result, (tuple, list)) else (result,)
        tensors = lambda xs: [t.dtype for t in xs  # noqa: E731
                              if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())]
        self.calls.append({"autocast": torch.is_autocast_enabled("cpu"),
                           "inputs": tensors([*args, *kwargs.values()]), "outputs": tensors(flat)})
        return result


FLOAT32 = {torch.float32, torch.complex64}


def assert_float32(probe: Probe, what: str) -> None:
    assert probe.calls, f"{what} never ran"
    for call in probe.calls:
        assert not call["autocast"], f"{what} ran with autocast on: its matmuls would be bf16"
        assert set(call["inputs"]) <= FLOAT32 and set(call["outputs"]) <= FLOAT32, f"{what}: {call}"


@pytest.mark.parametrize("backbone", ["Mamba4Rec", "EchoMamba4Rec", "SIGMA"])
def test_under_bf16_autocast_the_scans_run_in_float32(backbone, monkeypatch):
    """The fast scan's kernels (the C kernel or the chunked loop) get float32 tensors with autocast
    off in the forward, and float32 in the backward, while the backbone around them runs in bf16.
    (The reference scan's float32 under autocast: tests/ops/test_selective_scan.py.)"""
    model = tiny_module(backbone)
    forward, backward = Probe(scan_file.selective_scan_fwd), Probe(fast_op_file.selective_scan_bwd)
    called = Probe(mamba_file.selective_scan)  # what the Mamba blocks hand the scan
    monkeypatch.setattr(scan_file, "selective_scan_fwd", forward)
    monkeypatch.setattr(fast_op_file, "selective_scan_bwd", backward)
    monkeypatch.setattr(mamba_file, "selective_scan", called)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(batch()["input_ids"]).sum().backward()
    assert called.calls and all(torch.bfloat16 in c["inputs"] for c in called.calls)  # bf16 around the scans
    assert_float32(forward, f"{backbone}'s scan forward")
    assert_float32(backward, f"{backbone}'s scan backward")
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_under_bf16_autocast_echomamba_filters_in_float32(monkeypatch):
    """EchoMamba4Rec's spectral filter inside the model under autocast: every FFT, forward and
    backward, gets and gives float32 (complex64), and the filter weights get finite gradients."""
    model = tiny_module("EchoMamba4Rec")
    probes = {name: Probe(getattr(torch.fft, name)) for name in ("rfft", "irfft")}
    for name, probe in probes.items():
        monkeypatch.setattr(echo_file.torch.fft, name, probe)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch()["input_ids"])
    out.float().sum().backward()
    for name, probe in probes.items():
        assert probe.calls, f"torch.fft.{name} never ran"
        for call in probe.calls:
            assert set(call["inputs"]) <= FLOAT32 and set(call["outputs"]) <= FLOAT32, f"{name}: {call}"
    filters = [m for m in model.modules() if isinstance(m, echo_file.SpectralFilter)]
    assert filters and all(torch.isfinite(f.weight.grad).all() for f in filters)


@pytest.mark.parametrize("autocast", [True, False], ids=["autocast", "bf16_tensors"])
def test_spectral_filter_given_bf16_filters_in_float32(autocast):
    """A bf16 input (what a layer after a bf16 matmul would hand it) is filtered in float32, under
    autocast (which itself runs CPU FFTs in float32) and without it (bf16 tensors, as in bf16-true):
    the result is the float32 filter's output rounded once to bf16."""
    torch.manual_seed(0)
    filt = echo_file.SpectralFilter(16, filter_len=32)
    x = torch.randn(3, L, 16).to(torch.bfloat16)  # (B, L, D)
    mask = torch.arange(L).expand(3, L) >= torch.tensor([[0], [4], [8]])  # (B, L) left padding
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = filt(x, mask)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, filt(x.float(), mask).to(torch.bfloat16))


@pytest.mark.parametrize("backbone", list(BACKBONE_ARGS))
def test_under_bf16_autocast_ranking_runs_in_float32(backbone, monkeypatch):
    """Validation and test ranks (what every metric counts) are computed from float32 scores with
    autocast off, so bf16 ties never decide a rank; and they equal the fp32 ranks exactly."""
    model = tiny_module(backbone).eval()
    ranker = Probe(module_file.rank_targets)
    monkeypatch.setattr(module_file, "rank_targets", ranker)
    with torch.no_grad():
        plain, _ = model.evaluation_ranks(batch())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ranks, cross_entropy = model.evaluation_ranks(batch())
    assert_float32(ranker, f"{backbone}'s ranking")
    assert cross_entropy.dtype == torch.float32
    assert torch.equal(ranks, plain)  # the whole evaluation is fp32: autocast changes no rank


# ---- 16-mixed needs a GPU -------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["16-mixed", "16", 16])
def test_fp16_mixed_on_cpu_is_one_config_error(precision):
    with pytest.raises(ConfigError) as caught:
        check_precision({"precision": precision, "accelerator": "cpu"})
    message = str(caught.value)
    assert "\n" not in message
    assert "trainer.precision" in message and "GPU" in message and "bf16-mixed" in message


@pytest.mark.parametrize("trainer", [
    {"precision": "bf16-mixed", "accelerator": "cpu"}, {"precision": "32-true", "accelerator": "cpu"},
    {"precision": "16-mixed", "accelerator": "gpu"}, {"precision": "16-mixed", "accelerator": "cuda"},
    {"precision": None, "accelerator": "cpu"}, None,
])  # fmt: skip
def test_other_precisions_and_gpu_runs_pass(trainer):
    check_precision(trainer)


def test_fp16_mixed_with_accelerator_auto_fails_only_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError):
        check_precision({"precision": "16-mixed", "accelerator": "auto"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_precision({"precision": "16-mixed", "accelerator": "auto"})


def test_sigma_fit_with_16_mixed_on_cpu_says_use_bf16(tmp_path, capsys):
    """Through the command: one `sigma: error:` line before anything is built (Lightning alone would
    silently switch a CPU run to bf16)."""
    with pytest.raises(SigmaExit):
        bf16_fit(tmp_path, "GRU4Rec", "--trainer.precision", "16-mixed")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sigma: error: trainer.precision=16-mixed"), err
    assert "--trainer.precision bf16-mixed" in err[0]
    assert not (tmp_path / "runs").exists()


# ---- the GPU script's CPU half ---------------------------------------------------------------------
@pytest.mark.slow
def test_gpu_check_script_cpu_dry_run_compares_the_scans(tmp_path):
    """tools/gpu_check.sh --cpu-dry-run: the scan step (cuda path with the kernels' stand-ins against
    the reference scan) passes and the GPU-only steps say they were skipped."""
    script = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.sh"
    done = subprocess.run(["bash", str(script), "--cpu-dry-run", "--out", str(tmp_path), "--steps", "scan,kernels"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    summary = (tmp_path / "summary.txt").read_text()
    assert done.returncode == 0, summary + (tmp_path / "scan.log").read_text()
    assert "scan: PASS" in summary and "kernels: SKIP" in summary
    assert "cuda equals reference (stand-in kernels on the CPU)" in (tmp_path / "scan.log").read_text()


@pytest.mark.slow
def test_gpu_check_script_cpu_dry_run_runs_the_two_benchmarks(tmp_path):
    """tools/gpu_check.sh --cpu-dry-run --steps efficiency,compile: both benchmarks run end to end on
    the CPU at toy sizes and leave their JSON (and the efficiency tables and plot) in OUT."""
    script = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.sh"
    done = subprocess.run(["bash", str(script), "--cpu-dry-run", "--out", str(tmp_path), "--steps", "efficiency,compile"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    summary = (tmp_path / "summary.txt").read_text()
    logs = "".join((tmp_path / f"{step}.log").read_text() for step in ("efficiency", "compile"))
    assert done.returncode == 0, summary + logs
    assert "efficiency: PASS" in summary and "compile: PASS" in summary
    for name in ("efficiency.json", "efficiency.md", "efficiency.png", "compile.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = json.loads((tmp_path / "compile.json").read_text())["rows"]
    assert [r["backbone"] for r in rows] == ["sasrec"] and rows[0]["max_diff"] < 1e-4
