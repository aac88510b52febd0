import torch

from lightning_align.algorithms.sampling import SamplingConfig, sample_responses, sequence_logprobs
from lightning_align.data.preference import (
    encode_pairs, encode_prompt, encode_response,
)

GREEDY = SamplingConfig(max_new_tokens=8, temperature=0.0, batch_size=8)


def _greedy_without_cache(model, ids: list[int], steps: int, eos: int) -> list[int]:
    seq = list(ids)
    for _ in range(steps):
        token = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
        if token == eos:
            break
        seq.append(token)
    return seq[len(ids):]


def test_cached_left_padded_greedy_equals_full_recompute(tiny_lm, tokenizer):
    prompts = ["the quick", "a class defines attributes and methods"]
    out = sample_responses(tiny_lm, tokenizer, prompts, 1, GREEDY, None)
    for prompt, (text,) in zip(prompts, out):
        expected = _greedy_without_cache(tiny_lm, encode_prompt(tokenizer, prompt), 8, tokenizer.eos_token_id)
        assert text == tokenizer.decode(expected, skip_special_tokens=True)


def test_same_seed_same_samples_different_seed_differs(tiny_lm, tokenizer):
    config = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.95, batch_size=3)
    draw = lambda seed: sample_responses(tiny_lm, tokenizer, ["the for", "raise"], 3, config,
                                         torch.Generator().manual_seed(seed))
    first = draw(1)
    assert first == draw(1)
    assert first != draw(2)
    assert len(first) == 2 and all(len(r) == 3 for r in first)


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


def test_encode_pairs_truncates_prompt_from_the_left(tokenizer):
    ids, mask, response_mask = encode_pairs(tokenizer, ["the quick brown fox jumps over"], [" the lazy dog"], 12)
    p_ids, r_ids = encode_prompt(tokenizer, "the quick brown fox jumps over"), encode_response(tokenizer, " the lazy dog")
    assert len(r_ids) < 12 < len(p_ids) + len(r_ids)
    assert ids.shape[1] == 12 and int(mask.sum()) == 12
    assert ids[0].tolist() == p_ids[len(p_ids) + len(r_ids) - 12:] + r_ids
    assert ids[0, response_mask[0]].tolist() == r_ids
