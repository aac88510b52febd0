"""Pruned vs dense: parameters, forward latency, generation tokens/s and peak RSS, at three pruning ratios.

The parent searches once and saves the dense model and one pruned model per ratio (greedy steps are nested, so each
ratio takes the search's steps up to it): BlockPruner on the random LLaMA; on ``--model``, ShortGPT's block
influence (one forward instead of a greedy search, which takes hours on a CPU; only the costs are compared here).
Every arm then runs in its own subprocess (``--arm DIR``) so its peak RSS is its own; the arms alternate,
repetition after repetition, and the ratios are taken per repetition (dense / pruned for time, pruned / dense for
throughput), reported as median (min-max). Greedy decoding without an end token, so every arm generates exactly
``new_tokens`` per sequence. With ``--gpu`` the arms run on the CUDA device in bf16 (timings after a synchronize)
and the memory column is the peak of allocated GPU memory instead of the process's resident set.

    python -m benchmarks --only pruned-vs-dense [--model DIR]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from benchmarks.memory import clock, peak_mib
from benchmarks.page import spread, table
from benchmarks.registry import Options
from lightning_align.algorithms.block_pruner import SearchResult, StopRule, block_pruner
from lightning_align.algorithms.layer_pruning import block_influence
from lightning_align.data.calibration import calibration_sets
from lightning_align.models.blocks import block_structure, count_parameters, remove_blocks
from lightning_align.models.checkpoint import load_pretrained, save_model_dir


@dataclass(frozen=True)
class Sizes:
    hidden: int
    layers: int
    vocab: int
    ratios: tuple[float, ...]
    batch: int  # sequences in the timed forward and in generation
    length: int  # tokens of the timed forward
    prompt: int  # prompt tokens before generation
    new_tokens: int
    forwards: int  # timed forwards per arm and repetition (median)


QUICK = Sizes(hidden=64, layers=4, vocab=256, ratios=(0.3,), batch=2, length=32, prompt=8, new_tokens=8, forwards=3)
DEFAULT = Sizes(hidden=256, layers=8, vocab=2048, ratios=(0.1, 0.2, 0.3), batch=4, length=128, prompt=16,
                new_tokens=32, forwards=5)


def measure_arm(model_dir: Path, sizes: Sizes, device: str = "cpu") -> dict[str, float]:
    """One arm in this process: parameters, median forward ms, generation tokens/s, peak memory (MiB: resident set
    on CPU, allocated GPU memory on CUDA)."""
    model = load_pretrained(model_dir, dtype=torch.bfloat16 if device == "cuda" else torch.float32).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, model.config.vocab_size, (sizes.batch, sizes.length), generator=generator).to(device)
    prompt = tokens[:, : sizes.prompt]
    decode = {"do_sample": False, "eos_token_id": None, "pad_token_id": 0}
    with torch.inference_mode():
        model(input_ids=tokens, use_cache=False)
        model.generate(prompt, max_new_tokens=2, **decode)
        times = []
        for _ in range(sizes.forwards):
            start = clock(device)
            model(input_ids=tokens, use_cache=False)
            times.append(clock(device) - start)
        start = clock(device)
        out = model.generate(prompt, max_new_tokens=sizes.new_tokens, **decode)
        generate_s = clock(device) - start
    generated = out[:, sizes.prompt:].numel()
    return {"params": count_parameters(model), "forward_ms": 1000 * statistics.median(times),
            "tokens_per_s": generated / generate_s, "peak_mib": peak_mib(device)}


def run_arm(model_dir: Path, sizes: Sizes, threads: int, device: str = "cpu") -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "benchmarks.pruned_vs_dense", "--arm", str(model_dir),
               "--sizes", json.dumps(asdict(sizes)), "--threads", str(threads), "--device", device]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def random_model(sizes: Sizes) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=sizes.vocab, hidden_size=sizes.hidden, intermediate_size=sizes.hidden * 8 // 3,
                         num_hidden_layers=sizes.layers, num_attention_heads=4, num_key_value_heads=4)
    generator = torch.Generator().manual_seed(1)
    return LlamaForCausalLM(config).eval(), torch.randint(0, sizes.vocab, (8, 64), generator=generator)


def prefix_to(result: SearchResult, ratio: float) -> list:
    """The search's removals up to the first step reaching ``ratio`` (greedy steps are nested)."""
    for k, step in enumerate(result.steps, start=1):
        if step.removed_fraction >= ratio:
            return [b for s in result.steps[:k] for b in s.removed]
    return result.order


def bench(options: Options) -> str:
    sizes = QUICK if options.mode == "quick" else DEFAULT
    torch.set_num_threads(options.threads)
    with tempfile.TemporaryDirectory() as scratch:
        if options.model is None:
            model, calibration = random_model(sizes)
            dense_dir = save_model_dir(model, None, Path(scratch) / "dense", {})
            method, search = "blockpruner", block_pruner
            described = f"random LLaMA, hidden {sizes.hidden}, {sizes.layers} layers, vocabulary {sizes.vocab}"
        else:
            dense_dir = options.model
            tokenizer = AutoTokenizer.from_pretrained(dense_dir, local_files_only=True)
            model = load_pretrained(dense_dir, dtype=torch.float32).eval()
            calibration, _ = calibration_sets(tokenizer, "embedded", 128, 8, 8, 0.1, 0)
            method, search = "block-influence", block_influence
            described = f"`{Path(dense_dir).name}`"
        result = search(model, calibration, StopRule(target_ratio=max(sizes.ratios)), progress=False)
        arms = {"dense": dense_dir}
        removed = {}
        for ratio in sizes.ratios:
            pruned = remove_blocks(copy.deepcopy(model), prefix_to(result, ratio))
            removed[ratio] = 1 - count_parameters(pruned) / count_parameters(model)
            arms[ratio] = save_model_dir(pruned, None, Path(scratch) / f"pruned-{ratio}",
                                         {"structure": block_structure(pruned)})
        del model
        runs: dict[object, list[dict[str, float]]] = {arm: [] for arm in arms}
        for _ in range(options.repeats):
            for arm, path in arms.items():
                runs[arm].append(run_arm(path, sizes, options.threads, options.device))
    dense = runs["dense"]
    rows = [["dense", "", f"{dense[0]['params']:,}", f"{statistics.median(r['forward_ms'] for r in dense):.1f} ms",
             f"{statistics.median(r['tokens_per_s'] for r in dense):.1f} tok/s",
             f"{statistics.median(r['peak_mib'] for r in dense):.0f}"]]
    for ratio in sizes.ratios:
        pruned = runs[ratio]
        rows.append([f"{ratio:.0%}", f"{removed[ratio]:.1%}", f"{pruned[0]['params'] / dense[0]['params']:.3f}",
                     spread([d["forward_ms"] / p["forward_ms"] for d, p in zip(dense, pruned)]),
                     spread([p["tokens_per_s"] / d["tokens_per_s"] for d, p in zip(dense, pruned)]),
                     f"{statistics.median(p['peak_mib'] for p in pruned):.0f}"])
    where = f"fp32, {options.threads} thread(s)" if options.device == "cpu" else "CUDA, bf16"
    intro = (f"{described}, pruned by {method}; {where}, {options.repeats} alternating "
             f"repetition(s), each arm a fresh process. Forward: median of {sizes.forwards} forwards of "
             f"{sizes.batch}x{sizes.length} tokens. Generation: {sizes.batch} prompts of {sizes.prompt} tokens, "
             f"{sizes.new_tokens} new tokens each, greedy, KV cache.")
    header = ["target ratio", "removed params", "params (pruned / dense)", "forward speed-up (dense / pruned)",
              "generation tokens/s (pruned / dense)", "peak RSS MiB" if options.device == "cpu" else "peak GPU MiB"]
    return f"{intro}\n\n{table(header, rows)}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="measure one arm of the pruned-vs-dense benchmark, print JSON")
    parser.add_argument("--arm", type=Path, required=True, help="model directory to measure")
    parser.add_argument("--sizes", required=True, help="JSON of benchmarks.pruned_vs_dense.Sizes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    record = json.loads(args.sizes)
    sizes = Sizes(**{**record, "ratios": tuple(record["ratios"])})
    print(json.dumps(measure_arm(args.arm, sizes, args.device)))


if __name__ == "__main__":
    main()
