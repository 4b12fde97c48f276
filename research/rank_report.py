"""Where a trained model puts each user's test item, and what outranks it: the test metrics with and
without the user's own history in the ranking, how often the top-1 item is the user's most recent
one, and how many of the user's items score above the target.

    python -m research.rank_report runs/beauty-sasrec-s42/version_0/checkpoints/best-epoch032-ndcg0.0523.ckpt \\
        --data data/beauty/Beauty.txt --max-seq-len 50
    python -m research.rank_report <SIGMA checkpoint written before `residual` existed> ... --backbone residual=false

docs/notes/last-item-effect.md uses it to explain the gap between HR@10 and NDCG@10 on Beauty.
"""

from __future__ import annotations

import argparse
import json

import torch

from research.common import load_model, metrics, parse_overrides, prepared_data
from sigma_lightning.data.datamodule import SeqRecDataModule
from sigma_lightning.metrics import target_ranks
from sigma_lightning.module import SeqRecModule, mask_seen_items
from sigma_lightning.nn.layers import gather_last


def most_recent_item(ids: torch.Tensor) -> torch.Tensor:
    """(B, L) left-aligned item ids -> (B,) each row's last real item."""
    return gather_last(ids, ids > 0)


@torch.no_grad()
def report(model: SeqRecModule, data: SeqRecDataModule) -> dict:
    ranks, masked_ranks, top1_is_last, seen_above = [], [], [], []
    for batch in data.test_dataloader():
        ids, history, target = batch["input_ids"], batch["history"], batch["target"]
        scores = model.item_scores(model(ids))  # (B, N), column j = item j + 1
        ranks.append(target_ranks(scores, target - 1))
        masked_ranks.append(target_ranks(mask_seen_items(scores, history, target), target - 1))
        top1_is_last.append(scores.argmax(1) + 1 == most_recent_item(ids))
        above = scores >= scores.gather(1, (target - 1).unsqueeze(1))  # (B, N)
        seen = torch.zeros_like(above).scatter_(1, (history - 1).clamp(min=0), history > 0)
        seen_above.append((above & seen).sum(1))
    ranks, masked_ranks, seen_above = torch.cat(ranks), torch.cat(masked_ranks), torch.cat(seen_above)
    return {
        "users": len(ranks),
        "protocol": metrics(ranks),
        "history_masked": metrics(masked_ranks),
        "top1_is_most_recent_item": torch.cat(top1_is_last).float().mean().item(),
        "seen_items_above_target_mean": seen_above.float().mean().item(),
        "ranks_1_to_10": [int((ranks == r).sum()) for r in range(1, 11)],
    }


@torch.no_grad()
def top1_is_last_on_training_prefixes(model: SeqRecModule, data: SeqRecDataModule, batches: int) -> float:
    """Share of training prefixes (the first `batches` batches) whose top-1 item is their last input
    item, which is never their target: what the training loss itself sees."""
    shares = []
    for index, batch in enumerate(data.train_dataloader()):
        if index == batches:
            break
        ids = batch["input_ids"]
        shares.append(model.item_scores(model(ids)).argmax(1) + 1 == most_recent_item(ids))
    return torch.cat(shares).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="the data file the run trained on")
    parser.add_argument("--max-seq-len", type=int, required=True)
    parser.add_argument("--backbone", nargs="*", default=[], metavar="KEY=VALUE", help="backbone settings to override")
    parser.add_argument("--train-batches", type=int, default=0, help="also measure the top-1 on this many training batches")
    args = parser.parse_args()
    data = prepared_data(args.data, args.max_seq_len, ("fit", "test") if args.train_batches else ("test",))
    model = load_model(args.checkpoint, parse_overrides(args.backbone))
    result = report(model, data)
    if args.train_batches:
        result["train_top1_is_most_recent_item"] = top1_is_last_on_training_prefixes(model, data, args.train_batches)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
