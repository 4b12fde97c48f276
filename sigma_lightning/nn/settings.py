"""Checks of the backbones' and blocks' settings: a bad value raises one ConfigError that names the
setting as a recipe writes it (`model.backbone.init_args.dropout`) and its valid range, before any
torch layer is built with it."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from sigma_lightning.errors import ConfigError, check_range

BACKBONE = "model.backbone.init_args"


def check_integer(name: str, value: object, low: int = 1) -> None:
    """ConfigError unless `value` is an integer >= low (a bool is not one)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name}={value!r}: expected an integer >= {low}.")
    check_range(name, value, low)


def check_probability(name: str, value: float) -> None:
    """ConfigError unless 0 <= value < 1 (a dropout probability)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}={value!r}: expected a number in [0, 1).")
    check_range(name, value, 0.0, 1.0)


def check_power_of_two(name: str, value: object, low: int = 2) -> None:
    """ConfigError unless `value` is a power of two >= low."""
    check_integer(name, value, low)
    if value & (value - 1):
        raise ConfigError(f"{name}={value!r}: expected a power of two >= {low} (e.g. {1 << value.bit_length()}).")


def check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: expected one of {', '.join(map(repr, choices))}.")


def check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r}: expected true or false.")


# Each backbone argument's valid values (flags and choices are checked by their own types in YAML).
RULES: dict[str, Callable[[str, object], None]] = {
    "hidden_size": check_integer,
    "num_layers": check_integer,
    "num_heads": check_integer,
    "inner_size": check_integer,
    "gru_hidden_size": check_integer,
    "max_seq_len": check_integer,
    "gate_kernel_size": check_integer,
    "gru_kernel_size": check_integer,
    "flip_range": partial(check_integer, low=0),
    "filter_len": check_power_of_two,
    "dropout": check_probability,
    "attn_dropout": check_probability,
}


def check_backbone_settings(**settings: object) -> None:
    """Check backbone arguments by name (RULES); the first bad one raises ConfigError."""
    for name, value in settings.items():
        RULES[name](f"{BACKBONE}.{name}", value)
