"""Whole-layer pruning baselines for BlockPruner, on the same block runner and perplexity.

- ``layer_ppl``: the BlockPruner greedy search with whole layers (both blocks of a layer) as candidates, so the
  only difference from BlockPruner is granularity.
- ``block_influence``: ShortGPT (Men et al., 2024, arXiv 2403.03853, Eq. 1): one-shot ranking of layers by
  BI_i = 1 - mean over tokens of cos(h_in_i, h_out_i) on the dense model; the least influential layers go first.
  Perplexity after each removal is measured only to draw the same curve as the greedy methods.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lightning_align.algorithms.block_pruner import (
    DEFAULT_CACHE_MB,
    BlockRunner,
    Group,
    PruneStep,
    SearchCheckpoint,
    SearchResult,
    StopRule,
    greedy_search,
)
from lightning_align.models.blocks import Block, block_parameters, count_parameters, decoder_layers


def whole_layers(model: nn.Module) -> Callable[[set[Block]], list[Group]]:
    """Candidates of the whole-layer search: every layer with neither block removed yet."""
    layers = [(Block(i, "attn"), Block(i, "mlp")) for i in range(len(decoder_layers(model)))]

    def available(removed: set[Block]) -> list[Group]:
        return [g for g in layers if not removed.intersection(g)]

    return available


def layer_ppl(
    model: nn.Module,
    calibration: torch.Tensor,
    stop: StopRule,
    batch_size: int = 8,
    reuse_prefix: bool = True,
    progress: bool = True,
    cache_mb: float = DEFAULT_CACHE_MB,
    checkpoint: SearchCheckpoint | None = None,
) -> SearchResult:
    """Greedy whole-layer removal by calibration perplexity, re-scored every step."""
    stop.validate(model)
    runner = BlockRunner(model, calibration, batch_size)
    return greedy_search(runner, whole_layers(model), stop, "layer-ppl", reuse_prefix, progress, cache_mb, checkpoint)


@torch.inference_mode()
def block_influences(runner: BlockRunner) -> list[float]:
    """ShortGPT Block Influence of every layer of the dense model, averaged over all calibration tokens."""
    num_layers = len(runner.layers)
    sums, tokens = torch.zeros(num_layers, dtype=torch.float64), 0
    for batch in runner.batches:
        hidden = batch.hidden
        for i in range(num_layers):
            out = runner.run([Block(i, "attn"), Block(i, "mlp")], hidden, batch)
            sums[i] += F.cosine_similarity(hidden.float(), out.float(), dim=-1).double().sum()
            hidden = out
        tokens += batch.tokens.numel()
    return (1 - sums / tokens).tolist()


def block_influence(
    model: nn.Module, calibration: torch.Tensor, stop: StopRule, batch_size: int = 8, progress: bool = True
) -> SearchResult:
    """Remove layers in ascending Block Influence until ``stop``, keeping at least one; ties go to the earlier layer."""
    stop.validate(model)
    runner = BlockRunner(model, calibration, batch_size)
    sizes, total = block_parameters(model), count_parameters(model)
    influence = block_influences(runner)
    ranking = sorted(range(len(influence)), key=lambda i: (influence[i], i))
    result = SearchResult("block-influence", runner.perplexity(set()), total)
    removed: set[Block] = set()
    for layer in tqdm(ranking[:-1], desc="block-influence", unit="layer", disable=not progress):
        group = (Block(layer, "attn"), Block(layer, "mlp"))
        removed |= set(group)
        fraction = sum(sizes[b] for b in removed) / total
        result.steps.append(PruneStep(group, runner.perplexity(removed), fraction))
        if stop.reached(len(removed), fraction):
            break
    result.block_forwards = result.naive_block_forwards = runner.block_forwards
    return result
