"""Instruction-Following Pruning (IFPruning; Hou et al., ICML 2025, arXiv 2501.02086).

Static pruning keeps one sub-network for every request. IFPruning keeps the whole model and lets a *sparsity
predictor* read the prompt and choose, per decoder layer, which `k` FFN intermediate neurons stay active for that
request; the mask is fixed for the whole sequence (prompt and answer). Predictor and LLM are trained together on
instruction data mixed with pre-training text (§3 of the paper). At inference the chosen rows of `gate_proj`/`up_proj`
and columns of `down_proj` are gathered into a dense, smaller FFN once per prompt, so decoding costs what a dense
model of the active width costs.

The paper publishes the structure, not code. What is ours, and why:
- `soft_topk`: the paper turns the predictor's logits into masks with a differentiable SoftTopK (§3) without
  fixing its details here. Our forward pass is an exact top-k (k ones per layer: the network that trains is the one
  that runs); the backward pass is the gradient of the entropy-regularised top-k, the solution of
  max <z, m> + T * H(m) subject to sum(m) = k, 0 <= m <= 1 (H the binary entropy), which is
  `sigmoid((z - tau) / T)` with the multiplier `tau` found by bisection (a straight-through estimator).
  `temperature` T (default 1, on logits of about unit scale) sets how many neurons near the threshold get gradient.
- The predictor's prompt representation is the mean of the last hidden states over the prompt tokens, read either
  from a separate small causal LM or from the LLM's own first layers (run dense, before any mask applies).
- The mask head is a two-layer MLP (as in the paper) whose output bias starts from a per-neuron activation prior
  (`neuron_prior`), so at step 0 every prompt gets a good static mask instead of a random one and training starts
  from a working network.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_align.models.blocks import RemovedMLP, decoder_layers
from lightning_align.models.checkpoint import IFPRUNING_KEY, load_causal_lm, read_metadata, save_model_dir
from lightning_align.models.mlp_width import mlp_modules, mlp_widths, slice_mlp

PREDICTOR_DIR = "predictor"
HEAD_FILE = "mask_head.pt"
BACKBONE_DIR = "backbone"


def _threshold(logits: Tensor, k: int, temperature: float, iterations: int = 40) -> Tensor:
    """tau [..., 1] with sum_j sigmoid((z_j - tau) / temperature) = k, by bisection (the sum falls as tau rises)."""
    z = logits.detach().float()
    low = z.amin(-1, keepdim=True) - 30.0 * temperature
    high = z.amax(-1, keepdim=True) + 30.0 * temperature
    for _ in range(iterations):
        mid = (low + high) / 2
        above = torch.sigmoid((z - mid) / temperature).sum(-1, keepdim=True) > k
        low, high = torch.where(above, mid, low), torch.where(above, high, mid)
    return (low + high) / 2


def soft_topk(logits: Tensor, k: int, temperature: float = 1.0) -> Tensor:
    """Exactly k ones per row of `logits` [..., W] in the forward pass; the soft top-k gradient in the backward.

    The soft mask is `sigmoid((z - tau(z)) / temperature)`. tau depends on z through the constraint sum = k; its
    implicit derivative d tau / d z_j = s'_j / sum_i s'_i (s' the sigmoid slopes) is built into the graph, so the
    gradient keeps the budget: raising one logit pushes its neuron in and the marginal ones out.
    """
    width = logits.shape[-1]
    if not 0 < k <= width:
        raise ValueError(f"k must be in (0, {width}], got {k}")
    z = logits.float()
    tau = _threshold(z, k, temperature)
    soft_at_tau = torch.sigmoid((z.detach() - tau) / temperature)
    slope = (soft_at_tau * (1 - soft_at_tau)).detach()
    tau = tau + (slope * (z - z.detach())).sum(-1, keepdim=True) / slope.sum(-1, keepdim=True).clamp_min(1e-12)
    soft = torch.sigmoid((z - tau) / temperature)
    return (hard_topk(z.detach(), k).float() + (soft - soft.detach())).to(logits.dtype)


def hard_topk(logits: Tensor, k: int) -> Tensor:
    """Boolean mask [..., W] of the k largest logits per row: what inference selects."""
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)


@torch.no_grad()
def neuron_prior(model: PreTrainedModel, batches: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
    """[L, W] per-neuron log(mean |activation| over real tokens x norm of its `down_proj` column), standardised
    per layer: the expected size of each neuron's contribution to the residual stream on `batches` of (input_ids,
    attention_mask), a per-neuron form of Wanda's |W| x ||X|| (Sun et al., 2024). It initialises the mask head's
    bias, so the first masks keep the neurons that matter most on the data. Weight norms alone are not enough: on
    SmolLM2-135M, keeping the 90% of neurons with the largest weight norms raises the loss more than a random 50%.
    """
    mlps = mlp_modules(model)
    totals = [torch.zeros(mlp.down_proj.in_features) for mlp in mlps]
    current: dict[str, Tensor] = {}

    def hook_for(layer: int):
        def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            weights = current["mask"].to(args[0].dtype).unsqueeze(-1)
            totals[layer] += (args[0].abs() * weights).sum((0, 1)).float().cpu()
        return hook

    hooks = [mlp.down_proj.register_forward_pre_hook(hook_for(i)) for i, mlp in enumerate(mlps)]
    try:
        for input_ids, attention_mask in batches:
            current["mask"] = attention_mask
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for handle in hooks:
            handle.remove()
    rows = []
    for total, mlp in zip(totals, mlps):
        score = (total.clamp_min(1e-12) * mlp.down_proj.weight.detach().float().norm(dim=0).cpu()).log()
        rows.append((score - score.mean()) / score.std().clamp_min(1e-6))
    return torch.stack(rows)


class MaskHead(nn.Module):
    """Two-layer MLP: prompt representation [B, D] -> mask logits [B, L, W] (one row per decoder layer's FFN)."""

    def __init__(self, in_dim: int, hidden: int, num_layers: int, width: int) -> None:
        super().__init__()
        self.num_layers, self.width = num_layers, width
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, num_layers * width))
        nn.init.normal_(self.net[2].weight, std=0.02)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.net(pooled).view(-1, self.num_layers, self.width)


def prompt_states(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, num_layers: int) -> Tensor:
    """Mean over the prompt tokens of the hidden states after the model's first `num_layers` decoder layers: [B, D].

    The decoder runs with its layer list cut to the first `num_layers` for this call only, so the LLM's own layers
    can serve as the predictor without a second copy of their weights.
    """
    base = model.base_model
    layers = base.layers
    base.layers = layers[:num_layers]
    try:
        hidden = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    finally:
        base.layers = layers
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class SparsityPredictor(nn.Module):
    """Prompt -> per-layer FFN mask logits. `backbone` is a separate causal LM (trained with the LLM); None reads
    the LLM's own first `num_layers` layers, passed in at call time so they are not registered twice."""

    def __init__(self, head: MaskHead, num_layers: int, backbone: Optional[PreTrainedModel] = None) -> None:
        super().__init__()
        self.head, self.num_layers, self.backbone = head, num_layers, backbone

    def forward(self, llm: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        reader = self.backbone if self.backbone is not None else llm
        pooled = prompt_states(reader, input_ids, attention_mask, self.num_layers)
        return self.head(pooled.to(self.head.net[0].weight.dtype))


@contextmanager
def ffn_masks(model: PreTrainedModel, masks: Tensor) -> Iterator[None]:
    """Multiply the intermediate activations of layer i's FFN by `masks[:, i]` ([B, L, W]) for every position:
    one mask per example, fixed for the whole sequence (a pre-hook on each `down_proj`)."""
    hooks = []

    def hook_for(layer: int):
        def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return (args[0] * masks[:, layer, None, :].to(args[0].dtype),) + args[1:]
        return hook

    for i, mlp in enumerate(mlp_modules(model)):
        hooks.append(mlp.down_proj.register_forward_pre_hook(hook_for(i)))
    try:
        yield
    finally:
        for handle in hooks:
            handle.remove()


def gather_mlps(model: PreTrainedModel, mask: Tensor) -> list[nn.Module]:
    """Dense FFNs of width k holding only the neurons `mask` [L, W] (bool) keeps; the model is not touched.

    The deep copy reuses the original parameters (memo) and `slice_mlp` then replaces them with gathered copies, so
    no full-width weight is ever duplicated.
    """
    gathered = []
    for mlp, keep in zip(mlp_modules(model), mask):
        shell = copy.deepcopy(mlp, memo={id(p): p for p in mlp.parameters()})
        gathered.append(slice_mlp(shell, keep.nonzero().flatten()))
    return gathered


@contextmanager
def swapped_mlps(model: PreTrainedModel, mlps: list[nn.Module]) -> Iterator[PreTrainedModel]:
    """Run `model` with its FFNs replaced by `mlps` (from `gather_mlps`), restored afterwards."""
    layers = [layer for layer in decoder_layers(model) if not isinstance(layer.mlp, RemovedMLP)]
    originals = [layer.mlp for layer in layers]
    for layer, mlp in zip(layers, mlps, strict=True):
        layer.mlp = mlp
    try:
        yield model
    finally:
        for layer, mlp in zip(layers, originals):
            layer.mlp = mlp


class IFPruningLM(nn.Module):
    """The full LLM plus its sparsity predictor: every forward and every generated answer runs the sub-network of
    `active_width` neurons per FFN that the predictor chose for that prompt.

    `forward` (language modelling, evaluation) reads the first `prompt_tokens` tokens of each row as its prompt, as
    plain text is treated in training; `generate` reads each row's whole (unpadded) prompt, gathers the dense smaller
    FFNs once, and decodes with transformers' `generate`. Plain transformers loads the directory as the dense full
    model (the predictor lives in `predictor/`).
    """

    def __init__(self, llm: PreTrainedModel, predictor: SparsityPredictor, active_width: int,
                 prompt_tokens: int) -> None:
        super().__init__()
        self.llm, self.predictor = llm, predictor
        self.active_width, self.prompt_tokens = active_width, prompt_tokens

    @property
    def config(self) -> Any:
        return self.llm.config

    @property
    def generation_config(self) -> Any:
        return self.llm.generation_config

    @torch.no_grad()
    def select(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Boolean masks [B, L, W] with exactly `active_width` neurons per layer, one per prompt."""
        return hard_topk(self.predictor(self.llm, input_ids, attention_mask), self.active_width)

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None, **kwargs: Any) -> Any:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        head = slice(None, self.prompt_tokens)
        masks = self.select(input_ids[:, head], attention_mask[:, head])
        with ffn_masks(self.llm, masks):
            return self.llm(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None, **kwargs: Any) -> Tensor:
        """One sub-network per prompt, then plain `generate` on it. Rows are decoded one at a time (each has its
        own FFNs; prompts that select the same neurons share one gathered copy, as the paper caches per task) and
        returned as one [B, T + new] tensor like a batched `generate`: the prompt as given (left padding kept), new
        tokens right-padded with `pad_token_id` (else the model's pad or first EOS id)."""
        if kwargs.get("num_return_sequences", 1) != 1:
            raise ValueError("IFPruningLM.generate returns one sequence per prompt; repeat the prompt instead")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pad = self._pad_id(kwargs.get("pad_token_id"))
        gathered: dict[bytes, list[nn.Module]] = {}
        new_tokens = []
        for row, row_mask in zip(input_ids, attention_mask):
            prompt = row[row_mask.bool()][None]
            ones = torch.ones_like(prompt)
            mask = self.select(prompt, ones)[0]
            key = mask.cpu().numpy().tobytes()
            if key not in gathered:
                gathered[key] = gather_mlps(self.llm, mask)
            with swapped_mlps(self.llm, gathered[key]):
                out = self.llm.generate(input_ids=prompt, attention_mask=ones, **kwargs)
            new_tokens.append(out[0, prompt.shape[1]:])
        longest = max(t.numel() for t in new_tokens)
        padded = torch.full((len(new_tokens), longest), pad, dtype=input_ids.dtype, device=input_ids.device)
        for i, tokens in enumerate(new_tokens):
            padded[i, :tokens.numel()] = tokens
        return torch.cat([input_ids, padded], dim=1)

    def _pad_id(self, given: Optional[int]) -> int:
        config = self.llm.generation_config
        eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
        for candidate in (given, config.pad_token_id, eos):
            if candidate is not None:
                return int(candidate)
        raise ValueError("no pad_token_id given and the model has neither a pad nor an EOS id to pad answers with")

    def save_with_predictor(self, out_dir: str | Path, tokenizer: PreTrainedTokenizerBase | None,
                            metadata: dict[str, Any] | None = None, files: dict[str, str] | None = None) -> Path:
        """The LLM as a model directory (`save_model_dir`) with the predictor under `predictor/`, in one atomic
        write; `lightning_align.json` records the settings under `"ifpruning"`."""
        settings = {"active_width": self.active_width, "prompt_tokens": self.prompt_tokens,
                    "predictor_layers": self.predictor.num_layers,
                    "head_hidden": self.predictor.head.net[0].out_features,
                    "own_layers": self.predictor.backbone is None}

        def write_predictor(directory: Path) -> None:
            target = directory / PREDICTOR_DIR
            target.mkdir()
            torch.save(self.predictor.head.state_dict(), target / HEAD_FILE)
            if self.predictor.backbone is not None:
                self.predictor.backbone.save_pretrained(target / BACKBONE_DIR)

        return save_model_dir(self.llm, tokenizer, out_dir, {**(metadata or {}), IFPRUNING_KEY: settings}, files,
                              extra=write_predictor)


def load_ifpruning(model_dir: str | Path, **kwargs: Any) -> IFPruningLM:
    """Rebuild an `IFPruningLM` from a directory `IFPruningLM.save` wrote (kwargs go to the LLM's loading)."""
    model_dir = Path(model_dir)
    settings = read_metadata(model_dir)[IFPRUNING_KEY]
    llm = load_causal_lm(model_dir, **kwargs)
    backbone = None if settings["own_layers"] else load_causal_lm(model_dir / PREDICTOR_DIR / BACKBONE_DIR, **kwargs)
    reader = llm if backbone is None else backbone
    head = MaskHead(reader.config.hidden_size, settings["head_hidden"], len(mlp_modules(llm)),
                    max(mlp_widths(llm)))
    head.load_state_dict(torch.load(model_dir / PREDICTOR_DIR / HEAD_FILE, map_location="cpu", weights_only=True))
    head.to(dtype=llm.dtype)
    predictor = SparsityPredictor(head, settings["predictor_layers"], backbone)
    return IFPruningLM(llm, predictor, settings["active_width"], settings["prompt_tokens"]).eval()

