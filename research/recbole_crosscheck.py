"""Cross-check of the harness against RecBole itself: trains RecBole's own SASRec on Beauty with the
papers' protocol (docs/data.md, "Preprocessing and the protocol": RecBole's, which the SIGMA paper,
Liu et al. 2024, arXiv 2408.11451, follows) and records, after every epoch, RecBole's validation and test metrics (its evaluator:
full ranking, history not masked) and the share of test users whose top-1 item is their own most
recent item (what research/rank_report.py reports for ours). docs/notes/recbole-crosscheck.md
compares the curve with `sigma fit` of beauty/sasrec.yaml uniformly shuffled.

RecBole is not a dependency of this package; it runs in its own environment, from the repository
root (this script imports nothing from sigma_lightning):

    python -m venv rb && rb/bin/pip install torch==2.13.0 "numpy<2" "pandas<2.2" recbole==1.2.1
    OMP_NUM_THREADS=1 rb/bin/python -m research.recbole_crosscheck data/beauty/Beauty.txt \\
        --epochs 60 --out recbole-sasrec.json

(`numpy<2` and `pandas<2.2`: RecBole 1.2.1 uses np.float and chained in-place pandas assignments.)
The JSON is rewritten after every epoch, so a cut-short run keeps what it measured, and the state
after the epoch (model, optimizer, the global random generators and the training loader's own
shuffling generator) goes to `<out>.state.pt`: the same command continues from there, with the
same random streams as an uninterrupted run. RecBole's own logs go to the temporary folder that
holds its copy of the data (printed at start).
"""

from __future__ import annotations

import argparse
import json
import os
import random
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


def save_state(path: Path, epoch: int, run: dict, model, optimizer, loader_generator: torch.Generator) -> None:
    """Everything the next epoch depends on, after `epoch`, and the `run` settings it belongs to
    (seed, data); written atomically, plain types and tensors only (loads with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "epoch": epoch, "run": run, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
        "numpy_rng": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "loader_rng": loader_generator.get_state(),
    }  # fmt: skip
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path, run: dict, model, optimizer, loader_generator: torch.Generator) -> int:
    """Restore what save_state wrote, if it belongs to the same `run`; returns the epoch it was
    written after."""
    state = torch.load(path, weights_only=True)
    differ = [f"{k}: {state['run'].get(k)!r} there, {v!r} now" for k, v in run.items() if state["run"].get(k) != v]
    if differ:
        raise SystemExit(f"{path} belongs to another run ({'; '.join(differ)}): run the command it was "
                         "written by to continue it, or pass another --out to start a new run.")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python_rng"]))
    name, keys, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    loader_generator.set_state(state["loader_rng"])
    return state["epoch"]


def early_stop(valid_ndcg: list[float], stopping_step: int) -> tuple[int, bool]:
    """(best epoch, stop?) as RecBole's fit decides them (recbole.utils.early_stopping): a value
    >= the best so far is the new best; training stops once `stopping_step` + 1 epochs in a row
    have not reached it."""
    best, best_epoch, since = -float("inf"), -1, 0
    for epoch, value in enumerate(valid_ndcg):
        if value >= best:
            best, best_epoch, since = value, epoch, 0
        else:
            since += 1
    return best_epoch, since > stopping_step


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
    parser.add_argument("--epochs", type=int, default=200, help="at most; RecBole's early stopping (patience 10) ends it sooner")
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
    state_path = out.with_name(out.name + ".state.pt")
    run = {"seed": args.seed, "data": str(args.data.resolve())}
    first = 0
    if out.is_file() and not state_path.is_file():
        raise SystemExit(f"{out} exists without {state_path.name} beside it, so the run cannot be continued: "
                         "move it away to start again, or pass another --out.")
    if state_path.is_file() and out.is_file():
        first = load_state(state_path, run, model, trainer.optimizer, train.generator) + 1
        record = json.loads(out.read_text())
        record["epochs"] = record["epochs"][:first]  # an epoch recorded after the last state is run again
        print(f"continuing after epoch {first - 1} from {state_path}", flush=True)
    for epoch in range(first, args.epochs):
        if early_stop([e["valid"]["ndcg@10"] for e in record["epochs"]], config["stopping_step"])[1]:
            break
        start, cpu_start = time.time(), time.process_time()  # process CPU time: robust to a shared machine's load
        loss = trainer._train_epoch(train, epoch)  # RecBole's own epoch and validation, as fit() runs them
        _, valid_result = trainer._valid_epoch(valid)
        seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
        record["epochs"].append({
            "epoch": epoch, "train_loss": float(loss), "train_and_valid_seconds": seconds,
            "train_and_valid_cpu_seconds": cpu_seconds,
            "valid": {k: float(v) for k, v in valid_result.items()},
            "test": {k: float(v) for k, v in trainer.evaluate(test, load_best_model=False).items()},
            "test_top1_is_most_recent_item": top1_is_most_recent(model, test),
        })  # fmt: skip
        print(json.dumps(record["epochs"][-1]), flush=True)
        out.write_text(json.dumps(record, indent=1))
        save_state(state_path, epoch, run, model, trainer.optimizer, train.generator)
    best, stopped = early_stop([e["valid"]["ndcg@10"] for e in record["epochs"]], config["stopping_step"])
    record.update(best_epoch=best, stopped_early=stopped)  # RecBole's test of its best model = that epoch's "test"
    out.write_text(json.dumps(record, indent=1))
    print(f"best epoch {best}" + (", stopped early" if stopped else f", {len(record['epochs'])} epochs run"))


if __name__ == "__main__":
    main()
