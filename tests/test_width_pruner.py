"""Width pruning: sensitivity, cubic schedule, masked ≡ sliced logits, exact target widths, reloadable exports."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lightning_align.algorithms.width_pruner import WidthPruner, cubic_width, neuron_sensitivity
from lightning_align.errors import ConfigError
from lightning_align.models.checkpoint import load_pretrained, read_metadata, save_model_dir
from lightning_align.models.mlp_width import mlp_widths, slice_mlp_widths, width_structure

WIDE = 40


@pytest.fixture
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=WIDE, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))


def test_cubic_width_descends_to_exact_target() -> None:
    widths = [cubic_width(step, 10, 30, 104, 40) for step in range(40)]
    assert widths[:11] == [104] * 11
    assert widths[30:] == [40] * 10
    assert all(b <= a for a, b in zip(widths, widths[1:]))
    assert widths[20] == 40 + 8  # (104 - 40) * (1 - 1/2)^3 = 8


def test_sensitivity_is_abs_weight_times_grad_per_neuron(model: LlamaForCausalLM, tokens: torch.Tensor) -> None:
    model(tokens, labels=tokens).loss.backward()
    mlp = model.model.layers[1].mlp
    j = 7
    expected = sum(
        (w.weight[j] * w.weight.grad[j]).abs().sum() for w in (mlp.gate_proj, mlp.up_proj)
    ) + (mlp.down_proj.weight[:, j] * mlp.down_proj.weight.grad[:, j]).abs().sum()
    score = neuron_sensitivity(mlp)
    assert score.shape == (WIDE,)
    assert score[j] == pytest.approx(float(expected.detach()), rel=1e-5)


def test_prune_to_drops_the_lowest_ema_scores(model: LlamaForCausalLM) -> None:
    pruner = WidthPruner(model, target_width=10)
    pruner.scores.copy_(torch.arange(3 * WIDE, dtype=torch.float).flip(0).view(3, WIDE))
    assert pruner.prune_to(35) == 15
    assert pruner.keep_indices()[0].tolist() == list(range(35))
    pruner.scores[0, 0] = -1.0  # now the weakest live neuron of layer 0
    pruner.prune_to(34)
    assert pruner.keep_indices()[0].tolist() == list(range(1, 35))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_masked_model_equals_sliced_model(model: LlamaForCausalLM, tokens: torch.Tensor, scope: str) -> None:
    pruner = WidthPruner(model, target_width=15, scope=scope, min_width=4)
    pruner.scores.copy_(torch.rand(3, WIDE, generator=torch.Generator().manual_seed(2)))
    pruner.scores[2] *= 0.1  # global ranking empties layer 2 first, down to its protected minimum
    pruner.prune_to(15)
    pruner.attach()
    with torch.no_grad():
        masked = model(tokens).logits
    pruner.detach()
    with torch.no_grad():
        unmasked = model(tokens).logits
    sliced_model = slice_mlp_widths(copy.deepcopy(model), pruner.keep_indices())
    with torch.no_grad():
        sliced = sliced_model(tokens).logits
    assert not torch.allclose(masked, unmasked, atol=1e-4)
    torch.testing.assert_close(sliced, masked, atol=1e-5, rtol=1e-5)
    assert sum(mlp_widths(sliced_model)) == 45
    if scope == "layer":
        assert mlp_widths(sliced_model) == [15, 15, 15]
    else:
        assert mlp_widths(sliced_model)[2] == 4


def test_gradual_pruning_while_training_reaches_target(model: LlamaForCausalLM, tokens: torch.Tensor) -> None:
    model.train()
    pruner = WidthPruner(model, target_width=15, beta=0.8)
    pruner.attach()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for step in range(12):
        model(tokens, labels=tokens).loss.backward()
        pruner.accumulate()
        optimizer.step()
        optimizer.zero_grad()
        pruner.prune_to(cubic_width(step, 2, 10, WIDE, 15))
        history.append(pruner.kept_widths()[0])
    assert pruner.kept_widths() == [15, 15, 15]
    assert history[:2] == [WIDE, WIDE] and all(b <= a for a, b in zip(history, history[1:]))
    assert len(set(history)) > 3, "removal is spread over the window, not done in one cut"
    restored = WidthPruner(model, target_width=15)
    restored.load_state_dict(pruner.state_dict())
    assert torch.equal(restored.masks, pruner.masks) and torch.equal(restored.scores, pruner.scores)


def test_uniform_export_is_a_plain_hf_checkpoint(model: LlamaForCausalLM, tokens: torch.Tensor,
                                                 tmp_path: Path) -> None:
    keep = [torch.randperm(WIDE, generator=torch.Generator().manual_seed(i))[:15] for i in range(3)]
    slice_mlp_widths(model, keep)
    assert model.config.intermediate_size == 15 and width_structure(model) == {}
    save_model_dir(model, None, tmp_path / "out", {"stage": "prune"})
    assert "structure" not in read_metadata(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, model(tokens).logits)


def test_per_layer_export_rebuilds_from_structure(model: LlamaForCausalLM, tokens: torch.Tensor,
                                                  tmp_path: Path) -> None:
    slice_mlp_widths(model, [torch.arange(12), torch.arange(5, 30), torch.tensor([0, 39])])
    structure = width_structure(model)
    assert structure == {"intermediate_sizes": [12, 25, 2]} and model.config.intermediate_size == WIDE
    save_model_dir(model, None, tmp_path / "out", {"stage": "prune"})
    assert read_metadata(tmp_path / "out")["structure"] == {**structure, "model_type": "llama"}
    rebuilt = load_pretrained(tmp_path / "out")
    assert mlp_widths(rebuilt) == [12, 25, 2]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(tokens).logits, model(tokens).logits)


def test_bad_targets_are_rejected(model: LlamaForCausalLM) -> None:
    with pytest.raises(ConfigError, match="'target_width'"):
        WidthPruner(model, target_width=WIDE + 1)
    with pytest.raises(ConfigError, match="'min_width'"):
        WidthPruner(model, target_width=4, min_width=5)
