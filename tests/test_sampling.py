import pytest
import torch

from lightning_align.algorithms.sampling import SamplingConfig, sample_responses, sequence_logprobs
from lightning_align.data.preference import (
    encode_pairs, encode_prompt, encode_response,
)
from lightning_align.errors import ConfigError

GREEDY = SamplingConfig(max_new_tokens=8, temperature=0.0, batch_size=8)


def _greedy_without_cache(model, ids: list[int], steps: int, stops: tuple[int, ...]) -> list[int]:
    seq = list(ids)
    for _ in range(steps):
        token = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
        if token in stops:
            break
        seq.append(token)
    return seq[len(ids):]


def test_cached_left_padded_greedy_equals_full_recompute(tiny_lm, tokenizer):
    prompts = ["the quick", "a class defines attributes and methods"]
    out = sample_responses(tiny_lm, tokenizer, prompts, 1, GREEDY, None)
    for prompt, (text,) in zip(prompts, out):
        expected = _greedy_without_cache(tiny_lm, encode_prompt(tokenizer, prompt), 8, (tokenizer.eos_token_id,))
        assert text == tokenizer.decode(expected, skip_special_tokens=True)


def test_same_seed_same_samples_different_seed_differs(tiny_lm, tokenizer):
    config = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.95, batch_size=3)
    draw = lambda seed: sample_responses(tiny_lm, tokenizer, ["the for", "raise"], 3, config,
                                         torch.Generator().manual_seed(seed))
    first = draw(1)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    assert first == draw(1), "independent of the global RNG state"
    assert torch.equal(torch.get_rng_state(), state), "the global RNG is left as it was"
    assert first != draw(2)
    assert len(first) == 2 and all(len(r) == 3 for r in first)


def test_stops_at_every_eos_id_of_the_generation_config(tiny_lm, tokenizer):
    prompt = "the quick"
    free = _greedy_without_cache(tiny_lm, encode_prompt(tokenizer, prompt), 8, ())
    first_seen = [i for i, t in enumerate(free) if t not in free[:i] and t != tokenizer.eos_token_id]
    assert len(first_seen) >= 3, "the tiny model's greedy continuation must offer distinct tokens to stop at"
    for i in first_seen[1:3]:
        for eos_ids in ([free[i], tokenizer.eos_token_id], [tokenizer.eos_token_id, free[i]]):
            tiny_lm.generation_config.eos_token_id = eos_ids
            (text,), = sample_responses(tiny_lm, tokenizer, [prompt], 1, GREEDY, None)
            assert text == tokenizer.decode(free[:i], skip_special_tokens=True)


def test_prompt_and_response_fit_the_context(tiny_lm, tokenizer):
    context = tiny_lm.config.max_position_embeddings
    long_prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)
    ids = encode_prompt(tokenizer, long_prompt)
    assert len(ids) > context
    (text,), = sample_responses(tiny_lm, tokenizer, [long_prompt], 1, GREEDY, None)
    kept = ids[-(context - GREEDY.max_new_tokens):]
    assert text == tokenizer.decode(_greedy_without_cache(tiny_lm, kept, 8, (tokenizer.eos_token_id,)),
                                    skip_special_tokens=True), "the prompt loses tokens from the left"
    with pytest.raises(ConfigError, match="sampling.max_new_tokens"):
        sample_responses(tiny_lm, tokenizer, ["the"], 1, SamplingConfig(max_new_tokens=context, temperature=0), None)


def test_top_p_near_zero_is_greedy(tiny_lm, tokenizer):
    nucleus = SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=1e-6, batch_size=8)
    prompts = ["the quick", "numbers like"]
    assert sample_responses(tiny_lm, tokenizer, prompts, 2, nucleus, torch.Generator().manual_seed(0)) == \
        [r * 2 for r in sample_responses(tiny_lm, tokenizer, prompts, 1, GREEDY, None)]


def test_sequence_logprobs_mask_prompt_and_padding(tiny_lm, tokenizer):
    prompts, responses = ["the quick brown", "a"], [" fox jumps", " class defines attributes"]
    ids, mask, response_mask = encode_pairs(tokenizer, prompts, responses, max_length=32)
    batched = sequence_logprobs(tiny_lm, ids, mask, response_mask)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        p_ids, r_ids = encode_prompt(tokenizer, p), encode_response(tokenizer, r)
        with torch.no_grad():
            logps = torch.log_softmax(tiny_lm(input_ids=torch.tensor([p_ids + r_ids])).logits[0], -1)
        by_hand = sum(float(logps[len(p_ids) + j - 1, t]) for j, t in enumerate(r_ids))
        assert abs(float(batched[i]) - by_hand) < 1e-4
    averaged = sequence_logprobs(tiny_lm, ids, mask, response_mask, average=True)
    assert torch.allclose(averaged, batched / response_mask[:, 1:].sum(-1))


def test_sequence_logprobs_equal_the_full_logits_path_with_padding(tiny_lm, tokenizer):
    """Logits only from the earliest response position on, no KV cache: DPO log-probs, loss and gradients as before
    (full logits, fp32 log_softmax) for prompts of different lengths, right padding included."""
    from lightning_align.algorithms.losses import dpo_loss

    prompts = ["the quick brown fox jumps", "a class", "over the lazy", "the dog"]
    responses = [" fox", " class defines attributes of it", " dog", " the end of a longer answer here"]
    ids, mask, response_mask = encode_pairs(tokenizer, prompts, responses, max_length=32)
    assert mask[:, -1].sum() < len(prompts) and response_mask.float().argmax(-1).min() > 1
    calls = []
    tiny_lm.register_forward_pre_hook(lambda _, args, kwargs: calls.append(kwargs), with_kwargs=True)
    tiny_lm.train()

    def loss_and_grads(logps):
        loss, _ = dpo_loss(logps[:2], logps[2:], torch.tensor([-9.0, -30.0]), torch.tensor([-8.0, -40.0]))
        return loss, torch.autograd.grad(loss, list(tiny_lm.parameters()))

    logits = tiny_lm(input_ids=ids, attention_mask=mask).logits[:, :-1]
    old_tokens = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    old = (old_tokens * response_mask[:, 1:]).sum(-1)
    new = sequence_logprobs(tiny_lm, ids, mask, response_mask)
    assert calls[-1]["use_cache"] is False and 0 < calls[-1]["logits_to_keep"] < ids.shape[1]
    assert torch.allclose(new, old, atol=1e-5)
    (old_loss, old_grads), (new_loss, new_grads) = loss_and_grads(old), loss_and_grads(new)
    assert torch.allclose(new_loss, old_loss, atol=1e-6)
    assert all(torch.allclose(n, o, atol=1e-6) for n, o in zip(new_grads, old_grads))


def test_encode_pairs_truncates_prompt_from_the_left(tokenizer):
    ids, mask, response_mask = encode_pairs(tokenizer, ["the quick brown fox jumps over"], [" the lazy dog"], 12)
    p_ids, r_ids = encode_prompt(tokenizer, "the quick brown fox jumps over"), encode_response(tokenizer, " the lazy dog")
    assert len(r_ids) < 12 < len(p_ids) + len(r_ids)
    assert ids.shape[1] == 12 and int(mask.sum()) == 12
    assert ids[0].tolist() == p_ids[len(p_ids) + len(r_ids) - 12:] + r_ids
    assert ids[0, response_mask[0]].tolist() == r_ids


def test_token_logprobs_match_the_full_log_softmax_and_its_gradient(tiny_lm):
    """Chunked logsumexp + hand-written backward = log_softmax().gather(), values and gradients, any chunking."""
    from benchmarks.logprob_memory import full_log_softmax_logprobs
    from lightning_align.algorithms.sampling import token_logprobs

    logits = (3 * torch.randn(3, 7, 300, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, 300, (3, 7))
    weights = torch.randn(3, 7, dtype=torch.float64)
    (expected,) = torch.autograd.grad((full_log_softmax_logprobs(logits, targets).double() * weights).sum(), logits)
    for chunk in (300, 3 * 300 * 2, 2**22):
        got = token_logprobs(logits, targets, chunk_elements=chunk)
        assert torch.allclose(got.double(), full_log_softmax_logprobs(logits, targets).double(), atol=1e-5)
        (grad,) = torch.autograd.grad((got.double() * weights).sum(), logits)
        assert torch.allclose(grad, expected, atol=1e-6)
    ids = torch.randint(3, 300, (2, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        old = full_log_softmax_logprobs(tiny_lm(input_ids=ids).logits[:, :-1], ids[:, 1:]).sum(-1)
        assert torch.allclose(sequence_logprobs(tiny_lm, ids, mask, mask), old, atol=1e-5)


def test_logprob_memory_benchmark_quick_mode_runs(capsys):
    from benchmarks.logprob_memory import main

    main(["--quick"])
    out = capsys.readouterr().out
    assert "full_log_softmax" in out and "ratio (full / variant" in out
