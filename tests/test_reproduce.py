"""`sigma reproduce` (sigma_lightning/reproduce.py): a run trains across invocations within a time
budget, is tested once at the end, records its result, and is never trained again."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sigma_lightning import reproduce
from sigma_lightning.checkpoints import AtomicCheckpointIO
from sigma_lightning.cli import main
from tests.test_cli import TINY


@pytest.mark.slow
def test_budgeted_invocations_then_one_test_and_a_table_row(tmp_path):
    runs = tmp_path / "runs"
    extra = [*TINY, "--data.cache_dir", str(tmp_path / "cache"), "--trainer.max_epochs", "2"]
    first = reproduce.train_and_test("quickstart", 7, "tiny", runs, 0.001, extra)
    assert first["status"] == "training" and first["epochs"] == 1  # stopped by the budget after one epoch
    assert not (runs / "quickstart-tiny-s7" / "result.json").exists()
    assert "- quickstart-tiny-s7: 1 epochs after 1 invocations (0 killed)" in reproduce.table(runs)  # still training

    # An invocation killed mid-fit leaves its mark and never writes its time; the training time of
    # the checkpoint it resumed from travels in the checkpoint, so the total still counts it. Say
    # the run had trained 1000 s when it was killed:
    progress_file = runs / "quickstart-tiny-s7" / "progress.json"
    progress = json.loads(progress_file.read_text())
    progress_file.write_text(json.dumps({**progress, "wall_time_s": 0.0, "invocations": 2, "running": True}))
    last = runs / "quickstart-tiny-s7" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert 0 < checkpoint["callbacks"]["TrainingClock"]["seconds"] <= first["wall_time_s"]
    checkpoint["callbacks"]["TrainingClock"]["seconds"] = 1000.0
    AtomicCheckpointIO().save_checkpoint(checkpoint, last)  # with its checksum, as the trainer writes it

    records = tmp_path / "records"
    second = reproduce.train_and_test("quickstart", 7, "tiny", runs, None, extra, records)
    assert second["status"] == "done" and second["epochs"] == 2 and second["invocations"] == 3
    assert second["killed_invocations"] == 1 and not second["running"]
    assert 1000 < second["wall_time_s"] < 1000 + 300
    assert set(reproduce.METRICS) <= set(second["test"]) and 0 <= second["test"]["NDCG@10"] <= 1
    assert "epoch001" in second["best_checkpoint"] or "epoch000" in second["best_checkpoint"]
    saved = json.loads((runs / "quickstart-tiny-s7" / "result.json").read_text())
    assert saved["test"] == second["test"] and saved["seed"] == 7
    assert saved["command"] == f"sigma reproduce quickstart --seed 7 --tag tiny -- {' '.join(extra)}"
    # Excluding seen items (the target itself excepted) only removes competitors: no rank gets worse.
    masked = saved["test_history_masked"]
    assert all(masked[m] >= saved["test"][m] - 1e-6 for m in reproduce.METRICS) and masked != saved["test"]

    third = reproduce.train_and_test("quickstart", 7, "tiny", runs, None, extra)
    assert third == saved  # recorded: not trained or tested again
    # a result recorded before the history-masked test existed gets it, and nothing else changes
    older = {k: v for k, v in saved.items() if k != "test_history_masked"}
    (runs / "quickstart-tiny-s7" / "result.json").write_text(json.dumps(older))
    assert reproduce.train_and_test("quickstart", 7, "tiny", runs, None, extra) == saved
    rows = reproduce.table(runs).splitlines()
    assert rows[2].startswith("| quickstart | tiny | 7 | 2 (") and not rows[3]
    assert f"{second['test']['HR@10']:.4f}" in rows[2]
    machine = f"CPU, {torch.get_num_threads()} threads; torch {torch.__version__}"
    assert rows[5].startswith("- quickstart-tiny-s7 (") and machine in rows[5]
    assert rows[5].endswith(f"): `sigma reproduce quickstart --seed 7 --tag tiny -- {' '.join(extra)}`")
    # the record kept beside the docs makes the same table once the run folder is gone
    assert json.loads((records / "quickstart-tiny-s7.json").read_text())["test_history_masked"] == masked
    assert reproduce.table(records) == reproduce.table(runs)


def test_machine_names_the_device_that_trained_not_the_one_the_host_has(monkeypatch):
    # Seen on an H100 host: a run with --trainer.accelerator cpu was recorded as trained on the GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    on_cpu = reproduce.machine(torch.device("cpu"))
    assert f"CPU, {torch.get_num_threads()} threads; torch" in on_cpu and "Some GPU" not in on_cpu
    assert ", Some GPU; torch" in reproduce.machine(torch.device("cuda", 0))
    assert ", 2 x Some GPU; torch" in reproduce.machine(torch.device("cuda", 0), num_devices=2)


def test_table_gives_mean_and_spread_over_seeds_next_to_the_paper(tmp_path):
    for seed, ndcg in [(42, 0.05), (43, 0.06), (44, 0.07)]:
        folder = tmp_path / f"beauty-sigma-s{seed}"
        folder.mkdir()
        result = {
            "name": folder.name, "recipe": "beauty/sigma", "tag": None, "seed": seed, "epochs": 40,
            "best_checkpoint": f"{folder}/version_0/checkpoints/best-epoch029-ndcg0.0500.ckpt",
            "wall_time_s": 7200.0, "test": {"HR@10": 0.1, "NDCG@10": ndcg, "MRR@10": 0.04}, "best_val_ndcg10": ndcg - 0.01,
        }  # fmt: skip
        (folder / "result.json").write_text(json.dumps(result))
    # a record of seed 42 beside its run folder (docs/records copied in) is not a fourth seed
    (tmp_path / "beauty-sigma-s42.json").write_text((tmp_path / "beauty-sigma-s42" / "result.json").read_text())
    row = reproduce.table(tmp_path).splitlines()[2]
    assert row.startswith("| beauty/sigma |  | 42, 43, 44 | 40 (epoch029), 40 (epoch029), 40 (epoch029) | 0.0400, 0.0500, 0.0600 |")
    assert "0.0600 ± 0.0100" in row and "0.1000 ± 0.0000" in row  # mean ± sample standard deviation
    assert "0.0986 / 0.0604 / 0.0488" in row and row.endswith("2.0 h, 2.0 h, 2.0 h |")
    (tmp_path / "notes.json").write_text("{}")  # anything else there is named, not skipped or a KeyError
    with pytest.raises(reproduce.DataError, match="notes.json is not a result record"):
        reproduce.table(tmp_path)


def test_the_sigma_command_dispatches_reproduce(tmp_path, capsys):
    record = {"name": "quickstart-s1", "recipe": "quickstart", "tag": None, "seed": 1, "epochs": 3,
              "best_checkpoint": "x/version_0/checkpoints/best-epoch002-ndcg0.5000.ckpt", "best_val_ndcg10": 0.5,
              "wall_time_s": 60.0, "test": {"HR@10": 0.7, "NDCG@10": 0.4, "MRR@10": 0.3},
              "overrides": ["--model.top_k", "[10, 5]"]}  # fmt: skip
    (tmp_path / "quickstart-s1.json").write_text(json.dumps(record))
    main(["reproduce", "--table", "--runs", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.startswith("| recipe |") and "| quickstart |  | 1 | 3 (epoch002) | 0.5000 | 0.7000 |" in out
    assert "`sigma reproduce quickstart --seed 1 -- --model.top_k '[10, 5]'`" in out  # pastes into a shell
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--table", "--runs", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("sigma: error: ") and "notes.json is not a result record" in str(exit_info.value)


@pytest.mark.slow
def test_installed_sigma_reproduce_help():
    """pip installs `sigma`; `sigma reproduce` is part of it (no script from the repository)."""
    sigma = shutil.which("sigma", path=str(Path(sys.executable).parent))
    if sigma is None:
        pytest.skip("the package is not installed in this environment (pip install -e .)")
    done = subprocess.run([sigma, "reproduce", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: sigma reproduce") and "--budget" in done.stdout and "--table" in done.stdout


def test_wall_times_under_an_hour_read_in_minutes():
    assert [reproduce.duration(s) for s in (162, 3599, 3600, 9360)] == ["3 min", "60 min", "1.0 h", "2.6 h"]


def test_the_table_reads_the_committed_records():
    """docs/records holds runs transcribed from older docs, with nulls where a value was never printed."""
    from pathlib import Path as _Path

    from sigma_lightning.reproduce import table

    records = _Path(__file__).resolve().parents[1] / "docs" / "records"
    text = table(records)
    assert "| beauty/gru4rec |  | 42 | 58 (epoch047) | 0.0453 | 0.0623 |" in text
