"""Shared fixtures. Keep this small: part-specific fixtures live in each folder's conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
"""Read-only real data sets beside the repository root (absent in CI: tests using them skip)."""


@pytest.fixture
def shared_data() -> Path:
    """The ``../shared/data`` folder; skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA}")
    return SHARED_DATA
