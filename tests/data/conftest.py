"""Fixtures for the data tests: small files written in tmp_path, a private cache folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """``write(name, text)`` writes ``text`` to ``tmp_path / name`` and returns the path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A cache folder inside tmp_path (tests never touch the user's real cache)."""
    return tmp_path / "cache"


@pytest.fixture
def two_users(write) -> Path:
    """Sequence file: user A = 1 2 3 4 5, user B = 6 7 8 (no filtering needed to split)."""
    return write("two.txt", "A 1 2 3 4 5\nB 6 7 8\n")
