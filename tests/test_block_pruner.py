"""BlockPruner search and its baselines: exactness of the fast search, greedy choices, stop rules."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_align.algorithms.block_pruner import (
    BlockRunner,
    SearchCheckpoint,
    SearchResult,
    StopRule,
    StreamCache,
    _entries,
    block_pruner,
    max_steps,
    single_blocks,
)
from lightning_align.algorithms import block_pruner as block_pruner_module
from lightning_align.algorithms.layer_pruning import block_influence, layer_ppl
from lightning_align.errors import ConfigError
from lightning_align.models.blocks import Block, all_blocks, block_parameters, count_parameters, skipping
from tests.tiny_decoders import FAMILIES, single_thread, tiny_decoder, token_batch

CALIBRATION = token_batch(batch=5, length=10, seed=3)

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_decoder("llama", layers=3, seed=4)


def reference_ppl(model: torch.nn.Module, removed: set[Block]) -> float:
    """Perplexity through the model's own forward with ``removed`` skipped: mean per-sequence NLL, exponentiated."""
    with torch.no_grad(), skipping(model, removed):
        logits = model(CALIBRATION).logits.float()
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), CALIBRATION[:, 1:], reduction="none").mean(dim=1)
    return math.exp(nll.double().mean().item())


@pytest.mark.parametrize("family", FAMILIES)
def test_block_runner_matches_the_model_forward(family: str) -> None:
    """Per-layer masks (sliding vs full attention), Gemma's post-norms and logit soft-capping included."""
    model = tiny_decoder(family, layers=3, seed=4)
    runner = BlockRunner(model, CALIBRATION, batch_size=2)
    for removed in [set(), {Block(0, "attn"), Block(2, "mlp")}, {Block(1, "attn"), Block(1, "mlp")}]:
        assert runner.perplexity(removed) == pytest.approx(reference_ppl(model, removed), rel=1e-6)


def test_fast_search_equals_naive_search_exactly(model: torch.nn.Module) -> None:
    stop = StopRule(num_blocks=3)
    fast = block_pruner(model, CALIBRATION, stop, batch_size=2, progress=False)
    naive = block_pruner(model, CALIBRATION, stop, batch_size=2, reuse_prefix=False, progress=False)
    assert fast.order == naive.order
    assert [s.ppl for s in fast.steps] == [s.ppl for s in naive.steps]
    # naive: dense pass 6, then c candidates x (c - 1) remaining blocks for c = 6, 5, 4; per sequence
    assert naive.block_forwards == (6 + 30 + 20 + 12) * 5 == fast.naive_block_forwards
    # official: a full 6-block forward per candidate
    assert fast.official_block_forwards == (6 + 5 + 4) * 6 * 5
    assert fast.block_forwards < naive.block_forwards


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_stream_cache_keeps_every_pick_exact_at_any_budget(family: str) -> None:
    """Six layers, nine removals, a batch split in two; budgets from none through a coarse stride (0.1 MB) to everything."""
    deep = tiny_decoder(family, layers=6, seed=4)
    stop = StopRule(num_blocks=9)
    naive = block_pruner(deep, CALIBRATION, stop, batch_size=3, reuse_prefix=False, progress=False)
    forwards = []
    for cache_mb in (0, 0.1, 100):
        fast = block_pruner(deep, CALIBRATION, stop, batch_size=3, cache_mb=cache_mb, progress=False)
        assert fast.order == naive.order
        assert [s.ppl for s in fast.steps] == [s.ppl for s in naive.steps]
        forwards.append(fast.block_forwards)
    assert forwards[2] < forwards[0] < naive.block_forwards


def test_cache_stride_fits_the_budget() -> None:
    runner = BlockRunner(tiny_decoder("llama", layers=6, seed=4), CALIBRATION, batch_size=3)
    entry = 3 * 10 * 32 * 4  # one batch of hidden states, fp32
    assert StreamCache(0, runner).stride is None
    assert StreamCache(100, runner).stride == 1
    for budget in (0.1, 0.2, 0.4):
        stride = StreamCache(budget, runner).stride
        assert 2 * _entries(12, stride) * entry <= budget * 2**20 < 2 * _entries(12, stride - 1) * entry


def test_interrupted_search_resumes_from_its_checkpoint_with_identical_picks(
    model: torch.nn.Module, tmp_path: Path
) -> None:
    stop = StopRule(num_blocks=4)
    whole = block_pruner(model, CALIBRATION, stop, batch_size=2, progress=False)
    checkpoint = SearchCheckpoint(tmp_path / "state.json", {"method": "blockpruner"})

    class Interrupted(Exception):
        pass

    def save_then_stop(result: SearchResult) -> None:
        SearchCheckpoint.save(checkpoint, result)
        raise Interrupted

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint, "save", save_then_stop)
        with pytest.raises(Interrupted):
            block_pruner(model, CALIBRATION, stop, batch_size=2, progress=False, checkpoint=checkpoint)
    assert len(json.loads(checkpoint.path.read_text())["steps"]) == 1
    resumed = block_pruner(model, CALIBRATION, stop, batch_size=2, progress=False, checkpoint=checkpoint)
    assert resumed.resumed_steps == 1 and resumed.steps == whole.steps
    assert resumed.official_block_forwards == (5 + 4 + 3) * 6 * 5, "only the steps searched now are counted"
    other = SearchCheckpoint(checkpoint.path, {"method": "layer-ppl"})
    assert block_pruner(model, CALIBRATION, stop, batch_size=2, progress=False, checkpoint=other).resumed_steps == 0


def test_max_steps_bounds_the_progress_bar(model: torch.nn.Module) -> None:
    sizes = block_parameters(model)
    total = count_parameters(model)
    candidates = single_blocks(model)(set())
    assert max_steps(StopRule(num_blocks=4), candidates, sizes, total) == 4
    for ratio in (0.05, 0.3, 0.7):
        steps = block_pruner(model, CALIBRATION, StopRule(target_ratio=ratio), progress=False).steps
        assert len(steps) <= max_steps(StopRule(target_ratio=ratio), candidates, sizes, total)
    smallest_first = sorted(sizes.values())
    assert max_steps(StopRule(target_ratio=smallest_first[0] / total), candidates, sizes, total) == 1


def test_each_step_takes_the_lowest_perplexity_given_earlier_steps(model: torch.nn.Module) -> None:
    result = block_pruner(model, CALIBRATION, StopRule(num_blocks=2), batch_size=5, progress=False)
    removed: set[Block] = set()
    for step in result.steps:
        scores = {b: reference_ppl(model, removed | {b}) for b in all_blocks(model) if b not in removed}
        assert step.removed == (min(scores, key=scores.get),)
        assert step.ppl == pytest.approx(scores[step.removed[0]], rel=1e-6)
        removed.add(step.removed[0])


def test_stop_by_ratio_stops_at_the_first_step_reaching_it(model: torch.nn.Module) -> None:
    result = block_pruner(model, CALIBRATION, StopRule(target_ratio=0.3), progress=False)
    fractions = [s.removed_fraction for s in result.steps]
    assert fractions[-1] >= 0.3 and all(f < 0.3 for f in fractions[:-1])
    assert fractions == sorted(fractions)


@pytest.mark.parametrize(
    ("stop", "key", "message"),
    [
        (StopRule(target_ratio=1.0), "target_ratio", "must be in \\(0, 0.8"),
        (StopRule(target_ratio=0.0), "target_ratio", "must be in"),
        (StopRule(num_blocks=6), "num_blocks", "the model has 6 blocks"),
        (StopRule(), "target_ratio", "exactly one"),
    ],
)
def test_unreachable_stop_rules_are_refused(model: torch.nn.Module, stop: StopRule, key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        block_pruner(model, CALIBRATION, stop, progress=False)
    assert error.value.key == key


def test_layer_ppl_removes_whole_layers_greedily(model: torch.nn.Module) -> None:
    result = layer_ppl(model, CALIBRATION, StopRule(num_blocks=3), progress=False)
    assert len(result.steps) == 2 and all(s.removed[0].layer == s.removed[1].layer for s in result.steps)
    scores = {i: reference_ppl(model, {Block(i, "attn"), Block(i, "mlp")}) for i in range(3)}
    assert result.steps[0].removed[0].layer == min(scores, key=scores.get)


def test_block_influence_ranks_layers_by_input_output_cosine(model: torch.nn.Module) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [layer.register_forward_hook(lambda m, a, out: seen.append((a[0], out))) for layer in model.model.layers]
    with torch.no_grad():
        model(CALIBRATION)
    for hook in hooks:
        hook.remove()
    influence = [1 - F.cosine_similarity(h_in, h_out, dim=-1).mean().item() for h_in, h_out in seen]
    result = block_influence(model, CALIBRATION, StopRule(num_blocks=4), progress=False)
    assert [s.removed[0].layer for s in result.steps] == sorted(range(3), key=influence.__getitem__)[:2]
    assert result.steps[1].ppl == pytest.approx(reference_ppl(model, set(result.order)), rel=1e-6)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_head_bound_never_exceeds_the_exact_nll(family: str) -> None:
    runner = BlockRunner(tiny_decoder(family, layers=2, seed=4), CALIBRATION, batch_size=5)
    batch = runner.batches[0]
    rows = torch.cat([torch.arange(0, 7), batch.tokens[:, 1:].flatten()]).unique()  # a poor shortlist: loose, still below
    full = torch.arange(runner.model.config.vocab_size)
    with torch.inference_mode():
        out = runner.run(all_blocks(runner.model), batch.hidden, batch)
        lower, exact = runner.nll_lower_bound(out, batch, rows), runner.sequence_nll(out, batch)
        whole = runner.nll_lower_bound(out, batch, full)
    assert (lower <= exact).all() and (lower < exact - 1e-3).any()
    assert torch.allclose(whole, exact, atol=1e-5), "over the whole vocabulary the bound is the NLL"


@pytest.mark.parametrize("top", [2, 64])
def test_head_bound_skips_candidates_that_cannot_win_and_keeps_every_pick_exact(
    model: torch.nn.Module, top: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shortlist of 2 (loose bounds) or 64 of the 101 tokens (tight): the same winner, its exact perplexity, and the
    same search as the naive one; ruled-out candidates cost no head pass. (A shortlist this close to the tiny
    vocabulary's size is not worth it outside a test: ``SHORTLIST_MAX_SHARE`` is lifted.)"""
    monkeypatch.setattr(block_pruner_module, "SHORTLIST_TOP", top)
    monkeypatch.setattr(block_pruner_module, "SHORTLIST_MAX_SHARE", 1.0)
    candidates = [(b,) for b in all_blocks(model)]
    runner = BlockRunner(model, CALIBRATION, batch_size=2)
    exact = runner.score_candidates(set(), candidates, reuse_prefix=True)
    passes = runner.head_passes
    bounded = runner.score_candidates(set(), candidates, reuse_prefix=True, bound=True)
    winner = min(range(len(exact)), key=lambda i: (exact[i], i))
    assert min(range(len(bounded)), key=lambda i: (bounded[i], i)) == winner and bounded[winner] == exact[winner]
    assert all(b == e for b, e in zip(bounded, exact) if math.isfinite(b))
    skipped = sum(math.isinf(b) for b in bounded)
    assert top == 2 or skipped >= len(candidates) // 2, "a tight shortlist rules most candidates out"
    shortlist = CALIBRATION.size(0)
    assert runner.head_passes - passes == (len(candidates) - skipped) * CALIBRATION.size(0) + shortlist
    stop = StopRule(num_blocks=4)
    naive = block_pruner(model, CALIBRATION, stop, batch_size=2, reuse_prefix=False, progress=False)
    fast = block_pruner(model, CALIBRATION, stop, batch_size=2, progress=False)
    assert fast.steps == naive.steps
    assert top == 2 or fast.head_passes < naive.head_passes


@pytest.mark.parametrize("top", [64, 20])
def test_a_shortlist_near_the_vocabulary_size_is_not_used(
    model: torch.nn.Module, top: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a quarter of a 101-token vocabulary, bounding would cost about a head pass per candidate: 64 tokens per
    position is refused before any shortlist, 20 per position once the batch's shortlist comes out too long."""
    monkeypatch.setattr(block_pruner_module, "SHORTLIST_TOP", top)
    candidates = [(b,) for b in all_blocks(model)]
    runner = BlockRunner(model, CALIBRATION, batch_size=2)
    exact = runner.score_candidates(set(), candidates, reuse_prefix=True)
    monkeypatch.setattr(BlockRunner, "nll_lower_bound", lambda *args: pytest.fail("bounded with a long shortlist"))
    assert runner.score_candidates(set(), candidates, reuse_prefix=True, bound=True) == exact
