"""Which model settings a checkpoint is used with, said out loud.

Given `--ckpt_path`, LightningCLI replaces the config's `model:` settings with the hyperparameters
saved in the checkpoint, without a word: `sigma test ... --model.backbone.init_args.dropout 0.45`
scores the trained dropout, and a setting the checkpoint predates (one added to the package after
it was written, such as SIGMA's `residual`) keeps the config's value, which can make a resumed or
tested model differ from the one trained. The CLI compares the two and warns about both;
`--model_from_config true` keeps the config's settings instead (to continue with other settings).
Evaluation settings (`top_k`, `mask_history`, `history_groups`) always follow the config.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any


# How a model is evaluated (or run: torch.compile), not what it is: these always follow the config,
# whatever the checkpoint says.
EVALUATION_SETTINGS = ("top_k", "mask_history", "history_groups", "compile", "compile_mode", "compile_backend")
# Not compared: evaluation settings; settings that cannot change a trained model's outputs (linked
# from the data: a wrong item count fails loudly at load; initialisation-only values; the scan
# implementation: same maths).
IGNORED = {*EVALUATION_SETTINGS, "num_items", "_instantiator", "embedding_init_std", "learning_rate",
           "backbone.init_args.mamba.scan_impl"}  # fmt: skip


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; tuples become lists so YAML and Python values compare equal."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def model_differences(saved: Mapping[str, Any], configured: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Compare a checkpoint's `hyper_parameters` with the `model:` config section.

    Returns (changed, newer): "model.<key>: checkpoint <a>, config <b>" for each setting both name
    with different values (or that only one names, the backbone class included), and the settings
    the checkpoint does not name because it predates them ("model.<key> = <config value>").
    """
    old, new = flatten(saved), flatten(configured)
    old_class, new_class = old.get("backbone.class_path"), new.get("backbone.class_path")
    changed, newer = [], []
    for key in sorted(set(old) | set(new)):
        if key in IGNORED or (old_class != new_class and key.startswith("backbone.init_args.")):
            continue  # another backbone class: its arguments are not comparable, the class line says it
        if key not in old:
            newer.append(f"model.{key} = {new[key]!r}")
        elif key not in new or old[key] != new[key]:
            changed.append(f"model.{key}: checkpoint {old[key]!r}, config {new.get(key, '(not set)')!r}")
    return changed, newer


def check_checkpoint_model(
    ckpt_path: str, checkpoint: Mapping[str, Any], configured: Mapping[str, Any], model_from_config: bool
) -> None:
    """Warn about every model setting where the config and the checkpoint (`checkpoint`, the file
    `ckpt_path` as read) differ, naming which one is used, and about settings the checkpoint
    predates. Checkpoints written outside the CLI carry no backbone settings and are not checked."""
    saved = checkpoint.get("hyper_parameters")
    if not isinstance(saved, Mapping) or not isinstance(saved.get("backbone"), Mapping):
        return
    changed, newer = model_differences(saved, configured)
    if changed:
        used = (
            "the config's, as --model_from_config asks"
            if model_from_config
            else "the checkpoint's (pass --model_from_config true to use the config's)"
        )
        lines = "\n  ".join(changed)
        warnings.warn(f"{ckpt_path}: model settings differ from the config; used: {used}:\n  {lines}", stacklevel=2)
    if newer:
        warnings.warn(
            f"{ckpt_path} predates these settings, which take the config's values: {', '.join(newer)}. "
            "If the run was trained otherwise, set them to what it used.",
            stacklevel=2,
        )
