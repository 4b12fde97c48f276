"""Checkpoints: atomic checksummed writes, and one CheckpointError for every kind of unusable file."""

from __future__ import annotations

import os
import shutil
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from sigma_lightning import checkpoints
from sigma_lightning.checkpoints import (
    CHECKSUM_KEY,
    AtomicCheckpointIO,
    atomic_save,
    content_digest,
    read_checkpoint,
    usable_checkpoint,
)
from sigma_lightning.errors import CheckpointError
from sigma_lightning.cli import run_sigma
from tests.test_cli import run, tiny_args

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run folder after `sigma fit` for 2 epochs on the tiny data: last.ckpt and one best*.ckpt."""
    root = tmp_path_factory.mktemp("trained")
    run(root, "fit", "--trainer.max_epochs", "2")
    return root / "runs" / "quickstart" / "version_0" / "checkpoints"


def copy_run(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run (same layout under tmp_path/runs), for tests that damage it."""
    folder = tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints"
    shutil.copytree(trained.parent, folder.parent)
    return folder


def sigma_error(tmp_path: Path, *args: str) -> str:
    """The one-line message of a `sigma` run that must fail."""
    with pytest.raises(SystemExit) as failed:
        run(tmp_path, *args)
    assert failed.value.code == 2
    message = str(failed.value)
    assert message.startswith("sigma: error: ") and "\n" not in message and len(message) < 600
    return message


# ---- writing ---------------------------------------------------------------------------------
def test_checkpoints_of_a_run_carry_a_checksum_of_their_contents(trained):
    for path in trained.glob("*.ckpt"):
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint[CHECKSUM_KEY] == content_digest(checkpoint)
        assert read_checkpoint(path)["state_dict"].keys() == checkpoint["state_dict"].keys()


def test_a_write_killed_midway_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    """torch.save dies after writing part of the new file: the target still holds the old one, and the
    temporary is gone. Written in place (Lightning's default on another file system), half a file."""
    target = tmp_path / "last.ckpt"
    atomic_save({"state_dict": {"w": torch.zeros(3)}}, target)
    real_save = torch.save

    def dies_midway(obj, file, *args, **kwargs):
        with open(file, "r+b") if isinstance(file, (str, Path)) else nullcontext(file) as fh:
            real_save({"state_dict": {"w": torch.ones(1000)}}, fh)
            fh.truncate(fh.tell() // 2)
        raise KeyboardInterrupt  # as a kill would stop it: not an Exception

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"state_dict": {"w": torch.ones(1000)}}, target)
    monkeypatch.undo()
    assert torch.equal(read_checkpoint(target)["state_dict"]["w"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_the_rename_is_within_the_folder_and_leftovers_of_killed_writes_go(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    leftover = tmp_path / ".last.ckpt.999999.0badf00d.tmp"  # of a write killed with -9
    leftover.write_bytes(b"PK\x03\x04 half")
    other = tmp_path / ".best.ckpt.999999.0badf00d.tmp"  # another file's: not this write's business
    other.write_bytes(b"x")
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((Path(src), Path(dst))), real_replace(src, dst)))
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, target)
    (src, dst), = renames
    assert dst == target and src.parent == target.parent  # same file system: an atomic rename, not a copy
    assert not leftover.exists() and other.exists()
    assert read_checkpoint(target)["epoch"] == 3


# ---- reading: each kind of unusable file gets one message -------------------------------------
def test_altered_bytes_inside_a_weight_are_caught_by_the_checksum(trained, tmp_path):
    """torch.load checks no content: a flipped byte in a tensor loads silently without the checksum."""
    path = tmp_path / "flipped.ckpt"
    shutil.copy(trained / "last.ckpt", path)
    weight = torch.load(path, weights_only=True)["state_dict"]["item_embedding.weight"]
    data = bytearray(path.read_bytes())
    offset = data.find(weight.numpy().tobytes())
    assert offset > 0
    data[offset + 17] ^= 0x40
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["state_dict"]["item_embedding.weight"], weight)
    with pytest.raises(CheckpointError, match="altered after it was written"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="altered"):  # Lightning's own loading goes through it too
        AtomicCheckpointIO().load_checkpoint(path)


def _empty(path: Path, good: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path, good: Path) -> None:
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])


def _folder(path: Path, good: Path) -> None:
    path.mkdir()


def _text(path: Path, good: Path) -> None:
    path.write_text("epoch,loss\n" + "0,1.5\n" * 5000)


def _bare_state_dict(path: Path, good: Path) -> None:
    torch.save(torch.load(good, weights_only=True)["state_dict"], path)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_empty, "is empty (0 bytes)"),
        (_truncated, "is a damaged or truncated checkpoint"),
        (_folder, "is a folder; expected a .ckpt file"),
        (_text, "is not a PyTorch checkpoint"),
        (_bare_state_dict, "not a Lightning checkpoint"),
    ],
)
def test_an_unusable_file_gets_one_message_naming_it(trained, tmp_path, make, expected):
    path = tmp_path / "given.ckpt"
    make(path, trained / "last.ckpt")
    message = sigma_error(tmp_path, "test", "--ckpt_path", str(path))
    assert str(path) in message and expected in message


def test_an_unreadable_file_names_the_permission(trained, tmp_path, monkeypatch):
    path = tmp_path / "locked.ckpt"
    shutil.copy(trained / "last.ckpt", path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(CheckpointError, match=rf"{path} cannot be read \(Permission denied\); fix its permissions"):
        read_checkpoint(path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="file modes do not bind root")
def test_an_unreadable_file_through_the_cli(trained, tmp_path):
    path = tmp_path / "locked.ckpt"
    shutil.copy(trained / "last.ckpt", path)
    path.chmod(0)
    assert "cannot be read" in sigma_error(tmp_path, "test", "--ckpt_path", str(path))


class RunsCode:
    """Unpickling this creates the marker file: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused_and_nothing_runs(trained, tmp_path):
    marker = tmp_path / "code-ran"
    hostile = torch.load(trained / "last.ckpt", weights_only=True)
    hostile["hyper_parameters"]["payload"] = RunsCode(marker)
    path = tmp_path / "hostile.ckpt"
    torch.save(hostile, path)
    message = sigma_error(tmp_path, "test", "--ckpt_path", str(path))
    assert "holds pickled Python code" in message and "nothing was run" in message
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: loading it unsafely runs it
    assert marker.exists()


def test_a_checkpoint_of_another_item_catalogue_says_both_counts(trained, tmp_path):
    message = sigma_error(tmp_path, "test", "--ckpt_path", str(trained / "last.ckpt"), "--data.synthetic.num_items", "60")
    assert "it was trained on 40 items, this data has" in message and "items (another item catalogue)" in message


def test_a_checkpoint_of_another_backbone_names_both(trained, tmp_path):
    args = tiny_args(tmp_path, "test", "--ckpt_path", str(trained / "last.ckpt"), "--model_from_config", "true")
    with pytest.raises(SystemExit) as failed:
        run_sigma(_gru_args(args))
    message = str(failed.value)
    assert "holds a SASRec backbone, the model configured is GRU4Rec" in message and "weights missing" in message


def _gru_args(args: list[str]) -> list[str]:
    """The tiny SASRec arguments switched to GRU4Rec (which has no max_seq_len setting)."""
    at = args.index("--model.backbone.init_args.max_seq_len")
    args = args[:at] + args[at + 2 :]
    config = args.index("quickstart.yaml") + 1
    return [*args[:config], "--config", "backbones/gru4rec.yaml", *args[config:]]


def test_a_checkpoint_with_non_finite_weights_is_refused_for_evaluation(trained, tmp_path):
    diverged = torch.load(trained / "last.ckpt", weights_only=True)
    diverged["state_dict"]["item_embedding.weight"][5, 3] = float("nan")
    path = tmp_path / "diverged.ckpt"
    AtomicCheckpointIO().save_checkpoint(diverged, path)  # a well-formed file: only its values are wrong
    for subcommand in ("test", "validate", "predict"):
        message = sigma_error(tmp_path, subcommand, "--ckpt_path", str(path))
        assert "holds non-finite weights" in message and "item_embedding.weight (1 of" in message


# ---- resume from a damaged last.ckpt ---------------------------------------------------------
def test_a_damaged_last_checkpoint_falls_back_to_the_newest_intact_one(trained, tmp_path):
    folder = copy_run(trained, tmp_path)
    (best,) = folder.glob("best*.ckpt")
    (folder / "last.ckpt").write_bytes((folder / "last.ckpt").read_bytes()[:5000])
    with pytest.warns(UserWarning, match=rf"last.ckpt is a damaged or truncated.*Falling back to {best}"):
        cli = run(tmp_path, "fit", "--trainer.max_epochs", "3", "--ckpt_path", "last")
    assert cli.trainer.current_epoch == 3
    assert read_checkpoint(folder / "last.ckpt")["epoch"] == 2  # rewritten whole by the resumed run


def test_with_no_intact_checkpoint_left_resume_fails_with_one_message(trained, tmp_path):
    folder = copy_run(trained, tmp_path)
    for path in folder.glob("*.ckpt"):
        path.write_bytes(b"")
    message = sigma_error(tmp_path, "fit", "--ckpt_path", "last")
    assert "is empty" in message and "No other intact checkpoint" in message


def test_usable_checkpoint_without_fallback_raises(trained, tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"")
    shutil.copy(trained / "last.ckpt", tmp_path / "intact.ckpt")
    with pytest.raises(CheckpointError, match="is empty"):
        usable_checkpoint(path, fall_back=False)
    assert usable_checkpoint(path, fall_back=True) == tmp_path / "intact.ckpt"
    assert checkpoints.non_finite({"w": torch.tensor([1.0, float("inf")]), "n": torch.tensor([1])}) == ["w (1 of 2 values)"]
