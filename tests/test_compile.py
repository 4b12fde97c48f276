"""model.compile: torch.compile of the backbone gives the eager model's outputs, loss and gradients,
keeps the weights' names (checkpoints load with compile on or off) and works through `sigma fit`.

Most cases use the aot_eager backend, which traces forward and backward through AOTAutograd as
inductor does but generates no code (seconds instead of minutes on a CPU); one slow case runs inductor."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from sigma_lightning.cli import run_sigma
from sigma_lightning.errors import ConfigError
from sigma_lightning.models import SIGMA, Mamba4Rec, SASRec
from sigma_lightning.module import SeqRecModule
from sigma_lightning.nn.mamba_config import MambaConfig
from tests.test_cli import TINY as CLI_TINY

NUM_ITEMS = 30
BACKBONES = {
    "sasrec": lambda: SASRec(hidden_size=16, num_layers=2, num_heads=2, inner_size=32, dropout=0.0,
                             attn_dropout=0.0, max_seq_len=12),  # fmt: skip
    "mamba4rec": lambda: Mamba4Rec(hidden_size=16, num_layers=1, dropout=0.0, mamba=MambaConfig(d_state=4)),
    "sigma": lambda: SIGMA(hidden_size=16, num_layers=1, dropout=0.0, mamba=MambaConfig(d_state=4)),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test traces from scratch and counts only its own graphs."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def pair(name: str, **compile_settings) -> tuple[SeqRecModule, SeqRecModule]:
    """The same model twice (same seed): eager, and with `compile_settings`."""
    models = []
    for settings in ({}, {"compile": True, **compile_settings}):
        torch.manual_seed(0)
        models.append(SeqRecModule(BACKBONES[name](), num_items=NUM_ITEMS, **settings))
    return models[0], models[1]


def padded_batch(batch_size: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """Histories of 1..length items, left-aligned, zero-padded (docs/architecture.md), and targets."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, NUM_ITEMS + 1, (batch_size, length), generator=generator)
    lengths = torch.randint(1, length + 1, (batch_size,), generator=generator)
    ids[torch.arange(length) >= lengths.unsqueeze(1)] = 0  # (B, L)
    return {"input_ids": ids, "target": torch.randint(1, NUM_ITEMS + 1, (batch_size,), generator=generator)}


def loss_and_grads(model: SeqRecModule, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """The training loss of `batch` (as training_step computes it) and every parameter's gradient."""
    model.zero_grad(set_to_none=True)
    user = model(batch["input_ids"])  # (B, D)
    loss = model.loss(user, model.item_embedding.weight[1:], batch["target"] - 1)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow  # 35-120 s each on the shared 2-core machine: three traces per backbone
@pytest.mark.parametrize("name", list(BACKBONES))
def test_a_compiled_backbone_gives_the_eager_loss_gradients_and_representations(name):
    eager, compiled = pair(name, compile_backend="aot_eager")
    # Two widths and batch sizes (the second shape makes dynamo retrace, as trimmed batches do),
    # then the evaluation mode under no_grad (a graph of its own).
    for batch in (padded_batch(6, 12, seed=1), padded_batch(5, 7, seed=2)):
        loss_e, grads_e = loss_and_grads(eager, batch)
        loss_c, grads_c = loss_and_grads(compiled, batch)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        assert grads_c.keys() == grads_e.keys() and len(grads_e) == len(list(eager.parameters()))
        for key in grads_e:
            torch.testing.assert_close(grads_c[key], grads_e[key], rtol=1e-4, atol=1e-6, msg=key)
    eager.eval(), compiled.eval()
    with torch.no_grad():
        batch = padded_batch(4, 12, seed=3)
        torch.testing.assert_close(compiled(batch["input_ids"]), eager(batch["input_ids"]), rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] >= 2  # the backbone really went through torch.compile


def test_only_the_backbone_is_compiled_and_the_weights_keep_their_names(tmp_path):
    eager, compiled = pair("mamba4rec", compile_backend="aot_eager")
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no `_orig_mod.` anywhere
    assert not any("_orig_mod" in key for key in compiled.state_dict())
    assert type(compiled.backbone) is type(eager.backbone)  # not wrapped in an OptimizedModule
    ids = padded_batch(4, 12, seed=4)["input_ids"]
    compiled(ids)  # traced (and its weights used) before they are saved
    path = tmp_path / "compiled.pt"
    torch.save(compiled.state_dict(), path)
    torch.manual_seed(1)
    fresh = SeqRecModule(BACKBONES["mamba4rec"](), num_items=NUM_ITEMS)  # uncompiled, other weights
    fresh.load_state_dict(torch.load(path, weights_only=True))  # strict: every key matches
    fresh.eval(), compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids), compiled(ids), rtol=1e-5, atol=1e-6)


def test_training_at_every_position_goes_through_the_compiled_backbone_too():
    eager, compiled = pair("sasrec", compile_backend="aot_eager")
    ids = padded_batch(4, 10, seed=5)["input_ids"]
    graphs = counters["stats"]["unique_graphs"]
    out = compiled.backbone.sequence_output(compiled.item_embedding(ids), ids != 0)  # (B, L, D)
    assert counters["stats"]["unique_graphs"] > graphs
    torch.testing.assert_close(out, eager.backbone.sequence_output(eager.item_embedding(ids), ids != 0))


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"compile_backend": "no-such-backend"}, r"model.compile_backend='no-such-backend': expected one of .*induc"),
        ({"compile_backend": "aot_eager", "compile_mode": "max-autotune"}, r"compile_mode='max-autotune'.*inductor"),
    ],
)  # fmt: skip
def test_a_compile_setting_it_cannot_use_is_named(settings, named):
    with pytest.raises(ConfigError, match=named):
        SeqRecModule(BACKBONES["sasrec"](), num_items=NUM_ITEMS, compile=True, **settings)


@pytest.mark.slow
def test_the_inductor_backend_gives_the_eager_loss_and_gradients():
    """Inductor generates and builds C++ for the forward and the backward: minutes on a busy CPU."""
    eager, compiled = pair("sasrec")  # the default backend
    assert compiled.hparams.compile_backend == "inductor"
    batch = padded_batch(6, 12, seed=6)
    loss_e, grads_e = loss_and_grads(eager, batch)
    loss_c, grads_c = loss_and_grads(compiled, batch)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for key in grads_e:
        torch.testing.assert_close(grads_c[key], grads_e[key], rtol=1e-4, atol=1e-5, msg=key)


TINY = ["--config", "quickstart.yaml", *CLI_TINY]  # the CLI tests' tiny synthetic run


@pytest.mark.slow
def test_sigma_fit_with_compile_and_its_checkpoint_tested_without(tmp_path, recwarn):
    def sigma(subcommand: str, *extra: str):
        where = ["--data.cache_dir", str(tmp_path / "cache"),
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]  # fmt: skip
        return run_sigma([subcommand, *TINY, *where, *extra])

    compiled = ("--model.compile", "true", "--model.compile_backend", "aot_eager")
    cli = sigma("fit", "--trainer.max_epochs", "1", *compiled)
    assert cli.model.hparams.compile is True and counters["stats"]["unique_graphs"] >= 2  # training and validation
    last = tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert not any("_orig_mod" in key for key in checkpoint["state_dict"])

    graphs = counters["stats"]["unique_graphs"]
    eager = sigma("test", "--ckpt_path", str(last), "--model.compile", "false")  # the config's setting wins
    assert eager.model.hparams.compile is False and counters["stats"]["unique_graphs"] == graphs  # nothing traced
    again = sigma("test", "--ckpt_path", str(last), *compiled)
    assert counters["stats"]["unique_graphs"] > graphs
    for name in ("test/HR@10", "test/NDCG@10", "test/loss"):
        torch.testing.assert_close(again.trainer.callback_metrics[name], eager.trainer.callback_metrics[name])
    assert not [w for w in recwarn if "model settings differ" in str(w.message) or "predates" in str(w.message)]


def test_the_compile_settings_are_in_the_command_line_help(capsys):
    with pytest.raises(SystemExit):
        run_sigma(["fit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for setting in ("--model.compile", "--model.compile_mode", "--model.compile_backend"):
        assert setting in help_text
    assert "run the backbone through torch.compile" in help_text
