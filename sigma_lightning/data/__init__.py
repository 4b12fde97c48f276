"""Data: readers, preprocessing (k-core, leave-one-out, cache), the synthetic generator and the DataModule.

``DataError``, the readers, the generator and the preprocessing functions import without Lightning;
``SeqRecDataModule`` is imported lazily so ``import sigma_lightning.data`` stays light.
"""

from sigma_lightning.data.readers import FORMATS, DataError, detect_format, read_interactions
from sigma_lightning.data.synthetic import SyntheticConfig, generate

__all__ = [
    "FORMATS",
    "DataError",
    "SeqRecDataModule",
    "SyntheticConfig",
    "detect_format",
    "generate",
    "read_interactions",
]


def __getattr__(name: str):
    if name == "SeqRecDataModule":
        from sigma_lightning.data.datamodule import SeqRecDataModule

        return SeqRecDataModule
    raise AttributeError(f"module 'sigma_lightning.data' has no attribute {name!r}")
