"""What a trained SIGMA layer's output is made of at each user's last position: the size of its
PF-Mamba branch (a1 * M), its FE-GRU branch (a2 * G) and the residual input x, and the test metrics
when one branch is switched off at inference (no retraining: how much the trained model leans on it).

    python -m research.sigma_branches runs/beauty-sigma-residual-s42/version_0/checkpoints/best-epoch032-ndcg0.0524.ckpt \\
        --data data/beauty/Beauty.txt --max-seq-len 50
    python -m research.sigma_branches <SIGMA checkpoint written before `residual` existed> ... --backbone residual=false

docs/notes/sigma-ablations.md uses it to read why removing FE-GRU in training costs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

import torch

from research.common import load_model, metrics, parse_overrides, prepared_data
from sigma_lightning.data.datamodule import SeqRecDataModule
from sigma_lightning.metrics import target_ranks
from sigma_lightning.models.sigma import SigmaLayer
from sigma_lightning.module import SeqRecModule
from sigma_lightning.nn.layers import gather_last


def first_sigma_layer(model: SeqRecModule) -> SigmaLayer | None:
    """The backbone's first SigmaLayer (None if the backbone is not SIGMA)."""
    return next((m for m in model.backbone.modules() if isinstance(m, SigmaLayer)), None)


@contextlib.contextmanager
def switched_off(module: torch.nn.Module | None):
    """Within the block, `module` outputs zeros (its branch contributes nothing); None: no change."""
    if module is None:
        yield
        return
    handle = module.register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
    try:
        yield
    finally:
        handle.remove()


def test_metrics(model: SeqRecModule, data: SeqRecDataModule) -> dict[str, float]:
    ranks = [target_ranks(model.item_scores(model(b["input_ids"])), b["target"] - 1) for b in data.test_dataloader()]
    return metrics(torch.cat(ranks))


def branch_norms(model: SeqRecModule, data: SeqRecDataModule) -> dict[str, float]:
    """Mean L2 norm over test users, at the last real position of the first SIGMA layer, of
    a1 * M (PF-Mamba), a2 * G (FE-GRU, 0 if absent) and x (the layer's input, the residual)."""
    layer = first_sigma_layer(model)
    sums = {"pf_mamba": 0.0, "fe_gru": 0.0, "residual_input": 0.0}
    users = 0

    def measure(mod: SigmaLayer, args: tuple) -> None:
        nonlocal users
        x, mask = args  # (B, L, D), (B, L)
        last = lambda t: gather_last(t, mask).norm(dim=-1).sum().item()  # noqa: E731
        sums["pf_mamba"] += last(mod.mamba_weight * mod.pf_mamba(x, mask))
        if mod.fe_gru is not None:
            sums["fe_gru"] += last(mod.gru_weight * mod.fe_gru(x, mask))
        sums["residual_input"] += last(x)
        users += x.size(0)

    handle = layer.register_forward_pre_hook(measure)
    try:
        for batch in data.test_dataloader():
            model(batch["input_ids"])
    finally:
        handle.remove()
    return {name: total / users for name, total in sums.items()}


@torch.no_grad()
def report(model: SeqRecModule, data: SeqRecDataModule) -> dict:
    layer = first_sigma_layer(model)
    result = {
        "a1 (mamba_weight)": layer.mamba_weight.item(),
        "a2 (gru_weight)": None if layer.gru_weight is None else layer.gru_weight.item(),
        "norms_at_last_position": branch_norms(model, data),
        "test": test_metrics(model, data),
    }
    with switched_off(layer.fe_gru):
        result["test_fe_gru_off"] = test_metrics(model, data)
    with switched_off(layer.mamba), switched_off(layer.mamba_flipped):
        result["test_pf_mamba_off"] = test_metrics(model, data)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="the data file the model was trained on")
    parser.add_argument("--max-seq-len", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--backbone", nargs="*", default=[], metavar="KEY=VALUE", help="backbone settings to override")
    args = parser.parse_args()
    model = load_model(args.checkpoint, parse_overrides(args.backbone))
    if first_sigma_layer(model) is None:
        sys.exit(f"sigma_branches: {args.checkpoint} holds no SIGMA backbone")
    data = prepared_data(args.data, args.max_seq_len, eval_batch_size=args.batch_size)
    print(json.dumps(report(model, data), indent=1))


if __name__ == "__main__":
    main()
