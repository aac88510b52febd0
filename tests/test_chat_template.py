"""Prompts and responses through a tokenizer's chat template: the ids must be exactly what the template renders."""
from __future__ import annotations

import pytest
import torch
from tokenizers import processors
from transformers import AutoTokenizer

from lightning_align.algorithms.sampling import SamplingConfig, sample_responses
from lightning_align.data.preference import encode_pairs, encode_prompt, encode_response
from lightning_align.errors import ConfigError
from lightning_align.models.checkpoint import save_model_dir
from lightning_align.models.loading import build_llama, load_tokenizer
from lightning_align.models.spec import ModelSpec
from lightning_align.models.tokenizer import train_bpe
from tests.conftest import TEXTS, TINY

CHATML = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama-3 style: the template writes BOS itself and trims the content; the turn ends with <|eot_id|> and nothing after.
HEADERS = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Renders an answered conversation with a different assistant header than its generation prompt.
REWRITING = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>bot\n' }}{% endif %}"
)
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

CONVERSATION = [{"role": "system", "content": "You answer in one word."},
                {"role": "user", "content": "the quick brown"},
                {"role": "assistant", "content": "fox"},
                {"role": "user", "content": "a class defines"}]


def _chat_tokenizer(template: str | None, adds_bos: bool = False):
    tokenizer = train_bpe(TEXTS, 300)
    tokenizer.add_tokens(SPECIALS, special_tokens=True)
    if adds_bos:
        bos = tokenizer.bos_token_id
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module")
def chatml():
    return _chat_tokenizer(CHATML)


def _template_ids(tokenizer, messages, generation_prompt):
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt)["input_ids"]


@pytest.mark.parametrize("prompt", ["the quick brown", CONVERSATION])
def test_prompt_is_the_rendered_generation_prompt(chatml, prompt):
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    ids = encode_prompt(chatml, prompt)
    assert ids == _template_ids(chatml, messages, True)
    assert chatml.decode(ids).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_pair_rows_are_the_rendered_conversation_and_the_mask_is_the_answer(chatml):
    prompts, responses = ["the quick brown", CONVERSATION], ["fox jumps", " over the lazy dog"]
    ids, mask, response_mask = encode_pairs(chatml, prompts, responses, max_length=256)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        answered = messages + [{"role": "assistant", "content": response}]
        assert ids[i, mask[i].bool()].tolist() == _template_ids(chatml, answered, False)
        assert ids[i, response_mask[i]].tolist() == chatml(response + "<|im_end|>\n", add_special_tokens=False)[
            "input_ids"]
        assert chatml.decode(ids[i, response_mask[i]]) == response + "<|im_end|>\n"
    assert encode_response(chatml, "fox", "the quick") == chatml("fox<|im_end|>\n", add_special_tokens=False)[
        "input_ids"]


@pytest.mark.parametrize("template, adds_bos", [(HEADERS, True), (HEADERS, False), (CHATML, True)])
def test_exactly_one_bos(template, adds_bos):
    tokenizer = _chat_tokenizer(template, adds_bos)
    bos = tokenizer.bos_token_id
    rendered = _template_ids(tokenizer, [{"role": "user", "content": "the quick"}], True)
    ids = encode_prompt(tokenizer, "the quick")
    assert ids[0] == bos and ids.count(bos) == 1
    assert ids == (rendered if rendered[0] == bos else [bos] + rendered)
    if template == HEADERS and adds_bos:
        rendered_text = tokenizer.apply_chat_template([{"role": "user", "content": "the quick"}], tokenize=False,
                                                      add_generation_prompt=True)
        assert tokenizer(rendered_text)["input_ids"][:2] == [bos, bos], "what tokenizing the text naively gives"


def test_template_that_trims_and_ends_with_its_own_end_of_turn():
    tokenizer = _chat_tokenizer(HEADERS)
    ids, _, response_mask = encode_pairs(tokenizer, ["the quick"], ["  brown fox "], max_length=256)
    assert tokenizer.decode(ids[0, response_mask[0]]) == "brown fox<|eot_id|>"


def test_plain_text_paths(chatml, tokenizer):
    assert encode_prompt(chatml, "") == chatml("")["input_ids"], "empty prompt: language-modelling text, no template"
    assert encode_response(chatml, " the lazy dog") == chatml(" the lazy dog", add_special_tokens=False)[
        "input_ids"] + [chatml.eos_token_id]
    single = [{"role": "user", "content": "the quick"}]
    assert encode_prompt(tokenizer, single) == encode_prompt(tokenizer, "the quick") == tokenizer("the quick")[
        "input_ids"]
    assert encode_pairs(tokenizer, [single], [" fox"], 32)[0].tolist() == encode_pairs(
        tokenizer, ["the quick"], [" fox"], 32)[0].tolist()
    with pytest.raises(ConfigError, match="model.chat_template.*4 chat messages"):
        encode_prompt(tokenizer, CONVERSATION)


def test_template_that_rewrites_the_prompt_falls_back_to_eos():
    tokenizer = _chat_tokenizer(REWRITING)
    with pytest.warns(UserWarning, match="answers end with EOS"):
        ids = encode_response(tokenizer, " fox", "the quick")
    assert ids == tokenizer(" fox", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


@pytest.fixture(scope="module")
def chat_model_dir(chatml, tmp_path_factory):
    return save_model_dir(build_llama(ModelSpec(**TINY), chatml), chatml, tmp_path_factory.mktemp("chat") / "model")


def test_switch_off_gives_the_raw_ids(chat_model_dir, chatml, tokenizer, tmp_path):
    on = load_tokenizer(ModelSpec(path=str(chat_model_dir)))
    off = load_tokenizer(ModelSpec(path=str(chat_model_dir), chat_template=False))
    assert encode_prompt(on, "the quick") == encode_prompt(chatml, "the quick")
    assert off.chat_template is None
    assert encode_prompt(off, "the quick") == tokenizer("the quick")["input_ids"]
    ids, _, response_mask = encode_pairs(off, ["the quick"], [" brown fox"], 32)
    assert ids[0].tolist() == tokenizer("the quick")["input_ids"] + tokenizer(" brown fox")["input_ids"] + [
        off.eos_token_id]
    assert ids[0, response_mask[0]].tolist() == encode_response(tokenizer, " brown fox")
    off.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template is None, "later stages load it without a template"


def test_sampling_continues_the_rendered_prompt(chatml):
    model = build_llama(ModelSpec(**{**TINY, "max_position_embeddings": 256}), chatml).eval()
    greedy = SamplingConfig(max_new_tokens=6, temperature=0.0)
    for prompt in ["the quick", CONVERSATION]:
        seq = encode_prompt(chatml, prompt)
        assert len(seq) + greedy.max_new_tokens <= 256
        with torch.no_grad():
            for _ in range(greedy.max_new_tokens):
                seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
        continuation = seq[-greedy.max_new_tokens:]
        assert chatml.eos_token_id not in continuation
        assert sample_responses(model, chatml, [prompt], 1, greedy, None) == [[chatml.decode(continuation)]]
