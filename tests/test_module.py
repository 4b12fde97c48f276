import pytest
import torch
import torch.nn.functional as F

from sigma_lightning.errors import ConfigError
from sigma_lightning.models import GRU4Rec
from sigma_lightning.module import SeqRecModule, mask_seen_items


def small_module() -> SeqRecModule:
    """A module in eval mode (no dropout): the same input gives the same output twice."""
    torch.manual_seed(0)
    return SeqRecModule(GRU4Rec(hidden_size=8), num_items=20).eval()


def test_scores_cover_real_items_only():
    """Column j scores item j + 1 by a dot product with its embedding; the padding row is no column."""
    module = small_module()
    ids = torch.randint(1, 21, (4, 6))
    user = module(ids)  # (4, 8)
    scores = module.item_scores(user)
    assert scores.shape == (4, 20)
    torch.testing.assert_close(scores[:, 4], user @ module.item_embedding.weight[5])  # item 5
    with torch.no_grad():
        module.item_embedding.weight[0].fill_(100.0)  # the padding row: ids here hold no padding
    torch.testing.assert_close(module.item_scores(module(ids)), scores)


def test_loss_is_cross_entropy_over_real_items_and_never_uses_padding():
    module = small_module()
    ids = torch.randint(1, 21, (4, 6))
    target = torch.tensor([1, 20, 5, 7])  # item ids; item 1 is column 0
    loss = module.training_step({"input_ids": ids, "target": target}, 0)
    real_items = module.item_embedding.weight[1:]  # (20, 8)
    expected = -F.log_softmax(module(ids) @ real_items.T, dim=1)[torch.arange(4), target - 1].mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert module.item_embedding.weight.grad[0].abs().max() == 0  # padding is neither input nor class
    with torch.no_grad():
        module.item_embedding.weight[0].fill_(100.0)
    torch.testing.assert_close(module.training_step({"input_ids": ids, "target": target}, 0), loss.detach())


def test_mask_seen_items_keeps_the_target():
    scores = torch.zeros(2, 5)
    history = torch.tensor([[1, 3, 0], [2, 0, 0]])
    target = torch.tensor([3, 4])
    out = mask_seen_items(scores, history, target)
    assert out[0].tolist() == [float("-inf"), 0.0, 0.0, 0.0, 0.0]  # item 1 masked, item 3 is the target
    assert out[1].tolist() == [0.0, float("-inf"), 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"num_items": 0}, "model.num_items=0"),
        ({"learning_rate": 0.0}, "model.learning_rate=0.0"),
        ({"learning_rate": -1e-3}, "model.learning_rate=-0.001"),
        ({"learning_rate": float("nan")}, "model.learning_rate=nan"),
        ({"embedding_init_std": 0.0}, "model.embedding_init_std=0.0"),
        ({"top_k": [10, 0]}, "model.top_k[1]=0"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_setting(kwargs, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        SeqRecModule(GRU4Rec(hidden_size=8), **{"num_items": 20, **kwargs})


def test_a_backbone_without_hidden_size_is_named():
    with pytest.raises(ConfigError, match="model.backbone: Linear has no integer attribute `hidden_size`"):
        SeqRecModule(torch.nn.Linear(2, 2), num_items=5)


def test_checkpoint_hparams_hold_no_code(tmp_path):
    module = SeqRecModule(GRU4Rec(hidden_size=8), num_items=20)
    assert "backbone" not in module.hparams  # a module object would need pickle to load
    path = tmp_path / "m.pt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["hyper_parameters"]["num_items"] == 20


def batch_with_history(num_items: int = 20) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(1, num_items + 1, (6, 5))
    return {"input_ids": ids, "history": ids, "target": torch.randint(1, num_items + 1, (6,)), "user": torch.arange(6)}


def test_the_loss_is_a_component_and_the_chunked_one_trains_as_the_full_one():
    from sigma_lightning.losses import ChunkedSoftmax, FullSoftmax

    batch = batch_with_history()
    grads = []
    for loss in (FullSoftmax(), ChunkedSoftmax(chunk_size=7)):
        torch.manual_seed(0)
        module = SeqRecModule(GRU4Rec(hidden_size=8), num_items=20, loss=loss).eval()
        value = module.training_step(batch, 0)
        value.backward()
        grads.append((value.detach(), *(p.grad.clone() for p in module.parameters())))
        assert "loss" not in module.hparams  # an object in hparams would need pickle to load
    for full, chunked in zip(*grads, strict=True):
        torch.testing.assert_close(chunked, full)


@pytest.mark.parametrize("mask_history", [False, True])
def test_scoring_in_item_chunks_gives_the_module_the_same_metrics_and_recommendations(mask_history):
    """score_chunk_size 3 (seven blocks of 20 items) against one block, and against the full
    (B, N) score matrix the module's `_ranking_scores` builds."""
    from sigma_lightning.metrics import target_ranks

    batch = batch_with_history()
    results = []
    for chunk in (3, 32768):
        torch.manual_seed(0)
        module = SeqRecModule(GRU4Rec(hidden_size=8), num_items=20, mask_history=mask_history, score_chunk_size=chunk)
        module.eval()
        module.validation_step(batch, 0)
        recommended = module.recommend_batch(batch, 5, exclude_seen=True)
        results.append((module.val_metrics.compute(), recommended))
        full = module._ranking_scores(batch)  # (B, N)
        full_ranks = module.val_metrics.__class__([10, 20])
        full_ranks.update(target_ranks(full, batch["target"] - 1))
        assert {k: v.item() for k, v in full_ranks.compute().items()} == pytest.approx(
            {k: v.item() for k, v in results[-1][0].items()})  # fmt: skip
    (chunked_metrics, chunked_top), (single_metrics, single_top) = results
    assert {k: v.item() for k, v in chunked_metrics.items()} == {k: v.item() for k, v in single_metrics.items()}
    assert torch.equal(chunked_top["items"], single_top["items"])
    torch.testing.assert_close(chunked_top["scores"], single_top["scores"])


def test_a_bad_score_chunk_size_is_named():
    with pytest.raises(ConfigError, match="model.score_chunk_size=0"):
        SeqRecModule(GRU4Rec(hidden_size=8), num_items=20, score_chunk_size=0)
