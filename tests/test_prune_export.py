"""Pruned models save as Hugging Face directories and reload with the same logits."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lightning_align.models.blocks import Block, block_structure, remove_blocks
from lightning_align.models.checkpoint import load_pretrained, read_metadata, save_model_dir
from tests.tiny_decoders import single_thread, tiny_decoder, token_batch

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


def logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(tokens).logits


def test_whole_layer_removal_saves_a_plain_config_with_fewer_layers(tmp_path: Path) -> None:
    pruned, tokens = remove_blocks(tiny_decoder("llama", layers=3), [Block(1, "attn"), Block(1, "mlp")]), token_batch()
    out = save_model_dir(pruned, None, tmp_path / "pruned", {"structure": block_structure(pruned)})
    assert read_metadata(out) == {"structure": {}}
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert reloaded.config.num_hidden_layers == 2
    torch.testing.assert_close(logits(reloaded, tokens), logits(pruned, tokens), atol=1e-5, rtol=0)


def test_partial_removal_is_recorded_and_rebuilt_by_load_pretrained(tmp_path: Path) -> None:
    dense, tokens = tiny_decoder("qwen2", layers=3, tie=True), token_batch()
    blocks = [Block(0, "mlp"), Block(1, "attn"), Block(1, "mlp"), Block(2, "attn")]
    pruned = remove_blocks(copy.deepcopy(dense), blocks)
    out = save_model_dir(pruned, None, tmp_path / "pruned", {"structure": block_structure(pruned)})
    assert read_metadata(out)["structure"] == {"removed_blocks": [{"layer": 0, "kind": "mlp"}, {"layer": 1, "kind": "attn"}],
                                               "model_type": "qwen2"}
    reloaded = load_pretrained(out)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in pruned.parameters())
    torch.testing.assert_close(logits(reloaded, tokens), logits(pruned, tokens), atol=1e-5, rtol=0)
    assert not torch.allclose(logits(dense, tokens), logits(pruned, tokens), atol=1e-3)
