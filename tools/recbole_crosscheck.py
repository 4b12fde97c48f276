"""Cross-check of the harness against RecBole itself: trains RecBole's own SASRec on Beauty with the
papers' protocol (../shared/papers/MODELS.md section 6) and records, after every epoch, RecBole's
validation and test metrics (its evaluator: full ranking, history not masked) and the share of test
users whose top-1 item is their own most recent item (what tools/rank_report.py reports for ours).
docs/results.md compares the curve with `sigma fit` of beauty/sasrec.yaml uniformly shuffled.

RecBole is not a dependency of this package; it runs in its own environment:

    python -m venv rb && rb/bin/pip install torch==2.13.0 "numpy<2" "pandas<2.2" recbole==1.2.1
    OMP_NUM_THREADS=1 rb/bin/python tools/recbole_crosscheck.py ../shared/data/beauty/Beauty.txt \\
        --epochs 12 --out recbole-sasrec.json

(`numpy<2` and `pandas<2.2`: RecBole 1.2.1 uses np.float and chained in-place pandas assignments.)
The JSON is rewritten after every epoch, so a cut-short run keeps what it measured. RecBole's own
logs go to the temporary folder that holds its copy of the data (printed at start).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_atomic_file(beauty_txt: Path, folder: Path) -> None:
    """`user item item ...` lines (chronological) -> RecBole's folder/beauty/beauty.inter, the
    timestamp being each item's position in its user's line (RecBole orders by it)."""
    (folder / "beauty").mkdir(parents=True, exist_ok=True)
    with open(beauty_txt) as src, open(folder / "beauty" / "beauty.inter", "w") as out:
        out.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for line in src:
            user, *items = line.split()
            out.writelines(f"{user}\t{item}\t{t}\n" for t, item in enumerate(items))


def recbole_config(data_folder: Path, epochs: int, seed: int) -> dict:
    """The papers' protocol and RecBole's SASRec at the recipe's settings (configs/beauty/sasrec.yaml)."""
    return dict(
        data_path=str(data_folder), dataset="beauty", USER_ID_FIELD="user_id", ITEM_ID_FIELD="item_id",
        TIME_FIELD="timestamp", load_col={"inter": ["user_id", "item_id", "timestamp"]}, MAX_ITEM_LIST_LENGTH=50,
        user_inter_num_interval="[5,inf)", item_inter_num_interval="[5,inf)", train_neg_sample_args=None,
        loss_type="CE", eval_args={"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        metrics=["Hit", "NDCG", "MRR"], topk=[10], valid_metric="NDCG@10", train_batch_size=2048,
        eval_batch_size=4096, learning_rate=0.001, epochs=epochs, stopping_step=10, hidden_size=64, inner_size=256,
        n_layers=2, n_heads=2, hidden_dropout_prob=0.3, attn_dropout_prob=0.3, hidden_act="gelu",
        layer_norm_eps=1e-12, initializer_range=0.02, seed=seed, reproducibility=True, device="cpu",
        use_gpu=False, show_progress=False, checkpoint_dir=str(data_folder / "saved"),
    )  # fmt: skip


def top1_is_most_recent(model, loader) -> float:
    """Share of the loader's users whose highest-scored item is the last item of their input."""
    model.eval()
    hits = users = 0
    with torch.no_grad():
        for interaction, _history, _pos_u, _pos_i in loader:
            scores = model.full_sort_predict(interaction).view(len(interaction), -1)  # (B, items + 1)
            scores[:, 0] = -np.inf  # padding, as RecBole's trainer does
            seq, seq_len = interaction["item_id_list"], interaction["item_length"]
            last = seq[torch.arange(len(interaction)), seq_len - 1]  # (B,)
            hits += int((scores.argmax(1) == last).sum())
            users += len(interaction)
    return hits / users


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="Beauty.txt")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    torch.set_num_threads(1)
    out = args.out.resolve()
    folder = Path(tempfile.mkdtemp(prefix="recbole_crosscheck_"))
    write_atomic_file(args.data, folder)
    print(f"RecBole's data and logs: {folder}", flush=True)
    os.chdir(folder)  # RecBole's logger writes log/ and log_tensorboard/ into the working directory
    config = Config(model="SASRec", config_dict=recbole_config(folder, args.epochs, args.seed))
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])  # as RecBole's run_recbole
    model = SASRec(config, train.dataset)
    trainer = Trainer(config, model)
    record = {"recbole_dataset": str(dataset).splitlines(), "epochs": []}
    for epoch in range(args.epochs):
        start = time.time()
        loss = trainer._train_epoch(train, epoch)  # RecBole's own epoch and validation, as fit() runs them
        _, valid_result = trainer._valid_epoch(valid)
        seconds = time.time() - start
        record["epochs"].append({
            "epoch": epoch, "train_loss": float(loss), "train_and_valid_seconds": seconds,
            "valid": {k: float(v) for k, v in valid_result.items()},
            "test": {k: float(v) for k, v in trainer.evaluate(test, load_best_model=False).items()},
            "test_top1_is_most_recent_item": top1_is_most_recent(model, test),
        })  # fmt: skip
        print(json.dumps(record["epochs"][-1]), flush=True)
        out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
