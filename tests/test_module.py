import pytest
import torch

from sigma_lightning.models import GRU4Rec
from sigma_lightning.module import SeqRecModule, mask_seen_items


def test_scores_cover_real_items_only_and_loss_never_uses_padding():
    torch.manual_seed(0)
    module = SeqRecModule(GRU4Rec(hidden_size=8), num_items=20)
    ids = torch.randint(1, 21, (4, 6))
    scores = module.item_scores(module(ids))
    assert scores.shape == (4, 20)  # column j is item j + 1; padding (0) is never a class
    batch = {"input_ids": ids, "target": torch.tensor([1, 20, 5, 7])}
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)


def test_mask_seen_items_keeps_the_target():
    scores = torch.zeros(2, 5)
    history = torch.tensor([[1, 3, 0], [2, 0, 0]])
    target = torch.tensor([3, 4])
    out = mask_seen_items(scores, history, target)
    assert out[0].tolist() == [float("-inf"), 0.0, 0.0, 0.0, 0.0]  # item 1 masked, item 3 is the target
    assert out[1].tolist() == [0.0, float("-inf"), 0.0, 0.0, 0.0]


def test_requires_items_and_hidden_size():
    with pytest.raises(ValueError, match="num_items"):
        SeqRecModule(GRU4Rec(hidden_size=8), num_items=0)
    with pytest.raises(TypeError, match="hidden_size"):
        SeqRecModule(torch.nn.Linear(2, 2), num_items=5)


def test_checkpoint_hparams_hold_no_code(tmp_path):
    module = SeqRecModule(GRU4Rec(hidden_size=8), num_items=20)
    assert "backbone" not in module.hparams  # a module object would need pickle to load
    path = tmp_path / "m.pt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["hyper_parameters"]["num_items"] == 20
