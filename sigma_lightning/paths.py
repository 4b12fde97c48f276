"""The one rule for where the package keeps files of its own between runs.

Every cache (built C kernels, preprocessed data) lives under `cache_root()`:
$SIGMA_LIGHTNING_CACHE if set, else $XDG_CACHE_HOME/sigma_lightning, else ~/.cache/sigma_lightning.
Each kind of cache has its own sub-folder (`cache_root() / "kernels"`, `cache_root() / "data"`).
The variable is read when a cache is first needed, not at import.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SIGMA_LIGHTNING_CACHE"


def cache_root() -> Path:
    """The root of every cache of the package (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sigma_lightning"


def cache_dir(kind: str) -> Path:
    """The folder of one kind of cache, e.g. cache_dir("kernels") or cache_dir("data")."""
    return cache_root() / kind
