"""Backbones: plain nn.Modules mapping (item_emb (B, L, D), mask (B, L)) -> (B, D).

Pick one in YAML with `model.backbone.class_path: sigma_lightning.models.<Name>`; the Mamba-based
ones take their blocks' settings as one `mamba:` mapping (MambaConfig).
"""

from sigma_lightning.models.echomamba4rec import EchoMamba4Rec
from sigma_lightning.models.gru4rec import GRU4Rec
from sigma_lightning.models.mamba4rec import Mamba4Rec
from sigma_lightning.models.sasrec import SASRec
from sigma_lightning.models.sigma import SIGMA
from sigma_lightning.nn.mamba_config import MambaConfig

__all__ = ["SIGMA", "EchoMamba4Rec", "GRU4Rec", "Mamba4Rec", "MambaConfig", "SASRec"]
