"""Block view: enumeration, skip mask, surgery; skip and remove must agree exactly."""
from __future__ import annotations

import copy
import itertools

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from lightning_align.errors import ConfigError
from lightning_align.models.blocks import (
    Block,
    all_blocks,
    block_parameters,
    count_parameters,
    remove_blocks,
    removed_blocks,
    set_skipped,
    skipped_blocks,
    skipping,
)
from tests.tiny_decoders import single_thread, tiny_decoder, token_batch

# a whole layer (1), a lone attention (0) and a lone MLP (2): every surgery path at once
MIXED = [Block(1, "attn"), Block(1, "mlp"), Block(0, "attn"), Block(2, "mlp")]

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


def test_blocks_enumerate_in_stream_order_with_hand_counted_parameters() -> None:
    model = tiny_decoder("llama", layers=2)
    # attn: norm 32 + q 32*32 + k 32*16 + v 32*16 + o 32*32; mlp: norm 32 + gate/up/down 3*32*64
    assert block_parameters(model) == {Block(0, "attn"): 3104, Block(0, "mlp"): 6176, Block(1, "attn"): 3104, Block(1, "mlp"): 6176}
    assert [b.position for b in all_blocks(model)] == [0, 1, 2, 3]
    assert Block.from_json(Block(3, "mlp").to_json()) == Block(3, "mlp")


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3"])
def test_skip_and_remove_give_identical_logits(model_type: str) -> None:
    model, tokens = tiny_decoder(model_type), token_batch()
    with torch.no_grad(), skipping(model, MIXED):
        skipped = model(tokens).logits
        assert skipped_blocks(model) == frozenset(MIXED)
    assert skipped_blocks(model) == frozenset()
    with torch.no_grad():
        dense = model(tokens).logits
        pruned = remove_blocks(copy.deepcopy(model), MIXED)
        removed = pruned(tokens).logits
    assert not torch.allclose(dense, skipped, atol=1e-3)
    assert torch.equal(skipped, removed)
    assert pruned.config.num_hidden_layers == 2 and len(pruned.model.layers) == 2
    assert removed_blocks(pruned) == [Block(0, "attn"), Block(1, "mlp")]


def test_skip_equals_remove_for_every_subset_of_blocks() -> None:
    model, tokens = tiny_decoder("llama", layers=2), token_batch(batch=2, length=6)
    blocks, sizes, total = all_blocks(model), block_parameters(model), count_parameters(model)
    for subset in itertools.chain.from_iterable(itertools.combinations(blocks, k) for k in range(len(blocks) + 1)):
        with torch.no_grad(), skipping(model, subset):
            skipped = model(tokens).logits
        pruned = remove_blocks(copy.deepcopy(model), subset)
        with torch.no_grad():
            assert torch.equal(pruned(tokens).logits, skipped), subset
        assert count_parameters(pruned) == total - sum(sizes[b] for b in subset)


def test_remove_shrinks_parameters_and_numbers_kv_cache_slots_by_layer() -> None:
    model = tiny_decoder("llama", layers=3)
    before, sizes = count_parameters(model), block_parameters(model)
    remove_blocks(model, MIXED)
    assert count_parameters(model) == before - sum(sizes[b] for b in MIXED)
    assert model.model.layers[0].self_attn.__class__.__name__ == "RemovedAttention"
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]


def test_generation_with_kv_cache_after_removing_first_attention() -> None:
    model = remove_blocks(tiny_decoder("llama", layers=3), MIXED)
    prompt = token_batch(batch=1, length=5)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_skip_keeps_parameters_and_starves_skipped_gradients() -> None:
    model, tokens = tiny_decoder("llama", layers=2), token_batch()
    keys = list(model.state_dict())
    set_skipped(model, [Block(0, "mlp")])
    model(tokens, labels=tokens).loss.backward()
    assert list(model.state_dict()) == keys
    assert model.model.layers[0].mlp.up_proj.weight.grad is None
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None
    set_skipped(model, [])
    assert skipped_blocks(model) == frozenset()


def test_replaying_recorded_removals_on_a_model_built_from_the_pruned_config() -> None:
    pruned, tokens = remove_blocks(tiny_decoder("qwen2", layers=3), MIXED), token_batch()
    rebuilt = remove_blocks(AutoModelForCausalLM.from_config(copy.deepcopy(pruned.config)), removed_blocks(pruned))
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(tokens).logits, pruned(tokens).logits)


def test_family_without_block_view_is_refused() -> None:
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    with pytest.raises(ConfigError, match="model type 'gpt2' has no MHA/MLP block view"):
        all_blocks(model)


def test_out_of_range_block_is_refused_before_any_change() -> None:
    model = tiny_decoder("llama", layers=2)
    with pytest.raises(ConfigError, match="refers to layer 5 but the model has 2 layers"):
        remove_blocks(model, [Block(0, "attn"), Block(5, "mlp")])
    assert len(all_blocks(model)) == 4
    with pytest.raises(ConfigError, match="'attn' or 'mlp'"):
        Block(0, "ffn")
