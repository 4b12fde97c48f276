"""MambaConfig: the settings of a Mamba-1 block, in one validated dataclass.

Every Mamba-based backbone takes one (`mamba=`) and hands it to each of its blocks, so a block's
shape is written once, in YAML as `model.backbone.init_args.mamba: {d_state: 32, d_conv: 4,
expand: 2}` or on the command line as `--model.backbone.init_args.mamba.d_state 16`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from sigma_lightning.errors import check_range
from sigma_lightning.nn.settings import check_choice, check_flag, check_integer

ScanImpl = Literal["auto", "reference", "fast", "cuda"]  # ops.selective_scan.IMPLS (a test keeps them equal)
DtInit = Literal["random", "constant"]
# How the setting is written in a recipe: the message of a bad value names it so.
SETTING = "model.backbone.init_args.mamba"


@dataclass(frozen=True)
class MambaConfig:
    """Settings of a Mamba-1 block, with mamba_ssm's names and meanings. The defaults are the papers'
    block (d_state 32, d_conv 4, expand 2; mamba_ssm's own d_state default is 16) with mamba_ssm's
    dt initialisation (which the backbones' `init: recbole` overwrites, as the authors' code does).

    Args:
        d_state: state size N per channel (>= 1; papers: 32).
        d_conv: kernel size of the depthwise causal convolution (>= 1; papers: 4).
        expand: inner width d_inner = expand * d_model (>= 1; papers: 2).
        dt_rank: rank of the step-size projection (>= 1), or "auto" for ceil(d_model / 16).
        dt_min: smallest initial step size (0 < dt_min <= dt_max).
        dt_max: largest initial step size (dt_min <= dt_max).
        dt_init: the step-size projection's initial weights: "random" (uniform in +-std) or
            "constant" (std), with std = dt_rank^-0.5 * dt_scale.
        dt_scale: factor on that std (> 0).
        dt_init_floor: lower bound of the initial step sizes (>= 0).
        conv_bias: give the convolution a bias.
        bias: give the input and output projections biases.
        scan_impl: selective-scan implementation: "auto" (mamba_ssm's CUDA kernels where they
            import and the input is on CUDA, else the fast scan), "fast", "reference" (plain
            PyTorch, for tests and debugging) or "cuda" (fails where the kernels cannot run).
    """

    d_state: int = 32
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | Literal["auto"] = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: DtInit = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    scan_impl: ScanImpl = "auto"

    def __post_init__(self) -> None:
        for name in ("d_state", "d_conv", "expand"):
            check_integer(f"{SETTING}.{name}", getattr(self, name))
        if self.dt_rank != "auto":
            check_integer(f"{SETTING}.dt_rank", self.dt_rank)
        check_range(f"{SETTING}.dt_min", self.dt_min, 0.0, low_inclusive=False)
        check_range(f"{SETTING}.dt_max", self.dt_max, self.dt_min)
        check_range(f"{SETTING}.dt_scale", self.dt_scale, 0.0, low_inclusive=False)
        check_range(f"{SETTING}.dt_init_floor", self.dt_init_floor, 0.0)
        check_choice(f"{SETTING}.dt_init", self.dt_init, get_args(DtInit))
        check_choice(f"{SETTING}.scan_impl", self.scan_impl, get_args(ScanImpl))
        check_flag(f"{SETTING}.conv_bias", self.conv_bias)
        check_flag(f"{SETTING}.bias", self.bias)
