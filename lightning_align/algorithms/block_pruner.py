"""BlockPruner (Zhong et al., 2024, arXiv 2406.10594): greedy removal of MHA/MLP blocks by calibration perplexity.

Sec. 3.2 of the paper: starting from S = {}, every step scores each remaining block b by the perplexity of the model
with S + {b} removed and adds the best one to S, until a stop rule holds. The order is the result (steps are nested).

Perplexity here: per-token NLL in fp32, averaged within each sequence, then averaged over sequences, exponentiated.
Calibration sequences all have the same length, so this equals the token average; the per-sequence mean is kept
so every sequence weighs the same.

Speed without changing the answer: dropping the block at residual position p leaves every hidden state before p as
it is. Each step walks the candidates in stream order carrying one running hidden state forward, so a candidate
recomputes only the blocks after it; the naive variant (``reuse_prefix=False``) recomputes the whole stack for every
candidate. Both run the same block computations on the same batches, so they give bit-identical perplexities.
Work is counted in block-forwards: one block applied to one calibration sequence.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lightning_align.errors import ConfigError
from lightning_align.models.blocks import (
    Block,
    all_blocks,
    block_modules,
    block_parameters,
    count_parameters,
    decoder_layers,
)

Group = tuple[Block, ...]


@dataclass(frozen=True)
class StopRule:
    """Stop once ``num_blocks`` blocks are removed or removed parameters reach ``target_ratio`` of all parameters.

    Exactly one of the two is set. Whole-layer methods remove two blocks a step and stop at the first step that
    reaches the count.
    """

    num_blocks: int | None = None
    target_ratio: float | None = None

    def validate(self, model: nn.Module) -> None:
        """Refuse rules the model cannot satisfy, before any forward pass."""
        if (self.num_blocks is None) == (self.target_ratio is None):
            raise ConfigError("target_ratio", "give exactly one of target_ratio and num_blocks")
        sizes = block_parameters(model)
        count, ratio = self.num_blocks, self.target_ratio
        if count is not None and not 1 <= count < len(sizes):
            problem = f"must be between 1 and {len(sizes) - 1} (the model has {len(sizes)} blocks), got {count}"
            raise ConfigError("num_blocks", problem)
        if ratio is not None:
            in_blocks = sum(sizes.values()) / count_parameters(model)
            if not 0 < ratio < in_blocks:
                problem = f"must be in (0, {in_blocks:.3f}) (the share of parameters in blocks), got {ratio}"
                raise ConfigError("target_ratio", problem)

    def reached(self, removed_blocks: int, removed_fraction: float) -> bool:
        if self.num_blocks is not None:
            return removed_blocks >= self.num_blocks
        return removed_fraction >= self.target_ratio


@dataclass(frozen=True)
class PruneStep:
    """One greedy step: what went, the calibration perplexity after it, and the cumulative parameter share removed."""

    removed: Group
    ppl: float
    removed_fraction: float


@dataclass
class SearchResult:
    method: str
    dense_ppl: float
    total_params: int
    steps: list[PruneStep] = field(default_factory=list)
    block_forwards: int = 0
    naive_block_forwards: int = 0

    @property
    def order(self) -> list[Block]:
        return [b for step in self.steps for b in step.removed]

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "dense_ppl": self.dense_ppl,
            "block_forwards": self.block_forwards,
            "naive_block_forwards": self.naive_block_forwards,
            "steps": [
                {"removed": [b.to_json() for b in s.removed], "ppl": s.ppl, "removed_fraction": s.removed_fraction}
                for s in self.steps
            ],
        }


class _StopForward(Exception):
    pass


@dataclass
class _Batch:
    hidden: torch.Tensor
    layer_kwargs: list[dict[str, Any]]  # per decoder layer: sliding and full attention layers get different masks
    tokens: torch.Tensor


class BlockRunner:
    """Runs a decoder block by block on a fixed calibration set (captured once), counting block-forwards.

    The model's own forward builds the embeddings, rotary tables and attention masks; pre-hooks on the decoder layers
    capture each layer's arguments and stop the forward at the last layer, so every family with a block view is
    handled by its own code.
    """

    def __init__(self, model: nn.Module, tokens: torch.Tensor, batch_size: int) -> None:
        if tokens.dim() != 2 or tokens.size(1) < 2:
            problem = f"needs a [sequences, length >= 2] token tensor, got shape {tuple(tokens.shape)}"
            raise ConfigError("calibration", problem)
        self.model, self.layers = model, decoder_layers(model)
        self.block_forwards = 0
        device = next(model.parameters()).device
        self.batches = [self._capture(chunk.to(device)) for chunk in tokens.split(batch_size)]

    @torch.inference_mode()
    def _capture(self, tokens: torch.Tensor) -> _Batch:
        hidden: list[torch.Tensor] = []
        layer_kwargs: list[dict[str, Any]] = []

        def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden.append(args[0] if args else kwargs["hidden_states"])
            layer_kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
            if len(layer_kwargs) == len(self.layers):
                raise _StopForward

        handles = [layer.register_forward_pre_hook(grab, with_kwargs=True) for layer in self.layers]
        try:
            self.model(input_ids=tokens, use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return _Batch(hidden[0], layer_kwargs, tokens)

    def run_block(self, block: Block, hidden: torch.Tensor, batch: _Batch) -> torch.Tensor:
        """One residual block, the same arithmetic as the decoder layer's forward: norm, sublayer, (Gemma) post-norm."""
        layer = self.layers[block.layer]
        self.block_forwards += hidden.size(0)
        norm, sublayer, *post_norms = (getattr(layer, name) for name in block_modules(self.model, block.kind))
        if block.kind == "attn":
            out = sublayer(hidden_states=norm(hidden), **batch.layer_kwargs[block.layer])[0]
        else:
            out = sublayer(norm(hidden))
        for post_norm in post_norms:
            out = post_norm(out)
        return hidden + out

    def run(self, blocks: Sequence[Block], hidden: torch.Tensor, batch: _Batch) -> torch.Tensor:
        for block in blocks:
            hidden = self.run_block(block, hidden, batch)
        return hidden

    def sequence_nll(self, hidden: torch.Tensor, batch: _Batch) -> torch.Tensor:
        """Mean next-token NLL of each sequence, in fp32: shape [batch]. Logits soft-capped as Gemma's forward does."""
        logits = self.model.lm_head(self.model.model.norm(hidden)).float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch.tokens[:, 1:], reduction="none")
        return nll.mean(dim=1)

    @torch.inference_mode()
    def perplexity(self, removed: set[Block]) -> float:
        """Perplexity of the model with ``removed`` dropped (one full pass)."""
        kept = [b for b in all_blocks(self.model) if b not in removed]
        total = sum(self.sequence_nll(self.run(kept, b.hidden, b), b).double().sum() for b in self.batches)
        return math.exp(float(total) / self.num_sequences)

    @property
    def num_sequences(self) -> int:
        return sum(b.tokens.size(0) for b in self.batches)

    @torch.inference_mode()
    def score_candidates(self, removed: set[Block], candidates: Sequence[Group], reuse_prefix: bool) -> list[float]:
        """Perplexity with ``removed`` plus each candidate group dropped; candidates in any order."""
        kept = [b for b in all_blocks(self.model) if b not in removed]
        sums = [0.0] * len(candidates)
        by_start = sorted(range(len(candidates)), key=lambda i: min(candidates[i]).position)
        for batch in self.batches:
            hidden, done = batch.hidden, 0
            for i in by_start:
                group, start = candidates[i], min(candidates[i]).position
                if reuse_prefix:
                    while done < len(kept) and kept[done].position < start:
                        hidden = self.run_block(kept[done], hidden, batch)
                        done += 1
                    rest = [b for b in kept[done:] if b not in group]
                    out = self.run(rest, hidden, batch)
                else:
                    out = self.run([b for b in kept if b not in group], batch.hidden, batch)
                sums[i] += float(self.sequence_nll(out, batch).double().sum())
        return [math.exp(s / self.num_sequences) for s in sums]


def greedy_search(
    runner: BlockRunner,
    groups: Callable[[set[Block]], list[Group]],
    stop: StopRule,
    method: str,
    reuse_prefix: bool = True,
    progress: bool = True,
) -> SearchResult:
    """Greedy removal re-scored every step: drop the candidate group with the lowest perplexity, until ``stop``.

    ``groups(removed)`` lists the candidates still available (single blocks for BlockPruner, layer pairs for the
    whole-layer baseline). Ties go to the earliest group in residual-stream order, so the search is deterministic.
    The last candidate is never removed, so the model keeps at least one block (or layer).
    Callers validate ``stop`` before building the runner, so bad rules fail before any forward pass.
    """
    model = runner.model
    sizes, total = block_parameters(model), count_parameters(model)
    result = SearchResult(method, runner.perplexity(set()), total)
    result.naive_block_forwards = runner.block_forwards
    removed: set[Block] = set()
    bar = tqdm(desc=f"{method} search", unit="step", disable=not progress)
    fraction = 0.0
    while not stop.reached(len(removed), fraction):
        candidates = sorted(groups(removed), key=lambda g: min(g).position)
        if len(candidates) < 2:
            break
        kept = len(sizes) - len(removed)
        result.naive_block_forwards += runner.num_sequences * sum(kept - len(g) for g in candidates)
        scores = runner.score_candidates(removed, candidates, reuse_prefix)
        best = min(range(len(candidates)), key=lambda i: (scores[i], i))
        removed |= set(candidates[best])
        fraction = sum(sizes[b] for b in removed) / total
        result.steps.append(PruneStep(candidates[best], scores[best], fraction))
        bar.set_postfix(removed="+".join(map(str, candidates[best])), ppl=f"{scores[best]:.3f}", refresh=False)
        bar.update(1)
    bar.close()
    result.block_forwards = runner.block_forwards
    return result


def single_blocks(model: nn.Module) -> Callable[[set[Block]], list[Group]]:
    """BlockPruner's candidates: every block not yet removed."""
    blocks = all_blocks(model)
    return lambda removed: [(b,) for b in blocks if b not in removed]


def block_pruner(
    model: nn.Module,
    calibration: torch.Tensor,
    stop: StopRule,
    batch_size: int = 8,
    reuse_prefix: bool = True,
    progress: bool = True,
) -> SearchResult:
    """BlockPruner search on ``calibration`` ([sequences, length] token ids); the model is left unchanged."""
    stop.validate(model)
    runner = BlockRunner(model, calibration, batch_size)
    return greedy_search(runner, single_blocks(model), stop, "blockpruner", reuse_prefix, progress)
