"""The results tables of README.md and docs/results.md are what tools/make_results.py makes of the
records in docs/records: a number typed into a table, or a record changed without regenerating,
fails here. The records themselves are well-formed result records, every one is cited, and the
group files agree with the per-seed records wherever both give a value. Needs no data sets."""

import re
import statistics

import pytest

from sigma_lightning.reproduce import PAPER, run_name
from tools import make_results

RUNS, GROUPS = make_results.load()
DOCS = {"README.md": ["readme"], "docs/results.md": ["beauty", "vs-paper", "ablations", "ml-100k", "runs", "papers"]}


@pytest.mark.parametrize("document", DOCS)
def test_tables_are_what_the_records_give(document):
    text = (make_results.ROOT / document).read_text()
    assert [m["name"] for m in make_results.BLOCK.finditer(text)] == DOCS[document]
    assert make_results.generated(text, RUNS, GROUPS) == text, f"{document} is stale: run python tools/make_results.py"


def test_a_digit_typed_into_a_table_or_a_record_is_caught():
    text = (make_results.ROOT / "README.md").read_text()
    typed = text.replace(".0803 ± .0012", ".0813 ± .0012", 1)
    assert typed != text and make_results.generated(typed, RUNS, GROUPS) != typed
    changed = [dict(r, test=dict(r["test"], **{"HR@10": 0.0624})) if r["name"] == "beauty-gru4rec-s42" else r for r in RUNS]
    assert make_results.generated(text, changed, GROUPS) != text


def test_every_record_is_cited_and_is_a_result_record():
    commands = make_results.runs_block(RUNS, GROUPS)
    for r in RUNS:
        assert f"`{r['name']}`" in commands, f"{r['name']} is in no table"
        assert r["name"] == run_name(r["recipe"], r["seed"], r["tag"]) and r["status"] == "done"
        assert {"overrides", "command", "machine", "best_val_ndcg10", "test", "source"} <= set(r), r["name"]
        assert 0 <= make_results.best_epoch(r) < r["epochs"], r["name"]
        assert r.get("wall_time_s") is not None or r.get("wall_time_as_printed"), r["name"]
        if r.get("best_checkpoint"):  # a machine-written record: its best epoch is the checkpoint's
            assert f"epoch{r['best_epoch']:03d}" in r["best_checkpoint"]
            assert f"ndcg{r['best_val_ndcg10']:.4f}" in r["best_checkpoint"]


@pytest.mark.parametrize("key", sorted(GROUPS), ids=lambda k: f"{k[0]}-{k[1]}")
def test_a_group_agrees_with_its_records(key):
    """Where every seed's record gives a metric, the mean and spread the group file holds are that
    metric's mean and spread to the four printed decimals."""
    group, records = GROUPS[key], [r for r in RUNS if (r["recipe"], r["tag"]) == key]
    assert sorted(r["seed"] for r in records) == group["seeds"]
    checked = 0
    for field, part, stat in [("test_mean", "test", statistics.mean), ("test_sd", "test", statistics.stdev),
                              ("test_history_masked_mean", "test_history_masked", statistics.mean)]:  # fmt: skip
        for metric, printed in group[field].items():
            values = make_results.values([r.get(part) for r in records], metric)
            if values is not None:
                assert round(stat(values), 4) == pytest.approx(printed, abs=1e-9), (field, metric)
                checked += 1
    assert checked < 9, "every value is in the records: the group file is not needed"


def test_paper_numbers_agree_with_sigma_reproduce():
    for recipe, row in PAPER.items():
        assert make_results.PAPER[recipe] == row, recipe


def test_docs_name_no_files_outside_the_repository():
    owned = [make_results.ROOT / "docs" / "results.md", *sorted((make_results.ROOT / "docs").glob("notes/*.md"))]
    owned += sorted((make_results.ROOT / "docs" / "records").rglob("*.json"))
    for path in owned:
        assert "../shared" not in path.read_text(), path
        if path.suffix == ".md":  # user-facing pages: no project history
            assert not re.search(r"\bissue[- ]\d", path.read_text()), path


def test_check_mode_fails_on_a_stale_document(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "README.md"
    stale.write_text((make_results.ROOT / "README.md").read_text().replace(".0341", ".0342", 1))
    monkeypatch.setattr(make_results, "DOCUMENTS", (stale,))
    monkeypatch.setattr(make_results, "ROOT", tmp_path)
    monkeypatch.setattr("sys.argv", ["make_results.py", "--check"])
    with pytest.raises(SystemExit, match="out of date: README.md"):
        make_results.main()
    monkeypatch.setattr("sys.argv", ["make_results.py"])
    make_results.main()  # rewrites it
    assert make_results.generated(stale.read_text(), RUNS, GROUPS) == stale.read_text()
