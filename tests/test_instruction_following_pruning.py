"""IFPruning's pieces on a tiny LLaMA: SoftTopK, the mask head, masking, gathering, export and per-prompt generation."""
from __future__ import annotations

import pytest
import torch

import lightning_align
from lightning_align.algorithms.instruction_following_pruning import (
    IFPruningLM, MaskHead, SparsityPredictor, ffn_masks, gather_mlps, hard_topk, neuron_prior, prompt_states,
    soft_topk, swapped_mlps,
)
from lightning_align.models.checkpoint import read_metadata
from lightning_align.models.mlp_width import mlp_widths

K = 24  # of the tiny model's 64 FFN neurons


def test_soft_topk_keeps_exactly_k_and_its_gradient_keeps_the_budget():
    logits = torch.randn(3, 5, 64, requires_grad=True)
    mask = soft_topk(logits, K, temperature=0.5)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert (mask.sum(-1) == K).all()
    assert torch.equal(mask.bool(), hard_topk(logits.detach(), K))
    mask.sum().backward()  # the total is k whatever the logits: the relaxation's gradient of it must vanish
    assert logits.grad.abs().max() < 1e-4
    logits.grad = None
    weights = torch.randn(64)
    (soft_topk(logits, K) * weights).sum().backward()
    assert logits.grad.abs().sum() > 0
    assert logits.grad.sum(-1).abs().max() < 1e-4  # it moves mass between neurons, never the count


def _predictor(model, hidden: int = 16, layers: int = 1) -> SparsityPredictor:
    head = MaskHead(model.config.hidden_size, hidden, len(mlp_widths(model)), mlp_widths(model)[0])
    return SparsityPredictor(head, layers)


def test_gradients_reach_the_predictor_through_the_masked_llm(tiny_lm):
    predictor = _predictor(tiny_lm)
    ids = torch.randint(3, 300, (2, 12))
    logits = predictor(tiny_lm, ids[:, :4], torch.ones(2, 4, dtype=torch.long))
    with ffn_masks(tiny_lm, soft_topk(logits, K)):
        loss = tiny_lm(input_ids=ids, labels=ids).loss
    loss.backward()
    for param in predictor.head.parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0
    # the predictor reads the LLM's own first layer, which learns from both paths
    assert tiny_lm.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_prompt_states_read_only_the_first_layers(tiny_lm):
    ids = torch.randint(3, 300, (2, 6))
    mask = torch.ones_like(ids)
    before = prompt_states(tiny_lm, ids, mask, 1)
    with torch.no_grad():
        tiny_lm.model.layers[1].mlp.down_proj.weight.mul_(5.0)
    assert torch.allclose(before, prompt_states(tiny_lm, ids, mask, 1))
    assert len(tiny_lm.model.layers) == 2


def test_gathered_ffns_equal_the_masked_full_model(tiny_lm):
    torch.manual_seed(0)
    mask = hard_topk(torch.randn(2, 64), K)
    ids = torch.randint(3, 300, (1, 10))
    with torch.no_grad(), ffn_masks(tiny_lm, mask[None].float()):
        masked = tiny_lm(input_ids=ids).logits
    gathered = gather_mlps(tiny_lm, mask)
    assert [mlp.down_proj.in_features for mlp in gathered] == [K, K]
    with torch.no_grad(), swapped_mlps(tiny_lm, gathered):
        dense = tiny_lm(input_ids=ids).logits
    assert torch.allclose(masked, dense, atol=1e-5)
    assert mlp_widths(tiny_lm) == [64, 64]  # the full model is untouched


def test_neuron_prior_ranks_a_neuron_that_contributes_more_first(tiny_lm):
    with torch.no_grad():
        tiny_lm.model.layers[1].mlp.up_proj.weight[7].mul_(50.0)
        tiny_lm.model.layers[0].mlp.down_proj.weight[:, 3].mul_(50.0)
    ids = torch.randint(3, 300, (2, 8))
    prior = neuron_prior(tiny_lm, [(ids, torch.ones_like(ids))])
    assert prior.shape == (2, 64) and prior[1].argmax() == 7 and prior[0].argmax() == 3
    padded = torch.cat([ids, torch.randint(3, 300, (2, 4))], 1)  # tokens under a zero mask do not count
    mask = torch.cat([torch.ones_like(ids), torch.zeros(2, 4, dtype=torch.long)], 1)
    assert torch.allclose(prior, neuron_prior(tiny_lm, [(padded, mask)]), atol=1e-4)


def _ifpruning(tiny_lm) -> IFPruningLM:
    torch.manual_seed(1)
    return IFPruningLM(tiny_lm, _predictor(tiny_lm), K, prompt_tokens=4).eval()


def test_generation_selects_once_per_prompt_and_matches_masked_decoding(tiny_lm):
    model = _ifpruning(tiny_lm)
    prompts = [torch.randint(3, 300, (5,)), torch.randint(3, 300, (3,))]
    ids = torch.zeros(2, 5, dtype=torch.long)  # left padding, as sampling pads
    attention = torch.zeros_like(ids)
    for i, prompt in enumerate(prompts):
        ids[i, 5 - len(prompt):], attention[i, 5 - len(prompt):] = prompt, 1
    out = model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out.shape[0] == 2 and torch.equal(out[:, :5], ids)
    for i, prompt in enumerate(prompts):
        mask = model.select(prompt[None], torch.ones(1, len(prompt), dtype=torch.long))
        with torch.no_grad(), ffn_masks(tiny_lm, mask.float()):
            expected = tiny_lm.generate(input_ids=prompt[None], max_new_tokens=6, do_sample=False, pad_token_id=0)
        new = expected[0, len(prompt):]
        assert torch.equal(out[i, 5:5 + len(new)], new)


def test_export_reloads_through_load_pretrained(tiny_lm, tokenizer, tmp_path):
    model = _ifpruning(tiny_lm)
    model.save_with_predictor(tmp_path / "ifp", tokenizer, {"stage": "ifprune"})
    assert read_metadata(tmp_path / "ifp")["ifpruning"]["active_width"] == K
    loaded = lightning_align.load_pretrained(tmp_path / "ifp")
    assert isinstance(loaded, IFPruningLM) and loaded.active_width == K
    ids = torch.randint(3, 300, (2, 9))
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, loaded(input_ids=ids).logits, atol=1e-5)
    masks = loaded.select(ids[:, :4], torch.ones(2, 4, dtype=torch.long))
    assert (masks.sum(-1) == K).all()


def test_copy_task_scores_and_splits():
    from lightning_align.data.copy_task import copy_records, copy_score

    train, heldout = copy_records(50, 0), copy_records(20, 0, heldout=True)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    assert all(r["prompt"] == f"repeat:{r['response']} =" for r in train)
    prompt = "repeat: alpha beta gamma ="
    assert copy_score(prompt, " alpha beta gamma") == 1.0
    assert copy_score(prompt, " alpha gamma beta") == 1 / 3
    assert copy_score(prompt, " alpha beta gamma gamma gamma gamma") == 0.5


def test_prompts_selecting_the_same_neurons_share_one_gathered_copy(tiny_lm, monkeypatch):
    from lightning_align.algorithms import instruction_following_pruning as ifp

    calls = []
    monkeypatch.setattr(ifp, "gather_mlps", lambda model, mask: calls.append(mask) or gather_mlps(model, mask))
    model = _ifpruning(tiny_lm)
    prompt = torch.randint(3, 300, (1, 5))
    out = model.generate(input_ids=prompt.repeat(3, 1), max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert len(calls) == 1 and torch.equal(out[0], out[2])
    with pytest.raises(ValueError, match="one sequence per prompt"):
        model.generate(input_ids=prompt, max_new_tokens=2, num_return_sequences=2)
