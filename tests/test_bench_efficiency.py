"""benchmarks/bench_efficiency.py (docs/efficiency.md, notebooks/compare.ipynb): its memory reading
sees what a step allocates, every backbone is built from its recipe for each length, backbones are
interleaved within a length, the growth exponents are the log-log slopes, and one run writes the
JSON, tables and plot that the docs show."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_efficiency as bench  # noqa: E402

linux_only = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads Linux's VmHWM")
TINY = ["--num-items", "60", "--hidden-size", "8", "--threads", "1", "--repeats", "2"]
ROW_KEYS = {
    "backbone", "phase", "max_seq_len", "batch_size", "num_items", "parameters", "repeats", "seconds_per_batch",
    "seconds_min", "sequences_per_second", "ms_per_sequence", "peak_mb", "mb_per_sequence", "peak_total_mb",
}  # fmt: skip


@linux_only
@pytest.mark.parametrize("megabytes", [20, 80])
def test_peak_memory_sees_a_freed_allocation_once_and_not_the_one_before(megabytes):
    memory = bench.PeakMemory()
    earlier = torch.ones(200 * 2**20 // 4)  # a larger peak before start() must not count
    del earlier
    memory.start()
    block = torch.ones(megabytes * 2**20 // 4)  # touched: resident
    del block
    assert memory.peak_mb() == pytest.approx(megabytes, abs=3)


@pytest.mark.parametrize("name", bench.BACKBONES)
def test_every_backbone_is_built_from_its_recipe_for_long_sequences(name):
    model = bench.build_model(name, max_seq_len=300, num_items=50, hidden_size=8)
    spec = bench.backbone_spec(name, 300)
    assert type(model.backbone).__name__ == spec["class_path"].rsplit(".", 1)[1] and model.backbone.hidden_size == 8
    ids = torch.randint(1, 51, (2, 300))  # longer than SASRec's recipe table and EchoMamba's recipe filter
    assert model(ids).shape == (2, 8)
    if "filter_len" in spec["init_args"]:
        assert spec["init_args"]["filter_len"] >= 2 * 300 - 1


@pytest.mark.parametrize("exponent", [0.5, 1.0, 2.0])
def test_growth_exponent_is_the_power_of_a_power_law(exponent):
    lengths = [50, 200, 800, 3200]
    assert bench.growth_exponent(lengths, [3.7 * L**exponent for L in lengths]) == pytest.approx(exponent)
    noisy = [3.7 * L**exponent * f for L, f in zip(lengths, [1.05, 0.95, 1.04, 0.97])]
    assert bench.growth_exponent(lengths, noisy) == pytest.approx(exponent, abs=0.05)


def test_growth_exponent_needs_two_lengths_and_positive_values():
    assert bench.growth_exponent([50], [1.0]) is None
    assert bench.growth_exponent([50, 50], [1.0, 2.0]) is None
    assert bench.growth_exponent([50, 200], [0.0, 2.0]) is None  # no logarithm of a zero reading
    assert bench.growth_exponent([50, 200], [None, 2.0]) is None  # memory not readable off Linux


def test_exponents_fit_every_length_and_the_last_pair_apart():
    lengths = [50, 200, 800, 3200]
    rows = [{"backbone": name, "phase": phase, "max_seq_len": L, "seconds_per_batch": time(L), "peak_mb": 2.0 * L}
            for name, time in (("sasrec", lambda L: L**2), ("sigma", lambda L: 5.0 if L < 3200 else 20.0))
            for phase in bench.PHASES for L in reversed(lengths)]  # fmt: skip
    entries = {(e["backbone"], e["phase"]): e for e in bench.exponents(rows)}
    assert set(entries) == {(n, p) for n in ("sasrec", "sigma") for p in bench.PHASES}
    sasrec, sigma = entries["sasrec", "train"], entries["sigma", "inference"]
    assert sasrec["lengths"] == lengths
    assert sasrec["time_fit"] == pytest.approx(2) and sasrec["time_last"] == pytest.approx(2)
    assert sasrec["memory_fit"] == pytest.approx(1) and sasrec["memory_last"] == pytest.approx(1)
    assert sigma["time_last"] == pytest.approx(1)  # flat, then x4 from 800 to 3200
    assert 0 < sigma["time_fit"] < 0.7


def test_backbones_are_interleaved_in_a_rotating_order(monkeypatch):
    calls = []
    monkeypatch.setitem(bench.STEPS, "train", lambda case, batch: calls.append(case.name))
    cases = [bench.Case(name, 4, bench.build_model("gru4rec", 4, 10, 8), None) for name in "abc"]
    batch = bench.make_batch(4, 2, 10, torch.device("cpu"), seed=0)
    rows = bench.measure(cases, "train", batch, repeats=3, device=torch.device("cpu"))
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] + ["b", "c", "a"] + ["c", "a", "b"]  # warm-up, 3 rounds
    assert [r["backbone"] for r in rows] == ["a", "b", "c"] and all(r["repeats"] == 3 for r in rows)


def test_a_training_step_updates_the_weights_and_an_inference_batch_leaves_them():
    case = bench.make_case("sigma", 6, 20, torch.device("cpu"), seed=0, hidden_size=8)
    batch = bench.make_batch(6, 4, 20, torch.device("cpu"), seed=0)
    before = [p.detach().clone() for p in case.model.parameters()]
    bench.inference_batch(case, batch)
    assert not case.model.training and all(p.grad is None for p in case.model.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, case.model.parameters()))
    bench.train_step(case, batch)
    assert case.model.training and not torch.equal(before[0], case.model.item_embedding.weight)


def test_batches_are_full_length_the_same_for_every_backbone_and_seeded():
    one = bench.make_batch(7, 5, 30, torch.device("cpu"), seed=1)
    assert one["input_ids"].shape == (5, 7) and one["target"].shape == (5,)
    assert one["input_ids"].min() >= 1 and one["input_ids"].max() <= 30  # no padding: the worst case
    assert torch.equal(one["input_ids"], bench.make_batch(7, 5, 30, torch.device("cpu"), seed=1)["input_ids"])
    assert not torch.equal(one["input_ids"], bench.make_batch(7, 5, 30, torch.device("cpu"), seed=2)["input_ids"])


@linux_only
def test_rows_cover_every_length_and_memory_grows_with_it():
    rows = bench.run(["sasrec"], lengths=(64, 8), batch_size=16, num_items=200, steps=1, hidden_size=16)
    assert [r["max_seq_len"] for r in rows] == [8, 64]
    assert all(r["seconds_per_batch"] > 0 and r["phase"] == "train" for r in rows)
    assert rows[1]["peak_mb"] > rows[0]["peak_mb"] > 0  # attention and activations grow with L


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()  # main() sets --threads for the whole process
    yield
    torch.set_num_threads(threads)


@linux_only
@pytest.mark.usefixtures("keep_threads")
def test_one_run_writes_the_json_tables_and_plot(tmp_path, capsys):
    backbones = ["sasrec", "sigma"]
    paths = {"json": tmp_path / "eff.json", "markdown": tmp_path / "eff.md", "plot": tmp_path / "img" / "eff.png"}
    argv = [*TINY, "--backbones", *backbones, "--lengths", "16", "4", "--paper-length", "5", "--paper-batch", "6",
            "--sweep-train-batch", "2", "--sweep-infer-batch", "3",
            *(a for key, path in paths.items() for a in (f"--{key}", str(path)))]  # fmt: skip
    result = bench.main(argv)
    saved = json.loads(paths["json"].read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["settings"]["command"].startswith("python benchmarks/bench_efficiency.py --num-items 60")
    assert saved["machine"]["threads"] == 1 and saved["machine"]["torch"] == torch.__version__
    assert saved["settings"]["sweep_batches"] == {"train": 2, "inference": 3} and saved["settings"]["seed"] == 0

    paper = saved["paper_setting"]
    assert [(r["backbone"], r["phase"]) for r in paper] == [(b, p) for b in backbones for p in bench.PHASES]
    assert all(r["max_seq_len"] == 5 and r["batch_size"] == 6 and r["num_items"] == 60 for r in paper)
    sweep = saved["sweep"]  # backbone by backbone, then phase, lengths increasing (what the notebook plots)
    assert [(r["backbone"], r["phase"], r["max_seq_len"]) for r in sweep] == [
        (b, p, L) for b in backbones for p in bench.PHASES for L in (4, 16)]  # fmt: skip
    assert all(r["batch_size"] == {"train": 2, "inference": 3}[r["phase"]] for r in sweep)  # fixed per sweep
    for r in paper + sweep:
        assert set(r) == ROW_KEYS and r["repeats"] == 2
        assert 0 < r["seconds_min"] <= r["seconds_per_batch"]
        assert r["sequences_per_second"] == pytest.approx(r["batch_size"] / r["seconds_per_batch"])
        assert r["ms_per_sequence"] == pytest.approx(1000 * r["seconds_per_batch"] / r["batch_size"])
        assert r["peak_mb"] >= 0 and r["mb_per_sequence"] == pytest.approx(r["peak_mb"] / r["batch_size"])
        assert r["peak_total_mb"] is None  # CUDA only
    pairs = {(b, p) for b in backbones for p in bench.PHASES}
    assert {(e["backbone"], e["phase"]) for e in saved["exponents"]} == pairs
    for e in saved["exponents"]:
        part = [r for r in sweep if (r["backbone"], r["phase"]) == (e["backbone"], e["phase"])]
        assert e["time_fit"] == pytest.approx(math.log(part[1]["seconds_per_batch"] / part[0]["seconds_per_batch"])
                                              / math.log(4))  # fmt: skip

    tables = paths["markdown"].read_text()
    assert tables in capsys.readouterr().out
    for heading in ("Papers' setting: L=5, batch 6", "Table 3", "training batch 2, inference batch 3", "exponents"):
        assert heading in tables
    assert "| sasrec | 123 | 7.58 | 1.00 | 1.00 |" in tables and "| sigma | 68 | 2.89 | 0.55 | 0.38 |" in tables
    assert tables.count("| sigma | train | 2 |") == 1 and tables.count("| sasrec | inference |") == 2
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    paths["plot"].unlink()
    again = bench.main(["--from-json", str(paths["json"]), "--markdown", str(tmp_path / "again.md"),
                        "--plot", str(paths["plot"])])  # fmt: skip
    assert again == saved and (tmp_path / "again.md").read_text() == tables and paths["plot"].exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(SystemExit, match="sees no GPU"):
        bench.main(["--device", "cuda", *TINY])
