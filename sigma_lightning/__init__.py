"""sigma_lightning: sequential recommenders on selective state-space models, on PyTorch Lightning.

Importing the package never needs mamba_ssm, triton or a GPU.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy re-export so `import sigma_lightning` stays light (no Lightning import for the CLI's --help).
    if name == "Mamba":
        from sigma_lightning.nn.mamba import Mamba

        return Mamba
    raise AttributeError(f"module 'sigma_lightning' has no attribute {name!r}")


__all__ = ["Mamba", "__version__"]
