"""Atomic writes of torch files (checkpoints, the data cache): readers, and a run resumed after
`kill -9`, see the old file or the new one, never part of one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def atomic_torch_save(obj: Any, path: Path, tmp: Path) -> None:
    """torch.save into `tmp` (a fresh name in `path`'s folder), fsync, `os.replace` onto `path`,
    fsync the folder. `tmp` is removed if anything fails."""
    try:
        with open(tmp, "xb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
