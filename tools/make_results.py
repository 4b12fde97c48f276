"""Writes the results tables of README.md and docs/results.md from the result records in
docs/records, between marker lines `<!-- results:NAME -->` and `<!-- /results -->`:

    python tools/make_results.py           # rewrite the tables
    python tools/make_results.py --check   # exit status 1, naming the table, if one is out of date

A table cell is never typed by hand: change or add a record (`sigma reproduce ... --records
docs/records`), then run this. tests/test_results_docs.py fails while the documents and the records
disagree. Where a multi-seed result's per-seed values were not all kept, its mean and spread come
from docs/records/groups/ (docs/records/README.md).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from sigma_lightning.reproduce import command, duration

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "records"
DOCUMENTS = (ROOT / "README.md", ROOT / "docs" / "results.md")
METRICS = ("HR@10", "NDCG@10", "MRR@10")
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)

# The SIGMA paper (Liu et al. 2024, arXiv 2408.11451), Table 2: test HR/NDCG/MRR@10 of the bundled
# recipes' models on each data set (the paper's protocol, docs/data.md).
TABLE2 = {
    "beauty": {"gru4rec": (0.0612, 0.0334, 0.0242), "sasrec": (0.0852, 0.0532, 0.0392), "mamba4rec": (0.0880, 0.0540, 0.0436),
               "echomamba4rec": (0.0903, 0.0567, 0.0447), "sigma": (0.0986, 0.0604, 0.0488)},
    "sports": {"gru4rec": (0.0523, 0.0486, 0.0453), "sasrec": (0.0721, 0.0546, 0.0513), "mamba4rec": (0.0676, 0.0563, 0.0527),
               "echomamba4rec": (0.0689, 0.0569, 0.0534), "sigma": (0.0735, 0.0590, 0.0556)},
    "games": {"gru4rec": (0.1484, 0.0964, 0.0735), "sasrec": (0.1592, 0.1002, 0.0794), "mamba4rec": (0.1564, 0.1050, 0.0894),
              "echomamba4rec": (0.1578, 0.1044, 0.0887), "sigma": (0.1627, 0.1088, 0.0924)},
    "yelp": {"gru4rec": (0.0441, 0.0296, 0.0218), "sasrec": (0.0551, 0.0354, 0.0297), "mamba4rec": (0.0552, 0.0344, 0.0290),
             "echomamba4rec": (0.0578, 0.0389, 0.0302), "sigma": (0.0629, 0.0412, 0.0346)},
    "ml-1m": {"gru4rec": (0.2944, 0.1652, 0.1252), "sasrec": (0.2998, 0.1692, 0.1279), "mamba4rec": (0.3253, 0.1868, 0.1413),
              "echomamba4rec": (0.3239, 0.1848, 0.1429), "sigma": (0.3308, 0.1906, 0.1479)},
}  # fmt: skip
PAPER = {f"{data}/{model}": row for data, models in TABLE2.items() for model, row in models.items()}
# Table 4: Beauty, the full model and each variant without one component.
TABLE4 = {
    "full": (0.0986, 0.0604, 0.0488), "noflip": (0.0953, 0.0586, 0.0473),
    "nogate": (0.0954, 0.0571, 0.0455), "nogru": (0.0750, 0.0470, 0.0382),
}  # fmt: skip

# (label, recipe, tag) of each table's rows; a row holds every record (one per seed) of its recipe and tag.
BEAUTY = [
    ("GRU4Rec", "beauty/gru4rec", None), ("SASRec", "beauty/sasrec", None),
    ("SASRec, uniformly shuffled batches", "beauty/sasrec", "uniform"),
    ("SASRec, bf16-mixed precision", "beauty/sasrec", "bf16"),
    ("Mamba4Rec", "beauty/mamba4rec", None), ("EchoMamba4Rec", "beauty/echomamba4rec", None),
    ("SIGMA (default: with the one-layer residual)", "beauty/sigma", "residual"),
    ("SIGMA, Mamba's init", "beauty/sigma", "residual-mambainit"),
    ("SIGMA, the authors' one-layer rule (no residual)", "beauty/sigma", "authors-rule"),
]  # fmt: skip
HEADLINE = [row for row in BEAUTY if row[2] in (None, "residual", "authors-rule")]
ABLATIONS = [  # (label, recipe, tag, the full model's tag, Table 4 key)
    ("with the residual (default): full model", "beauty/sigma", "residual", "residual", "full"),
    ("without partial flip", "beauty/sigma", "residual-noflip", "residual", "noflip"),
    ("without DS gate", "beauty/sigma", "residual-nogate", "residual", "nogate"),
    ("without FE-GRU", "beauty/sigma", "residual-nogru", "residual", "nogru"),
    ("authors' structure (no residual): full model", "beauty/sigma", "authors-rule", "authors-rule", "full"),
    ("without DS gate", "beauty/sigma", "authors-rule-nogate", "authors-rule", "nogate"),
    ("without FE-GRU", "beauty/sigma", "authors-rule-nogru", "authors-rule", "nogru"),
]  # fmt: skip
ML100K = [
    ("SASRec", "ml-100k/sasrec", None), ("GRU4Rec", "ml-100k/gru4rec", None),
    ("Mamba4Rec", "ml-100k/mamba4rec", None), ("EchoMamba4Rec", "ml-100k/echomamba4rec", None),
    ("SIGMA", "ml-100k/sigma", None),
]  # fmt: skip


@dataclass
class Result:
    """One recipe and tag over its seeds: per-metric test means (and spreads over seeds, None for
    one seed) and history-masked means, from the records or, where they lack values, their group."""

    records: list[dict]
    test: tuple[float, ...]
    spread: tuple[float, ...] | None
    masked: tuple[float, ...]


def load(records: Path = RECORDS) -> tuple[list[dict], dict]:
    """The result records of `records` and its groups, keyed by (recipe, tag)."""
    runs = [json.loads(p.read_text()) for p in sorted(records.glob("*.json"))]
    groups = {}
    for path in sorted((records / "groups").glob("*.json")):
        group = json.loads(path.read_text())
        groups[(group["recipe"], group["tag"])] = group
    return runs, groups


def values(rows: list[dict | None], metric: str) -> list[float] | None:
    """The metric of every row, or None if any row lacks it."""
    found = [None if row is None else row.get(metric) for row in rows]
    return None if None in found else found


def result(runs: list[dict], groups: dict, recipe: str, tag: str | None) -> Result:
    records = sorted((r for r in runs if (r["recipe"], r["tag"]) == (recipe, tag)), key=lambda r: r["seed"])
    if not records:
        raise SystemExit(f"make_results: no record of {recipe} tag {tag} in {RECORDS}: add it or drop the row")
    group = groups.get((recipe, tag), {})
    test, spread, masked = [], [], []
    for m in METRICS:
        tested = values([r["test"] for r in records], m)
        hidden = values([r.get("test_history_masked") for r in records], m)
        test.append(statistics.mean(tested) if tested else from_group(group, "test_mean", m, recipe, tag))
        if len(records) > 1:
            spread.append(statistics.stdev(tested) if tested else from_group(group, "test_sd", m, recipe, tag))
        masked.append(statistics.mean(hidden) if hidden else from_group(group, "test_history_masked_mean", m, recipe, tag))
    return Result(records, tuple(test), tuple(spread) if spread else None, tuple(masked))


def from_group(group: dict, field: str, metric: str, recipe: str, tag: str | None) -> float:
    if metric not in group.get(field, {}):
        raise SystemExit(f"make_results: {recipe} tag {tag}: a record lacks {metric} and no group file gives its {field}")
    return group[field][metric]


def num(value: float) -> str:
    """0.0803 -> .0803 (the tables' style)."""
    return f"{value:.4f}".replace("0.", ".", 1)


def triple(means: tuple[float, ...], spread: tuple[float, ...] | None = None) -> str:
    spreads = spread or (None,) * len(means)
    return " / ".join(num(v) + (f" ± {num(s)}" if s is not None else "") for v, s in zip(means, spreads))


def change(ours: tuple[float, ...], reference: tuple[float, ...], digits: int = 0) -> str:
    return " / ".join(f"{100 * (a / b - 1):+.{digits}f}%" for a, b in zip(ours, reference))


def span(numbers: list) -> str:
    """One number, or the range of several."""
    return str(numbers[0]) if len(numbers) == 1 else f"{min(numbers)}-{max(numbers)}"


def epochs(res: Result) -> str:
    return f"{span([r['epochs'] for r in res.records])} ({span([best_epoch(r) for r in res.records])})"


def best_epoch(record: dict) -> int:
    """The record's best epoch: its own field, else read from the best checkpoint's name."""
    if record.get("best_epoch") is not None:
        return record["best_epoch"]
    return int(re.search(r"epoch(\d+)", Path(record["best_checkpoint"]).name).group(1))


def validation(res: Result) -> str:
    scores = [r["best_val_ndcg10"] for r in res.records]
    if len(scores) == 1:
        return num(scores[0])
    return f"{num(min(scores))}-{num(max(scores))} (mean {num(statistics.mean(scores))})"


def device(record: dict) -> str:
    """"CPU" or the GPU's model ("H100"), read from the record's machine."""
    gpu = re.search(r"NVIDIA (?:GeForce )?([A-Z]\w*)", record["machine"])
    return gpu.group(1) if gpu else "CPU"


def devices(res: Result) -> str:
    return ", ".join(dict.fromkeys(device(r) for r in res.records))


def wall_times(res: Result) -> str:
    times = [duration(r["wall_time_s"]) if r.get("wall_time_s") is not None else r["wall_time_as_printed"] for r in res.records]
    return ", ".join(times)


def seeds(res: Result) -> str:
    return span([r["seed"] for r in res.records])


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def readme_block(runs: list[dict], groups: dict) -> str:
    rows = []
    for label, recipe, tag in HEADLINE:
        res = result(runs, groups, recipe, tag)
        rows.append([label + (f", seeds {seeds(res)}" if len(res.records) > 1 else ""), triple(res.test, res.spread),
                     triple(res.masked), triple(PAPER[recipe])])  # fmt: skip
    return table(["model", "ours", "ours, history masked", "paper (Table 2)"], rows)


def beauty_block(runs: list[dict], groups: dict) -> str:
    rows = []
    for label, recipe, tag in BEAUTY:
        res = result(runs, groups, recipe, tag)
        rows.append([label, seeds(res), epochs(res), validation(res), triple(res.test, res.spread), triple(res.masked),
                     triple(PAPER[recipe]), devices(res), wall_times(res)])  # fmt: skip
    header = ["model", "seeds", "epochs (best)", "best val NDCG@10", "test HR@10 / NDCG@10 / MRR@10", "history masked",
              "paper (Table 2)", "device", "wall time"]  # fmt: skip
    return table(header, rows)


def vs_paper_block(runs: list[dict], groups: dict) -> str:
    rows = []
    for label, recipe, tag in HEADLINE:
        res = result(runs, groups, recipe, tag)
        rows.append([label, change(res.test, PAPER[recipe]), change(res.masked, PAPER[recipe])])
    return table(["model", "protocol (history not masked)", "history masked"], rows)


def ablation_block(runs: list[dict], groups: dict) -> str:
    rows = []
    for label, recipe, tag, full_tag, key in ABLATIONS:
        res, full = result(runs, groups, recipe, tag), result(runs, groups, recipe, full_tag)
        versus = "" if tag == full_tag else change(res.test, full.test, 1)
        if versus and full.spread:  # in the full model's seed standard deviations
            versus += " (" + " / ".join(f"{(a - b) / s:+.1f}" for a, b, s in zip(res.test, full.test, full.spread)) + " sd)"
        paper = "" if key == "full" else change(TABLE4[key], TABLE4["full"])
        rows.append([label, seeds(res), epochs(res), validation(res), triple(res.test, res.spread), versus,
                     triple(res.masked), triple(TABLE4[key]), paper])  # fmt: skip
    header = ["SIGMA variant", "seeds", "epochs (best)", "best val NDCG@10", "test HR@10 / NDCG@10 / MRR@10",
              "vs its full model", "history masked", "paper (Table 4)", "paper vs its full model"]  # fmt: skip
    return table(header, rows)


def ml100k_block(runs: list[dict], groups: dict) -> str:
    rows, sasrec = [], result(runs, groups, "ml-100k/sasrec", None)
    for label, recipe, tag in ML100K:
        res = result(runs, groups, recipe, tag)
        versus = "" if recipe == "ml-100k/sasrec" else change(res.test, sasrec.test)
        rows.append([label, seeds(res), epochs(res), validation(res), triple(res.test, res.spread), versus,
                     triple(res.masked), devices(res), wall_times(res)])  # fmt: skip
    header = ["model", "seeds", "epochs (best)", "best val NDCG@10", "test HR@10 / NDCG@10 / MRR@10", "vs SASRec",
              "history masked", "device", "wall time"]  # fmt: skip
    return table(header, rows)


def runs_block(runs: list[dict], groups: dict) -> str:
    """Each cited run's command, under the machine it ran on."""
    cited = {(recipe, tag) for rows in (BEAUTY, ABLATIONS, ML100K) for _, recipe, tag, *_ in rows}
    by_machine: dict[str, list[str]] = {}
    for r in runs:
        if (r["recipe"], r["tag"]) in cited:
            by_machine.setdefault(r["machine"], []).append(f"  - `{r['name']}`: `{command(r)}`")
    return "".join(f"- {machine}:\n" + "\n".join(lines) + "\n" for machine, lines in by_machine.items())


def papers_block(runs: list[dict], groups: dict) -> str:
    """The papers' Table 2 for the bundled recipes' models, and Table 4."""
    models = list(TABLE2["beauty"])
    rows = [[data] + [triple(TABLE2[data][m]) for m in models] for data in TABLE2]
    table2 = table(["Table 2 (HR@10 / NDCG@10 / MRR@10)", *models], rows)
    names = {"full": "SIGMA", "noflip": "without partial flipping", "nogate": "without DS gate", "nogru": "without FE-GRU"}
    table4 = table(["Table 4 (Beauty)", "HR@10 / NDCG@10 / MRR@10"], [[names[k], triple(v)] for k, v in TABLE4.items()])
    return table2 + "\n" + table4


BLOCKS = {
    "readme": readme_block, "beauty": beauty_block, "vs-paper": vs_paper_block, "ablations": ablation_block,
    "ml-100k": ml100k_block, "runs": runs_block, "papers": papers_block,
}  # fmt: skip


def generated(text: str, runs: list[dict], groups: dict) -> str:
    """`text` with every marked block replaced by what the records give."""

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise SystemExit(f"make_results: unknown block <!-- results:{name} --> (known: {', '.join(BLOCKS)})")
        return match[1] + BLOCKS[name](runs, groups) + match[4]

    return BLOCK.sub(fill, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a document is out of date")
    args = parser.parse_args()
    runs, groups = load()
    stale = []
    for path in DOCUMENTS:
        text = path.read_text()
        new = generated(text, runs, groups)
        if new != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        sys.exit(f"make_results: out of date: {', '.join(map(str, stale))} (run python tools/make_results.py)")
    print(("rewrote " if stale else "up to date: ") + ", ".join(map(str, stale or [p.relative_to(ROOT) for p in DOCUMENTS])))


if __name__ == "__main__":
    main()
