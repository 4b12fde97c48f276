"""Checkpoints written atomically with a content checksum, and verified before they are used.

Lightning writes a checkpoint through the strategy's `CheckpointIO`. Its default one stages the
bytes in the system temporary folder and moves them into place without fsync: across file systems
(a local /tmp, checkpoints on a network disk) the move is a copy, so a killed job can leave half a
`last.ckpt`; and `torch.load` checks no content, so flipped bytes in a weight load silently.
`AtomicCheckpointIO` writes a temporary beside the target, fsyncs it and renames it into place, and
stores a sha256 of the checkpoint's tensors in it; `read_checkpoint` turns every way a file can be
unusable (missing, a folder, empty, unreadable, truncated, not a checkpoint, holding pickled code,
altered after it was written) into one `CheckpointError` saying what the file is and what was
expected. `check_fits` compares a checkpoint with the model it is loaded into (item catalogue,
backbone, non-finite weights). Checkpoints are always read with `weights_only=True`: no code runs.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import secrets
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor, nn

from sigma_lightning.atomic import atomic_torch_save
from sigma_lightning.errors import CheckpointError

CHECKSUM_KEY = "sigma_lightning_checksum"
"""Top-level key holding the sha256 (hex) of everything else in the checkpoint."""
TEMP_SUFFIX = ".tmp"


# ---- content checksum ----------------------------------------------------------------------
def _tensors(value: Any, name: str = "") -> Iterator[tuple[str, Tensor]]:
    """Every tensor of a nested checkpoint with its path, in stored order (torch.save keeps dict
    order, so the same walk after loading visits the same tensors)."""
    if isinstance(value, Tensor):
        yield name, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(item, f"{name}/{key!r}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{name}[{i}]")


def content_digest(checkpoint: Mapping[str, Any]) -> str:
    """sha256 over every tensor of the checkpoint (weights, optimizer and RNG states: nearly all of
    its bytes): name, dtype, shape and bytes. Plain values (hyperparameters, loop counters) are left
    out, so a checkpoint's settings can still be edited with torch.load and torch.save."""
    digest = hashlib.sha256()
    for name, tensor in _tensors({k: v for k, v in checkpoint.items() if k != CHECKSUM_KEY}):
        flat = tensor.detach().cpu().contiguous().reshape(-1)  # (n,) any dtype
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


# ---- writing -------------------------------------------------------------------------------
def atomic_save(checkpoint: Mapping[str, Any], path: Path) -> None:
    """torch.save into a temporary in the target's folder, fsync, `os.replace`, fsync the folder:
    readers (and a resume after `kill -9`) see the old file or the new one, never part of one.
    Temporaries of this target left by a killed write are removed first (one run writes a given
    checkpoint file from one process, one write at a time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    atomic_torch_save(checkpoint, path, tmp)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's CheckpointIO with atomic, checksummed writes and verified reads. The CLI installs
    it; in Python pass `Trainer(plugins=[AtomicCheckpointIO()])`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_save({**checkpoint, CHECKSUM_KEY: content_digest(checkpoint)}, Path(path))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(Path(path), map_location=map_location, weights_only=weights_only is not False)


# ---- reading -------------------------------------------------------------------------------
def _head(path: Path) -> str:
    """The file's first bytes, for a message that says what the file looks like (never kilobytes)."""
    with open(path, "rb") as fh:
        return repr(fh.read(16))


def _first_sentence(error: Exception) -> str:
    return str(error).split(". ")[0].splitlines()[0][:160] if str(error) else type(error).__name__


def _unloadable(path: Path, error: Exception) -> CheckpointError:
    """The CheckpointError for a file torch.load refused."""
    size = path.stat().st_size
    if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in str(error):
        blocked = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), "a Python object")
        return CheckpointError(
            f"{path} holds pickled Python code that loading would run ({blocked}); refused, nothing was run. "
            "A checkpoint of this package holds only tensors and plain values: use one written by `sigma fit`."
        )
    if zipfile.is_zipfile(path) or _head(path).startswith("b'PK"):
        return CheckpointError(
            f"{path} is a damaged or truncated checkpoint ({size} bytes; torch.load: {_first_sentence(error)}). "
            "Use another checkpoint of the run (last.ckpt or best*.ckpt), or retrain."
        )
    return CheckpointError(
        f"{path} is not a PyTorch checkpoint ({size} bytes, starting {_head(path)}); expected a .ckpt file "
        "written by `sigma fit`."
    )


def _open_checkpoint(path: Path, map_location: Any, weights_only: bool) -> Any:
    """torch.load with every failure mode turned into a CheckpointError naming the file."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such file.")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; expected a .ckpt file written by `sigma fit`.")
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(
                f"checkpoint {path} is empty (0 bytes): its writer was killed or the copy failed. "
                "Use another checkpoint of the run, or retrain."
            )
        return torch.load(path, map_location=map_location if map_location is not None else "cpu",
                          weights_only=weights_only)
    except PermissionError as error:
        raise CheckpointError(f"checkpoint {path} cannot be read ({error.strerror}); fix its permissions.") from None
    except CheckpointError:
        raise
    except Exception as error:  # any other failure of torch.load means the bytes are not a usable checkpoint
        raise _unloadable(path, error) from None


def read_checkpoint(path: Path, map_location: Any = None, weights_only: bool = True) -> dict[str, Any]:
    """The checkpoint at `path`, verified: a Lightning checkpoint dict with a `state_dict` and, when it
    carries one, a matching content checksum. Raises CheckpointError otherwise."""
    checkpoint = _open_checkpoint(Path(path), map_location, weights_only)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        keys = sorted(map(str, checkpoint))[:6] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path} is a PyTorch file but not a Lightning checkpoint (it holds {keys}; expected a dict with "
            "'state_dict'). Use a .ckpt file written by `sigma fit`."
        )
    stored = checkpoint.get(CHECKSUM_KEY)
    if stored is not None and stored != content_digest(checkpoint):
        raise CheckpointError(
            f"{path} was altered after it was written: its tensors do not match their checksum (damaged on "
            "disk or in a copy). Use another checkpoint of the run, or copy it again."
        )
    return checkpoint


def usable_checkpoint(path: Path, fall_back: bool) -> Path:
    """`path` if it reads as a good checkpoint; else, with `fall_back`, the newest intact checkpoint
    in the same folder, named in one warning; else the CheckpointError of `path`."""
    try:
        read_checkpoint(path)
        return path
    except CheckpointError as error:
        if not fall_back:
            raise
        problem = error
    others = sorted((p for p in path.parent.glob("*.ckpt") if p != path), key=_mtime, reverse=True)
    for candidate in others:
        try:
            epoch = read_checkpoint(candidate).get("epoch")
        except CheckpointError:
            continue
        warnings.warn(f"{problem} Falling back to {candidate} (epoch {epoch}), the newest intact checkpoint "
                      "in that folder.", stacklevel=2)
        return candidate
    raise CheckpointError(f"{problem} No other intact checkpoint in {path.parent} to fall back to.")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("-inf")


# ---- fitting a model -----------------------------------------------------------------------
def non_finite(state_dict: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf, with how many values do."""
    bad = []
    for name, value in state_dict.items():
        if isinstance(value, Tensor) and value.is_floating_point():
            count = int((~torch.isfinite(value)).sum())
            if count:
                bad.append(f"{name} ({count} of {value.numel()} values)")
    return bad


def _backbone_class(checkpoint: Mapping[str, Any]) -> str:
    backbone = (checkpoint.get("hyper_parameters") or {}).get("backbone")
    if not isinstance(backbone, Mapping) or "class_path" not in backbone:
        return "unrecorded"
    return str(backbone["class_path"]).rsplit(".", 1)[-1]


def _shape_message(key: str, saved: tuple, wanted: tuple) -> str:
    if key.endswith("item_embedding.weight") and saved[1:] == wanted[1:]:
        return f"it was trained on {saved[0] - 1} items, this data has {wanted[0] - 1} items (another item catalogue)"
    return f"{key} has shape {list(saved)} in the checkpoint, {list(wanted)} in the model"


def check_fits(path: Path, checkpoint: Mapping[str, Any], module: nn.Module) -> None:
    """Raise CheckpointError unless the checkpoint's weights load into `module` as they are: same
    parameter names (same backbone), same shapes (same item catalogue and sizes), all finite."""
    saved, wanted = checkpoint["state_dict"], module.state_dict()
    configured_backbone = type(getattr(module, "backbone", module)).__name__
    missing, unexpected = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} holds a {_backbone_class(checkpoint)} backbone, the model configured is {configured_backbone}: "
            f"{len(missing)} weights missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. "
            f"{unexpected[:2]}). Use the checkpoint's backbone settings (drop --model_from_config) or another checkpoint."
        )
    shapes = [_shape_message(k, tuple(saved[k].shape), tuple(v.shape)) for k, v in wanted.items()
              if isinstance(saved[k], Tensor) and tuple(saved[k].shape) != tuple(v.shape)]  # fmt: skip
    if shapes:
        raise CheckpointError(f"{path} does not fit this model: {'; '.join(shapes[:3])}. Use this data's checkpoint.")
    bad = non_finite(saved)
    if bad:
        raise CheckpointError(
            f"{path} holds non-finite weights (NaN or inf in {', '.join(bad[:3])}): the run it came from diverged. "
            "Use an earlier checkpoint, or retrain with a lower learning rate."
        )

