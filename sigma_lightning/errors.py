"""The package's error types. The `sigma` command turns each into one message and exit status 2,
never a traceback; Python callers can catch `SigmaError` for any of them.

* `ConfigError`: a setting out of its valid range or inconsistent with another; the message names
  the setting (as it is written in YAML, e.g. `model.backbone.init_args.dropout`), the value, the
  valid range and the fix.
* `DataError`: a data file or data setting that cannot be used; the message names the file, the line
  or column, what was expected and what to change.
* `CheckpointError`: a checkpoint that cannot be used (missing, damaged, another catalogue or
  backbone); the message says what the file is and what was expected.

Each subclasses ValueError, so code that caught ValueError before keeps working.
"""

from __future__ import annotations


class SigmaError(ValueError):
    """Base of every error this package raises for bad input or settings."""


class ConfigError(SigmaError):
    """A bad setting; the message names the setting, its valid range and the fix."""


class DataError(SigmaError):
    """Bad data or data settings; the message names the file, line or setting and the fix."""


class CheckpointError(SigmaError):
    """A checkpoint that cannot be used; the message says what it is and what was expected."""


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                low_inclusive: bool = True, high_inclusive: bool = False) -> None:
    """Raise ConfigError unless low <= value < high (bounds and their inclusiveness as given).

    `name` is the setting as the user writes it, e.g. "dropout" or "model.backbone.init_args.dropout".
    """
    ok = True
    if low is not None:
        ok = ok and (value >= low if low_inclusive else value > low)
    if high is not None:
        ok = ok and (value <= high if high_inclusive else value < high)
    if isinstance(value, float) and value != value:  # NaN passes no comparison the user meant
        ok = False
    if not ok:
        lo = "" if low is None else f"{low} {'<=' if low_inclusive else '<'} "
        hi = "" if high is None else f" {'<=' if high_inclusive else '<'} {high}"
        raise ConfigError(f"{name}={value!r} is out of range: expected {lo}{name}{hi}. Set `{name}` within it.")
