"""`sigma fit --model.backbone.help <class>` documents every argument of every backbone, and every
field of its `mamba` settings, with a line of its own."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

from sigma_lightning import models
from sigma_lightning.cli import main
from sigma_lightning.models import MambaConfig

BACKBONES = ["SIGMA", "EchoMamba4Rec", "Mamba4Rec", "SASRec", "GRU4Rec"]
OPTION = re.compile(r"^  --model\.backbone\.(\S+)(?: \S+)?(.*)$")


def help_entries(text: str) -> dict[str, str]:
    """{argument: its help text (without the type/default note)} from argparse's option listing."""
    entries: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        match = OPTION.match(line)
        if match:
            current = match.group(1)
            entries[current] = [match.group(2)]
        elif current is not None and line.startswith(" " * 8) and line.strip():
            entries[current].append(line)
        else:
            current = None
    return {name: " ".join(" ".join(lines).split()).split("(type:")[0].strip() for name, lines in entries.items()}


def documented_arguments(class_name: str) -> set[str]:
    """The backbone's init arguments, the `mamba` one replaced by its MambaConfig fields."""
    names = set(inspect.signature(getattr(models, class_name)).parameters)
    if "mamba" in names:
        names = (names - {"mamba"}) | {f"mamba.{f.name}" for f in dataclasses.fields(MambaConfig)}
    return names


@pytest.mark.parametrize("class_name", BACKBONES)
def test_backbone_help_documents_every_argument(class_name, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.backbone.help", f"sigma_lightning.models.{class_name}"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    entries = help_entries(text)
    expected = documented_arguments(class_name)
    assert expected <= entries.keys(), f"missing from the help: {sorted(expected - entries.keys())}"
    undocumented = sorted(name for name in expected if not entries[name])
    assert not undocumented, f"{class_name}: arguments without help text: {undocumented}\n{text}"


def test_help_parser_reads_argparse_layouts():
    """The parser of the listing: help on the option's line or below it, the type note dropped."""
    text = (
        "group:\n"
        "  --model.backbone.a A  short help. (type: int, default: 1)\n"
        "  --model.backbone.b {true,false}\n"
        "                        longer help\n"
        "                        on two lines. (type: bool, default: True)\n"
        "  --model.backbone.c C\n"
        "                        (type: int, default: 3)\n"
    )
    assert help_entries(text) == {"a": "short help.", "b": "longer help on two lines.", "c": ""}
