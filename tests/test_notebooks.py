"""The notebooks run as shipped, through a real Jupyter kernel (nbclient + ipykernel), on tiny
settings injected after their parameters cell (papermill's convention); and they are committed
without outputs."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook extras: pip install -e '.[notebooks]'")
nbclient = pytest.importorskip("nbclient", reason="the notebook extras: pip install -e '.[notebooks]'")
pytest.importorskip("matplotlib", reason="the notebook extras: pip install -e '.[notebooks]'")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TINY_DATA = [
    "--data.synthetic.num_users", "200", "--data.synthetic.num_items", "60", "--data.max_seq_len", "15",
    "--data.batch_size", "64", "--model.backbone.init_args.hidden_size", "16",
    "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


def parameters_cell(notebook) -> int:
    tagged = [i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "a notebook needs exactly one cell tagged `parameters`"
    return tagged[0]


def execute(name: str, parameters: dict, probe: str) -> tuple[object, dict]:
    """Run notebooks/`name` in a fresh kernel (cwd: notebooks/) with `parameters` assigned after its
    parameters cell, then `probe`, a cell that prints one JSON line; returns the executed
    notebook and that JSON."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    index = parameters_cell(notebook)
    declared = {t.id for node in ast.parse(notebook.cells[index].source).body if isinstance(node, ast.Assign)
                for t in node.targets}  # fmt: skip
    assert set(parameters) <= declared, f"{name} has no parameter {set(parameters) - declared}"
    injected = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
    notebook.cells.append(nbformat.v4.new_code_cell(probe))
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})  # fmt: skip
    client.execute(env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"})
    probe_output = "".join(o.get("text", "") for o in notebook.cells[-1].outputs if o.output_type == "stream")
    return notebook, json.loads(probe_output.strip().splitlines()[-1])


def images(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.outputs if o.output_type == "display_data")


def cell_with(notebook, text: str):
    return next(c for c in notebook.cells if c.cell_type == "code" and text in c.source)


QUICKSTART_PROBE = """
import json
print(json.dumps({
    "curves": {k: len(v) for k, v in curves.items()},
    "test": test_metrics, "user": str(user), "history": [str(i) for i in history],
    "top": top.select(pl.col("rank"), pl.col("item").cast(pl.String), pl.col("exclude_seen")).to_dicts(),
    "catalogue": [str(i) for i in data.item_ids[1:]], "run_dir": str(run_dir),
}))
"""


@pytest.mark.slow
def test_quickstart_trains_plots_its_curves_and_recommends_ten_unseen_items(tmp_path):
    settings = [*TINY_DATA, "--trainer.max_epochs", "2"]
    notebook, seen = execute("quickstart.ipynb", {"WORKDIR": str(tmp_path), "SETTINGS": settings}, QUICKSTART_PROBE)
    assert Path(seen["run_dir"]).is_relative_to(tmp_path)  # nothing written into the repository
    assert seen["curves"]["val/NDCG@10"] == 2 and seen["curves"]["train/loss_step"] >= 2  # one point an epoch
    assert images(cell_with(notebook, "EventAccumulator(")) == 1
    assert 0 <= seen["test"]["test/NDCG@10"] <= seen["test"]["test/HR@10"] <= 1
    top = seen["top"]
    assert [row["rank"] for row in top] == list(range(1, 11))
    items = [row["item"] for row in top]
    assert len(set(items)) == 10 and set(items) <= set(seen["catalogue"])  # the data's own item ids
    assert not set(items) & set(seen["history"]) and all(row["exclude_seen"] for row in top)


COMPARE_PROBE = """
import json
print(json.dumps({
    "accuracy": accuracy.to_dicts(), "groups": groups.to_dicts(), "efficiency": efficiency.to_dicts(),
    "users": tests[BACKBONES[0]].datamodule.num_users,
}))
"""


@pytest.mark.slow
def test_compare_tables_every_backbone_and_its_groups_add_up_to_the_test_metrics(tmp_path):
    backbones = ["sasrec", "gru4rec", "mamba4rec", "echomamba4rec", "sigma"]
    parameters = {
        "WORKDIR": str(tmp_path),
        "SETTINGS": [*TINY_DATA, "--trainer.max_epochs", "1", "--data.synthetic.max_length", "30"],
        "BENCHMARK": {"lengths": [8, 16], "batch_size": 8, "steps": 1, "num_items": 100, "hidden_size": 16},
    }
    notebook, seen = execute("compare.ipynb", parameters, COMPARE_PROBE)
    assert [row["backbone"] for row in seen["accuracy"]] == backbones
    for row in seen["accuracy"]:
        groups = [g for g in seen["groups"] if g["backbone"] == row["backbone"]]
        assert [g["group"] for g in groups] == ["<= 5", "6-20", "> 20"]
        assert sum(g["users"] for g in groups) == seen["users"]
        for metric in ("HR@10", "NDCG@10"):  # the bars are the same test, split by history length
            mean = sum(g[metric] * g["users"] for g in groups) / seen["users"]
            assert mean == pytest.approx(row[metric], abs=1e-5), (row["backbone"], metric)
    assert [(r["backbone"], r["max_seq_len"]) for r in seen["efficiency"]] == [(b, L) for b in backbones for L in (8, 16)]
    assert all(r["seconds_per_batch"] > 0 and r["peak_mb"] is not None for r in seen["efficiency"])
    assert images(cell_with(notebook, "grouped_metrics(")) == 1
    assert images(cell_with(notebook, "bench_efficiency.run(")) == 1


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    """Outputs (images, tables, timings of one machine) stay out of git: run the notebook, then
    clear its outputs (Jupyter's "Clear All Outputs", or `jupyter nbconvert --clear-output`)."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for number, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {number} has outputs"
    parameters_cell(notebook)
