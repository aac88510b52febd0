"""The IFPruning comparison: overlap arithmetic, the equal-width guard, latency, and the pipelines end to end."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from lightning_align.algorithms.instruction_following_pruning import IFPruningLM, MaskHead, SparsityPredictor
from lightning_align.errors import ConfigError
from lightning_align.eval.ifpruning_compare import latency, mean_jaccard, overlaps
from lightning_align.models.checkpoint import save_model_dir
from lightning_align.models.mlp_width import slice_mlp_widths
from lightning_align.stages.ifprune_compare import CompareConfig, compare
from tests.conftest import TINY_OVERRIDES


def test_jaccard_within_and_across_tasks_by_hand():
    a = torch.tensor([[[1, 1, 0, 0]], [[1, 0, 1, 0]]], dtype=torch.bool)  # [N=2, L=1, W=4]
    b = torch.tensor([[[0, 0, 1, 1]], [[0, 0, 1, 1]]], dtype=torch.bool)
    assert mean_jaccard(a, a, same=True) == pytest.approx(1 / 3)  # {0,1} vs {0,2}
    assert mean_jaccard(a, b, same=False) == pytest.approx((0 + 1 / 3) / 2)
    assert overlaps({"x": a, "y": b}) == pytest.approx({"x~x": 1 / 3, "y~y": 1.0, "x~y": 1 / 6})
    with pytest.raises(ValueError, match="two prompts"):
        mean_jaccard(a[:1], a[:1], same=True)


def _ifpruning_dir(lm, tokenizer, path: Path) -> Path:
    head = MaskHead(lm.config.hidden_size, 8, 2, 64)
    IFPruningLM(lm, SparsityPredictor(head, 1), 32, prompt_tokens=4).save_with_predictor(path, tokenizer)
    return path


def test_baselines_of_another_width_are_refused(tiny_lm, tokenizer, tmp_path):
    ifp = _ifpruning_dir(tiny_lm, tokenizer, tmp_path / "ifp")
    wrong = save_model_dir(slice_mlp_widths(tiny_lm, [torch.arange(16)] * 2), tokenizer, tmp_path / "narrow")
    with pytest.raises(ConfigError, match="active width 32"):
        compare(CompareConfig(ifpruning=str(ifp), static=str(wrong), dense=str(wrong)))
    with pytest.raises(ConfigError, match="not an IFPruning model"):
        compare(CompareConfig(ifpruning=str(wrong), static=str(wrong), dense=str(wrong)))


def test_latency_reports_per_token_times_and_leaves_the_model_whole(tiny_lm, tokenizer):
    model = IFPruningLM(tiny_lm, SparsityPredictor(MaskHead(32, 8, 2, 64), 1), 32, prompt_tokens=4).eval()
    dense = slice_mlp_widths(copy.deepcopy(tiny_lm), [torch.arange(32)] * 2)
    timing = latency(model, dense, tokenizer, "the quick brown", new_tokens=4, repeats=1, threads=1)
    assert all(value > 0 for value in timing.values()) and len(timing) == 4
    assert tiny_lm.model.layers[0].mlp.down_proj.in_features == 64


@pytest.mark.slow
def test_ifpruning_pipeline_trains_evaluates_and_generates_per_prompt(tmp_path):
    from lightning_align.pipeline import MultiStageTrainer
    from lightning_align.run_config import compose

    overrides = [o for o in TINY_OVERRIDES if o.startswith(("model.", "stages.pretrain", "stages.evaluate", "+"))]
    cfg = compose(Path(__file__).parents[1] / "conf", "config", [
        "pipeline=ifpruning", f"run.dir={tmp_path}", *overrides,
        "stages.ifprune.trainer.max_steps=6", "stages.ifprune.trainer.limit_val_batches=1",
        "stages.ifprune.data.init_args.block_size=32", "stages.ifprune.data.init_args.prompt_tokens=8",
        "stages.ifprune.data.init_args.num_records=64", "stages.generate.num_prompts=4",
        "stages.generate.sampling.max_new_tokens=4"])
    metrics = MultiStageTrainer(cfg).run()
    run = tmp_path / "default"
    assert json.loads((run / "ifprune" / "lightning_align.json").read_text())["ifpruning"]["active_width"] == 32
    assert (run / "evaluate" / "predictor" / "mask_head.pt").is_file()  # a later stage keeps the predictor
    assert metrics["generate"]["generate/answers"] == 4.0
    assert (run / "generate" / "generations.jsonl").read_text().count("\n") == 4


def test_response_nll_of_an_ifpruning_model_uses_the_prompts_masks(tiny_lm, tokenizer):
    from lightning_align.algorithms.instruction_following_pruning import ffn_masks
    from lightning_align.algorithms.sampling import sequence_logprobs
    from lightning_align.data.preference import encode_pairs
    from lightning_align.eval.ifpruning_compare import response_nll

    torch.manual_seed(0)
    with torch.no_grad():  # FFNs that matter, so masking half of them visibly changes the likelihood
        for layer in tiny_lm.model.layers:
            layer.mlp.down_proj.weight.mul_(20.0)
    model = IFPruningLM(tiny_lm, SparsityPredictor(MaskHead(32, 8, 2, 64), 1), 32, prompt_tokens=4).eval()
    records = [{"prompt": "the quick brown", "response": " fox jumps"}]
    ids, mask, response = encode_pairs(tokenizer, ["the quick brown"], [" fox jumps"], 32)
    prompt_ids = ids[:, :int((~response).sum())]
    with torch.no_grad(), ffn_masks(tiny_lm, model.select(prompt_ids, torch.ones_like(prompt_ids)).float()):
        expected = -sequence_logprobs(tiny_lm, ids, mask, response).item() / int(response[:, 1:].sum())
    assert response_nll(model, tokenizer, records, 32, 4) == pytest.approx(expected, rel=1e-5)
    assert abs(response_nll(tiny_lm, tokenizer, records, 32, 4) - expected) > 0.01  # the dense model differs
