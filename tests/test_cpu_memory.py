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

# A training-like loop: each "step" allocates and frees three 64 MB tensors. After twenty warm-up
# steps, prints the mean minor page faults per step over the next ten. (A single reallocation is no
# test: posix_memalign's slack makes glibc place some same-size blocks anew until freed neighbours
# coalesce; the loop's steady state is what training sees.)
PROBE = """
import resource, torch
from sigma_lightning.cpu_memory import keep_freed_memory
took = keep_freed_memory()
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


def probe(malloc_setting: str | None) -> tuple[bool, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("SIGMA_LIGHTNING_MALLOC", "THP_MEM_ALLOC_ENABLE")}
    if malloc_setting is not None:
        env["SIGMA_LIGHTNING_MALLOC"] = malloc_setting
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    took, faults = out.stdout.split()
    return bool(int(took)), float(faults)


def test_freed_memory_is_reused_without_page_faults():
    took, faults = probe(None)
    assert took
    # Measured: 0 per step kept (0 to 4,900 after only five warm-up steps), 49,155 (every page of
    # all three tensors) by default.
    assert faults < PAGES / 2, f"{faults} page faults per step of three 64 MB tensors ({PAGES} pages each)"


def test_default_setting_leaves_malloc_alone():
    took, faults = probe("default")
    assert not took
    assert faults > 2 * PAGES  # glibc unmaps each freed block: every page faults again


def test_sigma_command_keeps_freed_memory(monkeypatch):
    import sigma_lightning.cli as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True))
    monkeypatch.setattr(cli, "run_sigma", lambda args: None)
    cli.main(["fit"])
    assert calls == [True]
