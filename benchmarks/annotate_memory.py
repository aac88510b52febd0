"""Reference annotation memory: one padded batch of ``annotate_batch_size`` pairs vs smaller batches.

DPO's reference annotation (``PolicyModule.annotate``) runs the pairs through the policy without gradients,
``annotate_batch_size`` pairs (2x as many sequences) per forward. The log-probs no longer make a full-vocabulary
copy (chunked logsumexp), but the forward still returns the logits of every position: 2 x pairs x length x vocab
fp32 values. Each arm annotates the same pairs in a fresh process; "transient MiB" is its peak RSS minus its RSS with
model and data built.

    python -m benchmarks.annotate_memory                       # vocab 49152 (SmolLM2's), 64 pairs of 64 tokens
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.memory import peak_rss_mib, rss_mib
from benchmarks.page import spread, table
from benchmarks.registry import Options
from lightning_align.algorithms.sampling import sequence_logprobs

BATCHES = (64, 8)


def measure(batch: int, pairs: int, vocab: int, length: int) -> dict[str, float]:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(3, vocab, (2 * pairs, length), generator=torch.Generator().manual_seed(0))
    mask, response = torch.ones_like(ids), torch.ones_like(ids)
    with torch.no_grad():
        sequence_logprobs(model, ids[:2, :8], mask[:2, :8], response[:2, :8])  # warm-up
        before, start = rss_mib(), time.perf_counter()
        for first in range(0, 2 * pairs, 2 * batch):
            rows = slice(first, first + 2 * batch)
            sequence_logprobs(model, ids[rows], mask[rows], response[rows])
    peak = peak_rss_mib()
    return {"transient_mib": peak - before, "seconds": time.perf_counter() - start}


def bench(options: Options) -> str:
    vocab, pairs, length = (8_000, 16, 32) if options.mode == "quick" else (49_152, 64, 64)
    runs: dict[int, list[dict[str, float]]] = {b: [] for b in BATCHES}
    for _ in range(options.repeats):
        for batch in BATCHES:
            command = [sys.executable, "-m", "benchmarks.annotate_memory", f"--batch={batch}", f"--pairs={pairs}",
                       f"--vocab={vocab}", f"--length={length}"]
            env = {**os.environ, "OMP_NUM_THREADS": str(options.threads)}
            out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
            runs[batch].append(json.loads(out.strip().splitlines()[-1]))
    largest = min(max(BATCHES), pairs)
    logits_mib = 2 * largest * length * vocab * 4 / 2**20
    rows = [[str(b), spread([r["transient_mib"] for r in runs[b]], 0), spread([r["seconds"] for r in runs[b]], 2)]
            for b in BATCHES]
    intro = (f"{pairs} pairs of {length} tokens, random 2-layer LLaMA with a {vocab:,}-token vocabulary, no gradient, "
             f"fp32; the logits of one batch of {largest} pairs alone are {logits_mib:.0f} MiB. "
             f"{options.repeats} alternating repetition(s).")
    return f"{intro}\n\n{table(['annotate_batch_size', 'transient MiB', 'seconds'], rows)}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="measure one arm of the annotation-memory benchmark, print JSON")
    parser.add_argument("--batch", type=int, required=True, help="pairs per forward")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=49_152)
    parser.add_argument("--length", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(measure(args.batch, args.pairs, args.vocab, args.length)))


if __name__ == "__main__":
    main()
