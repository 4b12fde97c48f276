"""MambaConfig and the Mamba block's constructor: every setting checked (one ConfigError naming it
and its valid range), the config and mamba_ssm's keyword form build the same block."""

from __future__ import annotations

import pytest

from sigma_lightning.errors import ConfigError
from sigma_lightning.nn.mamba import Mamba
from sigma_lightning.nn.mamba_config import MambaConfig, ScanImpl
from sigma_lightning.ops.selective_scan import IMPLS

BAD_MAMBA_SETTINGS = [
    ({"d_state": 0}, "d_state", "1 <="),
    ({"d_conv": 0}, "d_conv", "1 <="),
    ({"expand": 0}, "expand", "1 <="),
    ({"expand": 1.5}, "expand", "an integer >= 1"),
    ({"dt_rank": 0}, "dt_rank", "1 <="),
    ({"dt_rank": "full"}, "dt_rank", "an integer >= 1"),
    ({"dt_min": 0.0}, "dt_min", "0.0 <"),
    ({"dt_min": 0.2, "dt_max": 0.1}, "dt_max", "0.2 <="),
    ({"dt_scale": 0.0}, "dt_scale", "0.0 <"),
    ({"dt_init_floor": -1e-4}, "dt_init_floor", "0.0 <="),
    ({"dt_init": "xavier"}, "dt_init", "'random', 'constant'"),
    ({"scan_impl": "fastest"}, "scan_impl", "'auto', 'reference', 'fast', 'cuda'"),
    ({"conv_bias": "yes"}, "conv_bias", "true or false"),
    ({"bias": 1}, "bias", "true or false"),
]


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("settings, name, valid", BAD_MAMBA_SETTINGS,
                         ids=[f"{'-'.join(s)}={list(s.values())[-1]}" for s, _, _ in BAD_MAMBA_SETTINGS])  # fmt: skip
def test_bad_mamba_setting_names_the_setting_and_its_range(settings, name, valid):
    with pytest.raises(ConfigError) as error:
        MambaConfig(**settings)
    message = one_line(error)
    assert message.startswith(f"model.backbone.init_args.mamba.{name}=") and valid in message, message
    with pytest.raises(ConfigError):  # the block's keyword form is checked the same way
        Mamba(8, **settings)


def test_boundary_values_build():
    MambaConfig(d_state=1, d_conv=1, expand=1, dt_rank=1, dt_min=0.1, dt_max=0.1, dt_init_floor=0.0, dt_init="constant")


def test_scan_impl_choices_are_the_dispatchers():
    assert ScanImpl.__args__ == IMPLS


def test_mamba_takes_a_config_or_mamba_ssm_keywords():
    config = MambaConfig(d_state=8, d_conv=3, expand=1, dt_rank=2, conv_bias=False, bias=True)
    block = Mamba(16, config)
    assert block.config == config and block.A_log.shape == (16, 8) and block.conv1d.bias is None
    assert block.x_proj.out_features == 2 + 2 * 8 and block.in_proj.bias is not None
    assert Mamba(16, config, d_state=4).config == MambaConfig(d_state=4, d_conv=3, expand=1, dt_rank=2,
                                                               conv_bias=False, bias=True)  # fmt: skip
    assert Mamba(16, d_state=8).config == MambaConfig(d_state=8)
    with pytest.raises(TypeError, match="MambaConfig"):
        Mamba(16, 8)  # mamba_ssm's positional d_state: refused, not read as a config
    with pytest.raises(TypeError, match="d_sate"):
        Mamba(16, d_sate=8)
