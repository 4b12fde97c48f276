"""Every command in README.md's ```bash blocks is run here, in README order in one fresh folder, on
tiny settings; its ```python blocks too. A command that needs something these machines lack says
so in its inline comment, and CI runs the rest:

    sigma ...              run in this process through the `sigma` entry point (main), with TINY
                           appended (later settings win: one epoch, small batches, tiny synthetic
                           data); `sigma reproduce ... -- ARGS` gets TINY after ARGS, a help
                           command nothing
    tensorboard --logdir D run with --inspect (prints the event files' digest and exits)
    python -m ...          run in a subprocess
    `# ... (CI)`           the line's commands are .ci/run's (checked here part by part, `-q` and
                           extras aside): the install and the whole test suite
    `# needs ...`          skipped here, with the rest of the comment as the reason (kept short)

Files the commands read are made by make_fixtures: a small Beauty.txt in the data set's sequence
format, the same interactions as the raw file of the named set amazon-beauty (so a recipe finds it
instead of downloading it), and a file of new histories; downloads themselves are tested against a
local server in tests/data.
"""

from __future__ import annotations

import gzip
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sigma_lightning import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TINY = [
    "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--data.batch_size", "64",
    "--data.synthetic.num_users", "150", "--data.synthetic.num_items", "40", "--data.synthetic.max_length", "12",
]  # fmt: skip
SETUP = ("python3 -m venv", ". .venv/bin/activate", "pip install")
MOST_SKIPPED = 3  # a README whose commands mostly cannot be run here would test nothing


@dataclass
class Line:
    number: int  # in README.md
    code: str
    comment: str

    @property
    def skip_reason(self) -> str | None:
        return self.comment if self.comment.startswith("needs ") else None

    @property
    def by_ci(self) -> bool:
        return self.comment.endswith("(CI)")


def readme_blocks(language: str) -> list[list[Line]]:
    """The ```<language> blocks of README.md; for bash, one Line per command (comment lines and
    blank lines left out, the inline `  # comment` split off)."""
    blocks, current, number = [], None, 0
    for number, text in enumerate(README.read_text().splitlines(), 1):
        if current is None and text.strip() == f"```{language}":
            current = []
        elif current is not None and text.strip() == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(Line(number, text, ""))
    return blocks if language != "bash" else [commands(block) for block in blocks]


def commands(block: list[Line]) -> list[Line]:
    out = []
    for line in block:
        code, _, comment = line.code.partition(" #")
        if code.strip() and not code.lstrip().startswith("#"):
            out.append(Line(line.number, code.strip(), comment.strip()))
    return out


def make_fixtures(folder: Path) -> None:
    """data/beauty/Beauty.txt (`user item item ...`, 300 users, 60 items), the same interactions as
    the named set amazon-beauty's raw file in data-sets/ (what the recipes download), so the runs of
    either route share one catalogue, and new_histories.csv."""
    rng = np.random.default_rng(0)
    histories = {u: rng.integers(1, 61, rng.integers(6, 16)).tolist() for u in range(1, 301)}
    (folder / "data" / "beauty").mkdir(parents=True)
    lines = [" ".join(map(str, [u, *items])) for u, items in histories.items()]
    (folder / "data" / "beauty" / "Beauty.txt").write_text("\n".join(lines) + "\n")
    reviews = [
        json.dumps({"reviewerID": str(u), "asin": str(item), "unixReviewTime": 1_400_000_000 + 86_400 * t})
        for u, items in histories.items()
        for t, item in enumerate(items)
    ]
    (folder / "data-sets" / "amazon-beauty").mkdir(parents=True)
    (folder / "data-sets" / "amazon-beauty" / "reviews_Beauty_5.json.gz").write_bytes(
        gzip.compress(("\n".join(reviews) + "\n").encode())
    )
    rows = ["user,item,time"] + [f"new{u},{i},{t}" for u in range(5) for t, i in enumerate(rng.integers(1, 61, 4))]
    (folder / "new_histories.csv").write_text("\n".join(rows) + "\n")


def run_part(words: list[str], where: str) -> None:
    if words[0] == "sigma":
        argv = words[1:]
        shows_help = any(word == "--help" or word.endswith(".help") for word in argv)  # runs nothing
        if not shows_help and (argv[:1] != ["reproduce"] or "--" in argv):
            argv = argv + TINY
        try:
            cli.main(argv)
        except SystemExit as stop:  # --help, --print_config
            assert stop.code in (0, None), f"{where}: exit status {stop.code}"
    elif words[0] == "tensorboard":
        logdir = Path(words[words.index("--logdir") + 1])
        assert list(logdir.rglob("events.out.tfevents.*")), f"{where}: no TensorBoard events under {logdir}"
        done = subprocess.run([*words, "--inspect"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{where}: {done.stderr[-2000:]}"
    elif words[:2] == ["python", "-m"]:
        done = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{where}: {done.stderr[-2000:]}"
    else:
        raise AssertionError(f"{where}: no rule to run {shlex.join(words)!r}: add one to this test")


def ci_parts() -> set[str]:
    text = (ROOT / ".ci" / "run").read_text()
    line = next(line for line in text.splitlines() if "pytest" in line)
    return {normal(part) for part in line.split("&&")}


def normal(part: str) -> str:
    """A command as CI's: quiet flags and extras aside (CI installs [test], a user the package)."""
    words = [w for w in shlex.split(part) if w != "-q"]
    return shlex.join(re.sub(r"\[[^]]*\]$", "", w) if w.startswith(".") else w for w in words)


def test_the_readme_parses_into_runnable_commands():
    lines = [line for block in readme_blocks("bash") for line in block]
    assert len(lines) >= 10
    skipped = [line for line in lines if line.skip_reason]
    assert len(skipped) <= MOST_SKIPPED, [f"README.md:{line.number}" for line in skipped]
    for line in lines:
        for part in line.code.split("&&"):
            words = shlex.split(part)
            assert words[0] in ("sigma", "tensorboard", "python", "python3", ".", "pip"), f"README.md:{line.number}"
            checked = line.by_ci or (part.strip().startswith(SETUP) and not line.skip_reason)
            if checked:  # a (CI) line is CI's throughout; elsewhere the install parts are
                assert normal(part) in ci_parts(), f"README.md:{line.number}: {part.strip()!r} is not what CI runs"


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIGMA_LIGHTNING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SIGMA_LIGHTNING_DATA", str(tmp_path / "data-sets"))  # the recipes' named sets
    make_fixtures(tmp_path)
    for block in readme_blocks("bash"):
        for line in block:
            if line.skip_reason or line.by_ci:
                continue
            for part in line.code.split("&&"):
                if not part.strip().startswith(SETUP):  # the install: CI's, checked above
                    run_part(shlex.split(part), f"README.md:{line.number}")
    run_python_blocks(monkeypatch)


def run_python_blocks(monkeypatch) -> None:
    """The ```python blocks, in one namespace, with run_sigma given TINY as `sigma` commands are."""
    real = cli.run_sigma
    monkeypatch.setattr(cli, "run_sigma", lambda args, **kw: real([*args, *TINY], **kw))
    namespace: dict = {}
    for block in readme_blocks("python"):
        source = "\n".join(line.code for line in block)
        exec(compile(source, f"README.md:{block[0].number}", "exec"), namespace)  # noqa: S102
