"""benchmarks/bench_efficiency.py, which notebooks/compare.ipynb plots: its memory reading sees what
a step allocates, and every backbone is built from its recipe for each length."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_efficiency as bench  # noqa: E402

linux_only = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads Linux's VmHWM")


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


@linux_only
def test_rows_cover_every_length_and_memory_grows_with_it():
    rows = bench.run(["sasrec"], lengths=(64, 8), batch_size=16, num_items=200, steps=1, hidden_size=16)
    assert [r["max_seq_len"] for r in rows] == [8, 64]
    assert all(r["seconds_per_batch"] > 0 for r in rows)
    assert rows[1]["peak_mb"] > rows[0]["peak_mb"] > 0  # attention and activations grow with L
    assert "| sasrec | 64 | 16 |" in bench.format_table(rows)
