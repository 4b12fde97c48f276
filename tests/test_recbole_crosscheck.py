"""tools/recbole_crosscheck.py (runs where RecBole is installed; these tests need no RecBole): the
atomic file it writes keeps every user's items in order, and its RecBole settings are the recipe's."""

import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]
spec = importlib.util.spec_from_file_location("recbole_crosscheck", ROOT / "tools" / "recbole_crosscheck.py")
crosscheck = importlib.util.module_from_spec(spec)
spec.loader.exec_module(crosscheck)


def test_atomic_file_keeps_each_users_order(tmp_path):
    src = tmp_path / "Beauty.txt"
    src.write_text("1 5 3 9\n2 3 7\n")
    crosscheck.write_atomic_file(src, tmp_path / "rb")
    lines = (tmp_path / "rb" / "beauty" / "beauty.inter").read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    rows = [line.split("\t") for line in lines[1:]]
    assert rows == [["1", "5", "0"], ["1", "3", "1"], ["1", "9", "2"], ["2", "3", "0"], ["2", "7", "1"]]


def test_settings_are_the_recipes(tmp_path):
    recipe = yaml.safe_load((ROOT / "sigma_lightning" / "configs" / "beauty" / "sasrec.yaml").read_text())
    backbone = recipe["model"]["backbone"]["init_args"]
    cfg = crosscheck.recbole_config(tmp_path, epochs=3, seed=42)
    assert (cfg["hidden_size"], cfg["n_layers"], cfg["n_heads"], cfg["inner_size"]) == (
        backbone["hidden_size"], backbone["num_layers"], backbone["num_heads"], backbone["inner_size"],
    )  # fmt: skip
    assert (cfg["hidden_dropout_prob"], cfg["attn_dropout_prob"]) == (backbone["dropout"], backbone["attn_dropout"])
    assert cfg["MAX_ITEM_LIST_LENGTH"] == recipe["data"]["max_seq_len"]
    assert cfg["train_batch_size"] == recipe["data"]["batch_size"]
    assert cfg["learning_rate"] == recipe["optimizer"]["init_args"]["lr"]
    assert cfg["user_inter_num_interval"] == f"[{recipe['data']['min_user_interactions']},inf)"
    assert cfg["item_inter_num_interval"] == f"[{recipe['data']['min_item_interactions']},inf)"
    assert cfg["eval_args"]["mode"] == "full" and cfg["loss_type"] == "CE" and cfg["seed"] == 42
