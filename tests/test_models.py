"""Building, saving and reloading models; the self-contained checkpoint directory."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_align.errors import ConfigError, DataError
from lightning_align.models.checkpoint import load_pretrained, read_metadata, save_model_dir
from lightning_align.models.loading import load_dir, load_model, load_tokenizer
from lightning_align.models.spec import LoraSpec, ModelSpec


def test_build_is_reproducible_and_llama(tiny_spec):
    a, b = load_model(tiny_spec), load_model(tiny_spec)
    assert a.config.model_type == "llama" and a.config.num_hidden_layers == 2
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    other = load_model(ModelSpec(**{**tiny_spec.__dict__, "seed": 1}))
    assert not torch.equal(a.model.embed_tokens.weight, other.model.embed_tokens.weight)


def test_save_reload_same_logits_and_tokenizer(tiny_spec, tmp_path):
    tokenizer = load_tokenizer(tiny_spec)
    model = load_model(tiny_spec, tokenizer).eval()
    out = save_model_dir(model, tokenizer, tmp_path / "stage", {"stage": "x"})
    assert read_metadata(out) == {"stage": "x"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directory left behind"
    ids = torch.tensor([tokenizer("def f(x): return x", add_special_tokens=False)["input_ids"]])
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reloaded(ids).logits, atol=1e-6)
        assert torch.allclose(model(ids).logits, load_pretrained(out)(ids).logits, atol=1e-6)
    again = AutoTokenizer.from_pretrained(out)
    assert again("def f(x)")["input_ids"] == tokenizer("def f(x)")["input_ids"]
    assert load_model(ModelSpec(path=str(out))).config.hidden_size == tiny_spec.hidden_size


def test_tokenizer_round_trips_any_text(tiny_spec):
    tokenizer = load_tokenizer(tiny_spec)
    text = "naïve 東京 — unseen bytes ✓"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "</s>"


def test_not_a_model_dir(tmp_path):
    with pytest.raises(ConfigError, match="model.path"):
        load_model(ModelSpec(path=str(tmp_path)))


def test_quantization_needs_a_path(tiny_spec):
    with pytest.raises(ConfigError, match="model.quantization"):
        load_model(ModelSpec(**{**tiny_spec.__dict__, "quantization": "8bit", "lora": LoraSpec()}))


def test_8bit_loading_with_bitsandbytes(tiny_spec, tmp_path):
    """bitsandbytes int8 linear layers (run on CPU here) stay close to the fp32 model."""
    pytest.importorskip("bitsandbytes")
    tokenizer = load_tokenizer(tiny_spec)
    model = load_model(tiny_spec, tokenizer).eval()
    out = save_model_dir(model, tokenizer, tmp_path / "m")
    quantized = load_dir(out, quantization="8bit").eval()
    assert "Linear8bitLt" in type(quantized.model.layers[0].mlp.up_proj).__name__
    ids = torch.randint(3, 300, (1, 16))
    with torch.no_grad():
        ref, got = model(ids).logits, quantized(ids).logits
    assert torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0) > 0.99


def test_a_directory_with_an_unknown_structure_is_a_data_error(tmp_path, tiny_lm):
    out = save_model_dir(tiny_lm, None, tmp_path / "m", {"structure": {"removed_heads": [1]}})
    with pytest.raises(DataError, match=r"lightning_align.json: unknown structure entries \['removed_heads'\]"):
        load_pretrained(out)
