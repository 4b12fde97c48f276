"""Backbones: plain nn.Modules mapping (item_emb (B, L, D), mask (B, L)) -> (B, D).

Pick one in YAML with `model.backbone.class_path: sigma_lightning.models.<Name>`.
"""

from sigma_lightning.models.gru4rec import GRU4Rec
from sigma_lightning.models.sasrec import SASRec

__all__ = ["GRU4Rec", "SASRec"]
