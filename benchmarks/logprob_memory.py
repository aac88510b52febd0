"""Peak memory of one DPO forward + backward: full-vocabulary fp32 log-softmax vs chunked logsumexp (+ checkpointing).

Each variant runs in a fresh subprocess; "step MiB" is its peak resident set (ru_maxrss) minus its resident set just
before the step (model and batch already built), "peak MiB" the whole process's peak.

    python -m benchmarks.logprob_memory              # vocab 50k, hidden 64, 4 layers, 4 sequences x 128 tokens
    python -m benchmarks.logprob_memory --quick      # seconds; run by the test suite
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Callable

import torch
from torch import Tensor
from transformers import LlamaConfig, LlamaForCausalLM

from lightning_align.algorithms.losses import dpo_loss
from lightning_align.algorithms.sampling import token_logprobs

VARIANTS = ("full_log_softmax", "chunked", "chunked+checkpointing")


def full_log_softmax_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """The formula `token_logprobs` replaced: an fp32 [B, T, V] log-softmax, then a gather."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _dpo_step(model: LlamaForCausalLM, ids: Tensor, logprobs: Callable[[Tensor, Tensor], Tensor]) -> None:
    logits = model(input_ids=ids).logits
    if logprobs is full_log_softmax_logprobs:  # as `sequence_logprobs` was
        logps = logprobs(logits[:, :-1], ids[:, 1:]).sum(-1)
    else:  # as `sequence_logprobs` is
        logps = logprobs(logits, torch.nn.functional.pad(ids[:, 1:], (0, 1)))[:, :-1].sum(-1)
    half = ids.shape[0] // 2
    ref = torch.zeros(half)
    loss, _ = dpo_loss(logps[:half], logps[half:], ref, ref, 0.1, False)
    loss.backward()


def measure(variant: str, vocab: int, hidden: int, layers: int, batch: int, length: int) -> dict[str, float]:
    """One DPO step (batch/2 pairs, zero reference log-probs) of a random LLaMA; memory in MiB, time in s."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=length)
    model = LlamaForCausalLM(config).train()
    if variant == "chunked+checkpointing":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    logprobs = full_log_softmax_logprobs if variant == "full_log_softmax" else token_logprobs
    ids = torch.randint(0, vocab, (batch, length))
    _dpo_step(model, ids[:, :4], logprobs)  # warm-up: lazily initialised kernels and pools are not the step's
    model.zero_grad(set_to_none=True)
    before, start = _rss_mib(), time.perf_counter()
    _dpo_step(model, ids, logprobs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step_mib": peak - before, "peak_mib": peak, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=50_000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="sequences (chosen + rejected)")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--variant", choices=VARIANTS, help="measure one variant in this process, print JSON")
    parser.add_argument("--quick", action="store_true", help="vocab 8k, 4 sequences of 32 tokens")
    args = parser.parse_args(argv)
    if args.quick:
        args.vocab, args.length = 8_000, 32
    sizes = [f"--vocab={args.vocab}", f"--hidden={args.hidden}", f"--layers={args.layers}", f"--batch={args.batch}",
             f"--length={args.length}"]
    if args.variant:
        print(json.dumps(measure(args.variant, args.vocab, args.hidden, args.layers, args.batch, args.length)))
        return
    results = {}
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, "-m", "benchmarks.logprob_memory", f"--variant={variant}", *sizes],
                             check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    print(f"DPO step, vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers, {args.batch}x{args.length} tokens")
    print(f"{'variant':<22} {'step MiB':>9} {'peak MiB':>9} {'seconds':>8}")
    for variant, r in results.items():
        print(f"{variant:<22} {r['step_mib']:>9.1f} {r['peak_mib']:>9.1f} {r['seconds']:>8.3f}")
    base = results["full_log_softmax"]["step_mib"]
    print("ratio (full / variant, step MiB): " + ", ".join(
        f"{v} {base / max(r['step_mib'], 1e-9):.2f}" for v, r in results.items() if v != "full_log_softmax"))


if __name__ == "__main__":
    main()
