"""BlockPruner (Zhong et al., 2024, arXiv 2406.10594): greedy removal of MHA/MLP blocks by calibration perplexity.

Sec. 3.2 of the paper: starting from S = {}, every step scores each remaining block b by the perplexity of the model
with S + {b} removed and adds the best one to S, until a stop rule holds. The order is the result (steps are nested).

Perplexity here: per-token NLL in fp32, averaged within each sequence, then averaged over sequences, exponentiated.
Calibration sequences all have the same length, so this equals the token average; the per-sequence mean is kept
so every sequence weighs the same.

Speed without changing the answer: dropping the block at residual position p leaves every hidden state before p as
it is. Each step walks the candidates in stream order carrying one running hidden state forward, so a candidate
recomputes only the blocks after it; the naive variant (``reuse_prefix=False``) recomputes the whole stack for every
candidate. Across steps a ``StreamCache`` keeps, within a memory budget, the residual stream of the running model and
of every candidate's run: removing the step's winner at position p invalidates only the states after p, so the next
step resumes each candidate that starts before p from its own stream at p instead of from its start. All variants run
the same block computations on the same batches, so they give bit-identical perplexities.
On a real model the LM head costs more than the blocks a step recomputes (SmolLM2: 49,152 x 576 per token, about 16
blocks' worth), so the fast search first scores every candidate on a shortlist of the vocabulary -- the tokens the
running model ranks highest anywhere in the batch, plus every target -- whose log-sum-exp can only undershoot the
full one: a lower bound on the candidate's NLL. Candidates are then scored exactly in the order of their bounds, and
those whose bound already exceeds the best exact score so far (by more than fp32 rounding) cannot win and keep no
score; the winner and its perplexity are those of the full computation, bit for bit.
Work is counted in block-forwards: one block applied to one calibration sequence. The official implementation runs a
full forward (every block) for each candidate, so its cost is the number of candidates scored times the blocks of
the dense model, per sequence.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

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
DEFAULT_CACHE_MB = 1024.0  # streams kept across greedy steps: a 30-layer, 576-wide model at 8x128 tokens fits stride 5
SHORTLIST_TOP = 64  # per position, the running model's most likely tokens that join the vocabulary shortlist
BOUND_SLACK = 1e-4  # relative margin before a bound rules a candidate out: covers fp32 rounding, never the search
SHORTLIST_MAX_SHARE = 0.25  # a longer shortlist costs about a head pass: that batch is bounded by 0 (NLL >= 0) instead


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

    def to_json(self) -> dict[str, Any]:
        return {"removed": [b.to_json() for b in self.removed], "ppl": self.ppl, "removed_fraction": self.removed_fraction}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> PruneStep:
        removed = tuple(Block.from_json(b) for b in record["removed"])
        return cls(removed, float(record["ppl"]), float(record["removed_fraction"]))


@dataclass
class SearchResult:
    """A search's steps and its work: block-forwards done, and what the naive and the official search would do
    for the steps searched in this process (steps resumed from a checkpoint cost nothing here)."""

    method: str
    dense_ppl: float
    total_params: int
    steps: list[PruneStep] = field(default_factory=list)
    block_forwards: int = 0
    naive_block_forwards: int = 0
    official_block_forwards: int = 0
    resumed_steps: int = 0
    head_passes: int = 0  # full LM-head passes over the calibration set (official: one per candidate scored)
    candidates_scored: int = 0

    @property
    def order(self) -> list[Block]:
        return [b for step in self.steps for b in step.removed]

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "dense_ppl": self.dense_ppl,
            "block_forwards": self.block_forwards,
            "naive_block_forwards": self.naive_block_forwards,
            "official_block_forwards": self.official_block_forwards,
            "resumed_steps": self.resumed_steps,
            "head_passes": self.head_passes,
            "candidates_scored": self.candidates_scored,
            "steps": [s.to_json() for s in self.steps],
        }


class SearchCheckpoint:
    """The steps of one greedy search in a JSON file, rewritten after every step, so an interrupted search resumes.

    Steps are replayed only when the dense calibration perplexity (computed before any step, bit-exact) and the
    ``identity`` (method, batch size, precision, device: anything that could change the arithmetic) match, so a
    checkpoint of another model or calibration set is ignored rather than trusted.
    """

    def __init__(self, path: Path, identity: dict[str, Any]) -> None:
        self.path, self.identity = path, identity

    def load(self, dense_ppl: float) -> list[PruneStep]:
        if not self.path.is_file():
            return []
        saved = json.loads(self.path.read_text())
        if saved.get("identity") != self.identity or saved.get("dense_ppl") != dense_ppl:
            return []
        return [PruneStep.from_json(s) for s in saved["steps"]]

    def save(self, result: SearchResult) -> None:
        record = {"identity": self.identity, "dense_ppl": result.dense_ppl, "steps": [s.to_json() for s in result.steps]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(record, indent=1))
        partial.replace(self.path)


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
        self.block_forwards = self.head_passes = 0
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

    def _logits(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 LM-head logits of the final hidden states, over the vocabulary or its ``rows``; soft-capped as Gemma's
        forward does."""
        head = self.model.lm_head
        if rows is None:
            logits = head(self.model.model.norm(hidden)).float()
        else:
            bias = None if getattr(head, "bias", None) is None else head.bias[rows].float()
            logits = F.linear(self.model.model.norm(hidden).float(), head.weight[rows].float(), bias)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def sequence_nll(self, hidden: torch.Tensor, batch: _Batch) -> torch.Tensor:
        """Mean next-token NLL of each sequence, in fp32: shape [batch]."""
        self.head_passes += hidden.size(0)
        logits = self._logits(hidden)
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch.tokens[:, 1:], reduction="none")
        return nll.mean(dim=1)

    def shortlist(self, running: torch.Tensor, batch: _Batch) -> torch.Tensor:
        """Sorted vocabulary rows: the running model's ``SHORTLIST_TOP`` most likely tokens at every position, and every
        target token (so each target's logit is in the shortlist)."""
        self.head_passes += running.size(0)
        top = self._logits(running).topk(SHORTLIST_TOP, dim=-1).indices
        return torch.cat([top.flatten(), batch.tokens[:, 1:].flatten()]).unique()

    def nll_lower_bound(self, hidden: torch.Tensor, batch: _Batch, rows: torch.Tensor) -> torch.Tensor:
        """``sequence_nll`` with the log-sum-exp over ``rows`` only: never above it, since a sum of positive terms only
        grows with more terms. Costs len(rows) / vocabulary of a head pass."""
        logits = self._logits(hidden, rows)[:, :-1]
        target = torch.searchsorted(rows, batch.tokens[:, 1:].contiguous())
        picked = logits.gather(-1, target[..., None]).squeeze(-1)
        return (logits.logsumexp(-1) - picked).mean(dim=1)

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
    def score_candidates(
        self,
        removed: set[Block],
        candidates: Sequence[Group],
        reuse_prefix: bool,
        cache: StreamCache | None = None,
        bound: bool = False,
    ) -> list[float]:
        """Perplexity with ``removed`` plus each candidate group dropped; candidates in any order.

        With ``reuse_prefix`` one running stream is carried forward (a candidate starts from it at its first block)
        and ``cache`` holds streams saved by earlier steps; without, every candidate runs the whole stack. With
        ``bound`` (fp32 models) a candidate that provably cannot have the lowest perplexity scores ``inf``; the
        others, and so the minimum and its position, are exactly what the full computation gives.
        """
        kept = [b for b in all_blocks(self.model) if b not in removed]
        vocabulary = self.model.lm_head.weight.size(0)
        bound = (bound and reuse_prefix and self.model.lm_head.weight.dtype == torch.float32
                 and SHORTLIST_TOP < SHORTLIST_MAX_SHARE * vocabulary)  # else no shortlist can be short enough
        outs: list[list[torch.Tensor]] = [[] for _ in candidates]  # kept for the exact pass only under a bound
        sums, lower = [0.0] * len(candidates), [0.0] * len(candidates)
        by_start = sorted(range(len(candidates)), key=lambda i: min(candidates[i]).position)
        end = 2 * len(self.layers)
        for index, batch in enumerate(self.batches):
            running = (0, batch.hidden)
            for i in by_start:
                group = candidates[i]
                rest = [b for b in kept if b not in group]
                if reuse_prefix:
                    running = self.advance(kept, running, min(group).position, (None, index), batch, cache)
                    out = self.advance(rest, running, end, (group, index), batch, cache)[1]
                else:
                    out = self.run(rest, batch.hidden, batch)
                if bound:
                    outs[i].append(out)
                else:
                    sums[i] += float(self.sequence_nll(out, batch).double().sum())
            if bound:
                rows = self.shortlist(self.advance(kept, running, end, (None, index), batch, cache)[1], batch)
                if rows.numel() <= SHORTLIST_MAX_SHARE * vocabulary:
                    for i in by_start:
                        lower[i] += float(self.nll_lower_bound(outs[i][index], batch, rows).double().sum())
        if bound:
            sums = self._exact_within_bounds(outs, lower)
        return [math.exp(s / self.num_sequences) for s in sums]

    def _exact_within_bounds(self, outs: list[list[torch.Tensor]], lower: list[float]) -> list[float]:
        """Exact NLL sums of the candidates in the order of their lower bounds, until a bound exceeds the best exact
        sum so far (by more than rounding): that candidate and every later one cannot win and stay ``inf``."""
        sums, best = [math.inf] * len(outs), math.inf
        for i in sorted(range(len(outs)), key=lambda i: (lower[i], i)):
            if lower[i] > best + BOUND_SLACK * (abs(best) + self.num_sequences):
                break
            sums[i] = 0.0
            for batch, out in zip(self.batches, outs[i]):
                sums[i] += float(self.sequence_nll(out, batch).double().sum())
            best = min(best, sums[i])
        return sums

    def advance(
        self,
        blocks: Sequence[Block],
        state: tuple[int, torch.Tensor],
        target: int,
        key: StreamKey,
        batch: _Batch,
        cache: StreamCache | None,
    ) -> tuple[int, torch.Tensor]:
        """Carry the stream ``state`` = (position it enters, hidden) through ``blocks`` up to residual position
        ``target``, first jumping to the latest state ``cache`` holds for ``key`` and saving states on the way."""
        if cache is not None:
            saved = cache.latest(key, target)
            if saved is not None and saved[0] > state[0]:
                state = saved
        position, hidden = state
        for block in blocks:
            if position <= block.position < target:
                if cache is not None:
                    cache.keep(key, block.position, hidden)
                hidden = self.run_block(block, hidden, batch)
        return target, hidden


StreamKey = tuple[Optional[Group], int]  # (candidate group, or None for the running model; calibration batch index)


class StreamCache:
    """Residual-stream states kept across greedy steps, within a memory budget.

    Entry (key, q): the hidden state entering residual position q, in the run of the model with the removed blocks
    dropped (key ``None``) or with candidate group g dropped as well (key g), for one calibration batch. It stays
    exact until a block before q is removed, so after each step only the entries past the winner's first block go.
    States are kept at positions divisible by ``stride``, the smallest stride whose entries fit ``budget_mb``
    (``None``: nothing fits, nothing is kept); a larger stride only costs a few more block-forwards on resume.
    """

    def __init__(self, budget_mb: float, runner: BlockRunner) -> None:
        blocks = 2 * len(runner.layers)
        entry = max(b.hidden.numel() * b.hidden.element_size() for b in runner.batches)
        self.stride = next(
            (s for s in range(1, blocks) if _entries(blocks, s) * len(runner.batches) * entry <= budget_mb * 2**20),
            None,
        )
        self.entries: dict[StreamKey, list[tuple[int, torch.Tensor]]] = {}

    def latest(self, key: StreamKey, upto: int) -> tuple[int, torch.Tensor] | None:
        for position, hidden in reversed(self.entries.get(key, [])):
            if position <= upto:
                return position, hidden
        return None

    def keep(self, key: StreamKey, position: int, hidden: torch.Tensor) -> None:
        if self.stride is None or position == 0 or position % self.stride:
            return
        entries = self.entries.setdefault(key, [])
        if not entries or entries[-1][0] < position:
            entries.append((position, hidden))

    def drop(self, group: Group) -> None:
        """``group`` was removed: its own runs are no longer candidates and every state past its first block changed."""
        cut = min(group).position
        for key in list(self.entries):
            kept = [] if key[0] == group else [e for e in self.entries[key] if e[0] <= cut]
            if kept:
                self.entries[key] = kept
            else:
                del self.entries[key]


def _entries(blocks: int, stride: int) -> int:
    """Most states one calibration batch can hold at ``stride``: the running stream plus one run per start."""
    last = (blocks - 1) // stride
    return last + sum(last - start // stride for start in range(blocks))


def max_steps(stop: StopRule, candidates: Sequence[Group], sizes: dict[Block, int], total: int) -> int:
    """Most greedy steps ``stop`` can take: any order reaches the rule no later than the smallest groups first."""
    amount = len if stop.num_blocks is not None else (lambda g: sum(sizes[b] for b in g))
    blocks = params = 0
    for steps, group in enumerate(sorted(candidates, key=amount), start=1):
        blocks, params = blocks + len(group), params + sum(sizes[b] for b in group)
        if stop.reached(blocks, params / total):
            return min(steps, len(candidates) - 1)
    return len(candidates) - 1


def greedy_search(
    runner: BlockRunner,
    groups: Callable[[set[Block]], list[Group]],
    stop: StopRule,
    method: str,
    reuse_prefix: bool = True,
    progress: bool = True,
    cache_mb: float = DEFAULT_CACHE_MB,
    checkpoint: SearchCheckpoint | None = None,
    head_bound: bool = True,
) -> SearchResult:
    """Greedy removal re-scored every step: drop the candidate group with the lowest perplexity, until ``stop``.

    ``groups(removed)`` lists the candidates still available (single blocks for BlockPruner, layer pairs for the
    whole-layer baseline). Ties go to the earliest group in residual-stream order, so the search is deterministic.
    The last candidate is never removed, so the model keeps at least one block (or layer).
    Callers validate ``stop`` before building the runner, so bad rules fail before any forward pass.
    ``cache_mb`` bounds the streams kept across steps (0: none); ``checkpoint`` resumes the steps it holds
    (those ``stop`` still allows) and is rewritten after every step. ``head_bound`` rules out candidates by their
    LM-head lower bound (``score_candidates``); like the cache, it changes the work, never the picks.
    """
    model = runner.model
    sizes, total = block_parameters(model), count_parameters(model)
    result = SearchResult(method, runner.perplexity(set()), total)
    result.naive_block_forwards = runner.block_forwards
    removed: set[Block] = set()
    fraction = 0.0
    for step in checkpoint.load(result.dense_ppl) if checkpoint is not None else []:
        if stop.reached(len(removed), fraction):
            break
        removed |= set(step.removed)
        fraction = step.removed_fraction
        result.steps.append(step)
    result.resumed_steps = len(result.steps)
    cache = StreamCache(cache_mb, runner) if reuse_prefix else None
    steps = max_steps(stop, groups(set()), sizes, total)
    bar = tqdm(desc=f"{method} search", total=steps, initial=len(result.steps), unit="step", disable=not progress)
    while not stop.reached(len(removed), fraction):
        candidates = sorted(groups(removed), key=lambda g: min(g).position)
        if len(candidates) < 2:
            break
        kept = len(sizes) - len(removed)
        result.naive_block_forwards += runner.num_sequences * sum(kept - len(g) for g in candidates)
        result.official_block_forwards += runner.num_sequences * len(sizes) * len(candidates)
        scores = runner.score_candidates(removed, candidates, reuse_prefix, cache, bound=head_bound)
        result.candidates_scored += runner.num_sequences * len(candidates)
        best = min(range(len(candidates)), key=lambda i: (scores[i], i))
        removed |= set(candidates[best])
        if cache is not None:
            cache.drop(candidates[best])
        fraction = sum(sizes[b] for b in removed) / total
        result.steps.append(PruneStep(candidates[best], scores[best], fraction))
        result.block_forwards, result.head_passes = runner.block_forwards, runner.head_passes
        if checkpoint is not None:
            checkpoint.save(result)
        bar.set_postfix(removed="+".join(map(str, candidates[best])), ppl=f"{scores[best]:.3f}",
                        block_forwards=f"{runner.block_forwards:,}", refresh=False)
        bar.update(1)
    bar.total = bar.n  # a ratio rule may stop before its bound: the bar ends full
    bar.close()
    result.block_forwards, result.head_passes = runner.block_forwards, runner.head_passes
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
    cache_mb: float = DEFAULT_CACHE_MB,
    checkpoint: SearchCheckpoint | None = None,
    head_bound: bool = True,
) -> SearchResult:
    """BlockPruner search on ``calibration`` ([sequences, length] token ids); the model is left unchanged."""
    stop.validate(model)
    runner = BlockRunner(model, calibration, batch_size)
    return greedy_search(
        runner, single_blocks(model), stop, "blockpruner", reuse_prefix, progress, cache_mb, checkpoint, head_bound
    )
