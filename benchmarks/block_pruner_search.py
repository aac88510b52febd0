"""BlockPruner search: prefix reuse vs recomputing the whole model for every candidate.

Both variants must return the same removal order and perplexities; the table shows block-forwards (one block on
one calibration sequence) and wall time, with naive / fast ratios.

    python benchmarks/block_pruner_search.py                      # random 8-layer LLaMA
    python benchmarks/block_pruner_search.py --model runs/default/pretrain --sequences 32 --length 128
    python benchmarks/block_pruner_search.py --quick              # seconds; run by the test suite
"""
from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lightning_align.algorithms.block_pruner import SearchResult, StopRule, block_pruner
from lightning_align.models.checkpoint import load_pretrained


def timed_search(
    model: torch.nn.Module, tokens: torch.Tensor, stop: StopRule, batch: int, reuse: bool
) -> tuple[SearchResult, float]:
    start = time.perf_counter()
    result = block_pruner(model, tokens, stop, batch_size=batch, reuse_prefix=reuse, progress=False)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local model directory (default: a random LLaMA of --layers/--hidden)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=6, help="blocks to remove")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (shared CPUs time badly with more)")
    parser.add_argument("--quick", action="store_true", help="4 layers, 4 sequences of 16 tokens, 3 blocks")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.hidden, args.sequences, args.length, args.blocks, args.batch = 4, 32, 4, 16, 3, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model:
        model = load_pretrained(args.model, dtype=torch.float32).eval()
    else:
        config = LlamaConfig(vocab_size=256, hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                             num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4)
        model = LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (args.sequences, args.length), generator=generator)
    stop = StopRule(num_blocks=args.blocks)
    timed_search(model, tokens[: args.batch], StopRule(num_blocks=1), args.batch, reuse=True)  # warm-up, untimed
    fast, fast_s = timed_search(model, tokens, stop, args.batch, reuse=True)
    naive, naive_s = timed_search(model, tokens, stop, args.batch, reuse=False)
    same = fast.order == naive.order and [s.ppl for s in fast.steps] == [s.ppl for s in naive.steps]
    print(f"{model.config.num_hidden_layers} layers, {args.sequences}x{args.length} tokens, "
          f"{args.blocks} blocks removed; identical order and perplexities: {same}")
    print(f"{'variant':<8} {'block-forwards':>15} {'wall s':>9}")
    print(f"{'fast':<8} {fast.block_forwards:>15,} {fast_s:>9.3f}")
    print(f"{'naive':<8} {naive.block_forwards:>15,} {naive_s:>9.3f}")
    print(f"{'ratio':<8} {naive.block_forwards / fast.block_forwards:>15.2f} {naive_s / fast_s:>9.2f}")
    if not same:
        raise SystemExit("fast and naive searches disagree")


if __name__ == "__main__":
    main()
