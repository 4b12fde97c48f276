"""keep_freed_memory: a freed large tensor's memory is reused by the next allocation (no page
faults), and SIGMA_LIGHTNING_MALLOC=default leaves malloc alone. Run in subprocesses: the setting
is process-wide."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

# Allocates and frees a 64 MB tensor, then counts the minor page faults of a second one.
PROBE = """
import resource, sys, torch
from sigma_lightning.cpu_memory import keep_freed_memory
took = keep_freed_memory()
x = torch.ones(16 * 1024 * 1024); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
y = torch.ones(16 * 1024 * 1024)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(int(took), faults)
"""
PAGES = 64 * 1024 * 1024 // 4096


def probe(malloc_setting: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("SIGMA_LIGHTNING_MALLOC", "THP_MEM_ALLOC_ENABLE")}
    if malloc_setting is not None:
        env["SIGMA_LIGHTNING_MALLOC"] = malloc_setting
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    took, faults = out.stdout.split()
    return bool(int(took)), int(faults)


def test_freed_memory_is_reused_without_page_faults():
    took, faults = probe(None)
    assert took
    assert faults < PAGES // 10, f"{faults} page faults for a reallocated 64 MB tensor ({PAGES} pages)"


def test_default_setting_leaves_malloc_alone():
    took, faults = probe("default")
    assert not took
    assert faults > PAGES // 2  # glibc unmapped the freed block: every page faults again


def test_sigma_command_keeps_freed_memory(monkeypatch):
    import sigma_lightning.cli as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True))
    monkeypatch.setattr(cli, "run_sigma", lambda args: None)
    cli.main(["fit"])
    assert calls == [True]
