"""What the research scripts share: a trained checkpoint rebuilt for inference, the test split of
the data it trained on, and HR/NDCG/MRR@10 of a set of ranks."""

from __future__ import annotations

import contextlib
import sys

import torch
import yaml

from sigma_lightning.data.datamodule import SeqRecDataModule
from sigma_lightning.metrics import RankingMetrics
from sigma_lightning.module import SeqRecModule


def load_model(checkpoint: str, backbone_overrides: dict) -> SeqRecModule:
    """The checkpoint's model, rebuilt from its saved settings (plus `backbone_overrides`, for
    checkpoints that predate a setting), in eval mode on the CPU."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]["backbone"]
    backbone = {**saved, "init_args": {**saved["init_args"], **backbone_overrides}}
    model = SeqRecModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True, backbone=backbone)
    return model.eval()


def parse_overrides(items: list[str]) -> dict:
    """["residual=false", ...] -> {"residual": False, ...} (values read as YAML)."""
    return {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in items)}


def prepared_data(path: str, max_seq_len: int, stages: tuple[str, ...] = ("test",), **settings) -> SeqRecDataModule:
    """The data module of `path`, set up for `stages`; its statistics table goes to stderr, so a
    script's stdout stays JSON."""
    data = SeqRecDataModule(path=path, max_seq_len=max_seq_len, **settings)
    with contextlib.redirect_stdout(sys.stderr):
        data.prepare_data()
        for stage in stages:
            data.setup(stage)
    return data


def metrics(ranks: torch.Tensor) -> dict[str, float]:
    """HR/NDCG/MRR@10 of 1-based ranks (N,), computed by the module's own RankingMetrics."""
    ranking = RankingMetrics([10])
    ranking.update(ranks)
    return {name: value.item() for name, value in ranking.compute().items()}
