"""Every family with a block view: block removal, width surgery, export and reload, on tiny random models."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from lightning_align.algorithms.width_pruner import neuron_sensitivity
from lightning_align.errors import ConfigError
from lightning_align.models.blocks import Block, count_parameters, remove_blocks, removed_blocks, skipping
from lightning_align.models.checkpoint import load_pretrained, read_metadata, save_model_dir
from lightning_align.models.mlp_width import mlp_modules, mlp_widths, slice_mlp_widths
from tests.tiny_decoders import FAMILIES, single_thread, tiny_decoder, token_batch

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
# 4 layers (gemma: sliding, full, sliding, full): a lone attention (0), a whole layer (1), a lone MLP (2)
BLOCKS = [Block(0, "attn"), Block(1, "attn"), Block(1, "mlp"), Block(2, "mlp")]


def logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(tokens).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_blocks_equals_skipping_them_and_generation_keeps_its_cache(family: str) -> None:
    model, tokens = tiny_decoder(family, layers=4), token_batch()
    with skipping(model, BLOCKS):
        skipped = logits(model, tokens)
    pruned = remove_blocks(copy.deepcopy(model), BLOCKS)
    assert torch.equal(logits(pruned, tokens), skipped)
    assert not torch.allclose(logits(model, tokens), skipped, atol=1e-3)
    assert removed_blocks(pruned) == [Block(0, "attn"), Block(1, "mlp")]
    if family.startswith("gemma"):
        assert pruned.config.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
    prompt = token_batch(batch=1, length=5)  # 5 + 8 tokens outrun the sliding window of 4
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(pruned.generate(prompt, use_cache=True, **kwargs),
                       pruned.generate(prompt, use_cache=False, **kwargs))


def mask_neurons(model: torch.nn.Module, keep: list[torch.Tensor]) -> list:
    """Zero every neuron outside ``keep`` at the input of ``down_proj`` (as width pruning masks them)."""
    handles = []
    for mlp, index in zip(mlp_modules(model), keep):
        mask = torch.zeros(mlp.down_proj.in_features)
        mask[index] = 1.0
        handles.append(mlp.down_proj.register_forward_pre_hook(lambda _m, args, mask=mask: (args[0] * mask,)))
    return handles


@pytest.mark.parametrize("family", FAMILIES)
def test_width_surgery_gives_the_masked_logits(family: str) -> None:
    model, tokens = remove_blocks(tiny_decoder(family, layers=3), [Block(1, "mlp")]), token_batch()
    generator = torch.Generator().manual_seed(0)
    keep = [torch.randperm(64, generator=generator)[:width].sort().values for width in (40, 24)]
    handles = mask_neurons(model, keep)
    masked = logits(model, tokens)
    for handle in handles:
        handle.remove()
    sliced = slice_mlp_widths(copy.deepcopy(model), keep)
    assert mlp_widths(sliced) == [40, 24]
    torch.testing.assert_close(logits(sliced, tokens), masked, atol=1e-5, rtol=0)


def test_fused_gate_up_sensitivity_adds_both_halves_of_a_neuron() -> None:
    model, tokens = tiny_decoder("phi3", layers=1), token_batch()
    model(tokens, labels=tokens).loss.backward()
    mlp = mlp_modules(model)[0]
    per_row = (mlp.gate_up_proj.weight * mlp.gate_up_proj.weight.grad).abs().sum(1)
    expected = per_row[:64] + per_row[64:] + (mlp.down_proj.weight * mlp.down_proj.weight.grad).abs().sum(0)
    torch.testing.assert_close(neuron_sensitivity(mlp), expected)


def test_width_surgery_refuses_a_family_without_a_block_view() -> None:
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    with pytest.raises(ConfigError, match=r"model type 'gpt2' has no MHA/MLP block view \(supported: llama, .*phi3"):
        mlp_modules(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_compact_export_reloads_exactly_and_plain_transformers_refuses_it(family: str, tmp_path: Path) -> None:
    pruned, tokens = remove_blocks(tiny_decoder(family, layers=4, tie=True), BLOCKS), token_batch()
    slice_mlp_widths(pruned, [torch.arange(48), torch.arange(32)])
    out = save_model_dir(pruned, None, tmp_path / "compact")
    structure = read_metadata(out)["structure"]
    assert structure["model_type"] == family and structure["intermediate_sizes"] == [48, 32]
    reloaded = load_pretrained(out)
    assert torch.equal(logits(reloaded, tokens), logits(pruned, tokens))
    assert count_parameters(reloaded) == count_parameters(pruned)
    with pytest.raises(ValueError, match="load it with lightning_align.load_pretrained"):
        AutoModelForCausalLM.from_pretrained(out, local_files_only=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_compatible_export_loads_exactly_in_plain_transformers(family: str, tmp_path: Path) -> None:
    pruned = remove_blocks(tiny_decoder(family, layers=4), BLOCKS, export="dense_compatible")
    tokens = token_batch()
    out = save_model_dir(pruned, None, tmp_path / "dense")
    assert read_metadata(out)["structure"] == {"zeroed_blocks": [{"layer": 0, "kind": "attn"},
                                                                 {"layer": 1, "kind": "mlp"}]}
    plain = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert torch.equal(logits(plain, tokens), logits(pruned, tokens))
    assert not plain.model.layers[0].self_attn.o_proj.weight.any()
    reloaded = load_pretrained(out)  # compact in memory again, and saved zeroed again
    assert removed_blocks(reloaded, "dense_compatible") == removed_blocks(pruned)
    assert count_parameters(reloaded) == count_parameters(pruned)
    assert torch.equal(logits(reloaded, tokens), logits(pruned, tokens))


def test_pipeline_refuses_width_pruning_of_an_unsupported_family_at_planning(tmp_path: Path, capsys) -> None:
    from lightning_align.cli import main

    model_dir = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16)).save_pretrained(model_dir)
    (model_dir / "model.safetensors").unlink()  # planning must not need the weights
    (model_dir / "tokenizer_config.json").write_text("{}")  # ... and checks that a tokenizer is there by name only
    assert main(["run", f"run.dir={tmp_path}", "pipeline=pretrained_prune_width", f"model.path={model_dir}"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: config key 'stages.prune.trainer.callbacks.0'")
    assert "model type 'gpt2' has no MHA/MLP block view (supported: llama, mistral, qwen2, qwen3" in line
