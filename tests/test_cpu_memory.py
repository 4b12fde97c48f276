"""keep_freed_memory: a freed large tensor's memory is reused by the next allocation (no page
faults), and it is an explicit setting: the `sigma` command applies it (`--malloc keep`, its
default), `run_sigma` only when asked. The probes run in subprocesses: the setting is process-wide."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

import sigma_lightning.cli as cli
from tests.test_cli import tiny_args

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

# A training-like loop: each "step" allocates and frees three 64 MB tensors. After twenty warm-up
# steps, prints the mean minor page faults per step over the next ten. (A single reallocation is no
# test: posix_memalign's slack makes glibc place some same-size blocks anew until freed neighbours
# coalesce; the loop's steady state is what training sees.)
PROBE = """
import resource, sys, torch
from sigma_lightning.cpu_memory import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else False
def step():
    a = torch.ones(16 * 1024 * 1024); b = a * 2; c = b + a
    return float(c[0])
for _ in range(20):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(int(took), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""
PAGES = 64 * 1024 * 1024 // 4096


def probe(malloc: str) -> tuple[bool, float]:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", PROBE, malloc], env=env, capture_output=True, text=True, check=True)
    took, faults = out.stdout.split()
    return bool(int(took)), float(faults)


@glibc_only
@pytest.mark.slow
def test_kept_memory_is_reused_without_the_page_faults_malloc_pays_by_default():
    took, faults = probe("keep")
    assert took
    assert faults < PAGES / 2, f"{faults} page faults per step of three 64 MB tensors ({PAGES} pages each)"
    # the control: left alone, glibc unmaps each freed block and every page faults again, so the
    # probe can tell the two apart
    took, faults = probe("default")
    assert not took and faults > 2 * PAGES


@pytest.mark.parametrize(
    ("entry", "extra", "applied"),
    [
        ("main", [], 1),  # the sigma command: on by default
        ("main", ["--malloc", "default"], 0),
        ("run_sigma", [], 0),  # the Python API changes nothing process-wide unless asked
        ("run_sigma", ["--malloc", "keep"], 1),
    ],
)
def test_the_malloc_setting_is_applied_only_where_it_says(tmp_path, monkeypatch, entry, extra, applied):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True))
    getattr(cli, entry)(tiny_args(tmp_path, "fit", "--trainer.max_epochs", "0", *extra))
    assert len(calls) == applied


def test_the_sigma_command_shows_the_malloc_setting(capsys):
    with pytest.raises(SystemExit):
        cli.main(["fit", "--config", "quickstart.yaml", "--print_config"])
    assert "\nmalloc: keep\n" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.run_sigma(["fit", "--config", "quickstart.yaml", "--print_config"])
    assert "\nmalloc: default\n" in capsys.readouterr().out
