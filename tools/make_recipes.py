"""Writes the bundled training recipes from one table of the papers' hyperparameters.

    python tools/make_recipes.py        # rewrites sigma_lightning/configs/<data>.yaml, <data>/<model>.yaml, backbones/

`<data>.yaml` is the data set's recipe with SASRec (the README's `sigma fit --config beauty.yaml`);
`<data>/<model>.yaml` is the complete recipe for one backbone on that data set
(`sigma fit --config beauty/sigma.yaml`); `backbones/<model>.yaml` is the model section alone, to
combine with a data recipe of your own. Values: the SIGMA paper (Liu et al. 2024), "Experiment
Setting" and appendix D "Implementation Details", and docs/models.md: d = 64, Mamba blocks with
d_state 32, d_conv 4, expand 2; one layer for SIGMA and EchoMamba4Rec, two for SASRec and Mamba4Rec;
dropout 0.3 on Amazon/Yelp and 0.2 on MovieLens; max length 50, 200 on MovieLens; 5-core; batch
2048; Adam 1e-3; early stopping with patience 10, added by the CLI.
tests/test_recipes.py checks every written file against these rules.
"""

from __future__ import annotations

from pathlib import Path

from sigma_lightning.models.echomamba4rec import linear_fft_length

CONFIGS = Path(__file__).resolve().parents[1] / "sigma_lightning" / "configs"

# recipe name: (named data set, data.dataset, downloaded on first use; dropout; max_seq_len)
DATA_SETS = {
    "beauty": ("amazon-beauty", 0.3, 50),
    "sports": ("amazon-sports", 0.3, 50),
    "games": ("amazon-games", 0.3, 50),
    "yelp": ("yelp", 0.3, 50),
    "ml-1m": ("ml-1m", 0.2, 200),
    "ml-100k": ("ml-100k", 0.2, 200),
}
MAMBA = {"d_state": 32, "d_conv": 4, "expand": 2}  # the papers' block, for every Mamba model
MODELS = ("sasrec", "gru4rec", "mamba4rec", "echomamba4rec", "sigma")
# The model sections of backbones/<model>.yaml: Amazon's dropout; lengths that cover 50 and 200.
BACKBONE_FILES = {"dropout": 0.3, "max_len": 200, "filter_max_len": 50}


def flow(value: object) -> str:
    """A YAML flow scalar or mapping: {a: 1, b: {c: true}}."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def backbone(model: str, dropout: float, max_len: int) -> tuple[str, dict, str]:
    """(class name, init_args, comment lines) for one backbone."""
    if model == "sasrec":
        args = dict(hidden_size=64, num_layers=2, num_heads=2, inner_size=256, dropout=dropout,
                    attn_dropout=dropout, max_seq_len=max_len)  # fmt: skip
        return "SASRec", args, "RecBole's SASRec defaults"
    if model == "gru4rec":
        args = dict(hidden_size=64, gru_hidden_size=128, num_layers=1, dropout=dropout)
        return "GRU4Rec", args, "RecBole's GRU4Rec defaults (embedding 64, GRU state 128, one layer)"
    if model == "mamba4rec":
        layers = 2
        args = dict(hidden_size=64, num_layers=layers, dropout=dropout, mamba=MAMBA, residual=layers > 1)
        return "Mamba4Rec", args, "two layers; residual as the authors' code sets it (only when num_layers > 1)"
    if model == "echomamba4rec":
        filter_len = linear_fft_length(max_len)  # a power of two >= 2 * max_len - 1
        args = dict(hidden_size=64, num_layers=1, dropout=dropout, mamba=MAMBA, filter_len=filter_len)
        return "EchoMamba4Rec", args, f"one layer; filter_len {filter_len} >= 2 * max_seq_len - 1"
    if model == "sigma":
        args = dict(hidden_size=64, num_layers=1, dropout=dropout, mamba=MAMBA, flip_range=5, partial_flip=True,
                    ds_gate=True, fe_gru=True, residual=True)  # fmt: skip
        note = (
            "one layer, r = 5 (the paper's best on Beauty, used everywhere); ablations (Table 4):\n"
            "# partial_flip: false (whole flip), ds_gate: false, fe_gru: false. residual: false is the\n"
            "# authors' one-layer code (no input added before the LayerNorm; docs/models.md)"
        )
        return "SIGMA", args, note
    raise ValueError(f"unknown model {model!r}")


def recipe(data: str, model: str) -> str:
    dataset, dropout, max_len = DATA_SETS[data]
    class_name, init_args, note = backbone(model, dropout, max_len)
    run_name = f"{data}-{model}"
    return f"""# {class_name} on {data} with the papers' protocol (SIGMA paper, Liu et al. 2024; docs/models.md):
# 5-core, chronological leave-one-out, every training prefix, full ranking, batch 2048, Adam 1e-3,
# d = 64, dropout {dropout}, max length {max_len}, early stopping on val/NDCG@10 with patience 10.
# Backbone: {note}.
# Data: the named set {dataset}, downloaded, verified and converted on first use (docs/data.md); a
# file of your own instead: --data.path FILE. On a CPU add --data.bucket_by_length true (batches
# of similar length: several times faster; the papers shuffle uniformly).
# Written by tools/make_recipes.py: edit the table there, not this file.
seed_everything: 42
model:
  backbone:
    class_path: sigma_lightning.models.{class_name}
    init_args: {flow(init_args)}
  top_k: [5, 10, 20]
data:
  dataset: {dataset}
  max_seq_len: {max_len}
  batch_size: 2048
  min_user_interactions: 5
  min_item_interactions: 5
optimizer:
  class_path: torch.optim.Adam
  init_args:
    lr: 0.001
trainer:
  max_epochs: 300
  accelerator: auto
  devices: auto
  log_every_n_steps: 20
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args:
      save_dir: runs
      name: {run_name}
"""


def backbone_section(model: str) -> str:
    """backbones/<model>.yaml: the model section alone (Amazon's dropout 0.3: use 0.2 on MovieLens)."""
    max_len = BACKBONE_FILES["filter_max_len"] if model == "echomamba4rec" else BACKBONE_FILES["max_len"]
    class_name, init_args, note = backbone(model, BACKBONE_FILES["dropout"], max_len)
    return f"""# {class_name}, the papers' settings with dropout 0.3 (Amazon, Yelp; 0.2 on MovieLens).
# Backbone: {note}.
# Written by tools/make_recipes.py: edit the table there, not this file.
model:
  backbone:
    class_path: sigma_lightning.models.{class_name}
    init_args: {flow(init_args)}
"""


def main() -> None:
    for data in DATA_SETS:
        (CONFIGS / data).mkdir(exist_ok=True)
        for model in MODELS:
            (CONFIGS / data / f"{model}.yaml").write_text(recipe(data, model))
        # the data set's own recipe: SASRec, logged under the data set's name
        (CONFIGS / f"{data}.yaml").write_text(recipe(data, "sasrec").replace(f"name: {data}-sasrec", f"name: {data}"))
    (CONFIGS / "backbones").mkdir(exist_ok=True)
    for model in MODELS:
        (CONFIGS / "backbones" / f"{model}.yaml").write_text(backbone_section(model))


if __name__ == "__main__":
    main()
