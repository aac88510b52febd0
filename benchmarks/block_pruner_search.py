"""BlockPruner search: this project's (prefix reuse + stream cache) vs the naive search vs the official pass count.

On a random LLaMA both searches run in full, alternating, and must return the same order and perplexities; with
``--model`` only the project's search runs, for a few greedy steps (the naive one is the same arithmetic, only
slower), and the naive and official costs of those steps are counted. Work is in block-forwards: one block on one
calibration sequence. The official implementation runs a full forward of the dense model per candidate.

    python -m benchmarks.block_pruner_search                      # random 8-layer LLaMA
    python -m benchmarks.block_pruner_search --model MODEL_DIR --steps 3
    python -m benchmarks.block_pruner_search --model MODEL_DIR --target-ratio 0.25 --cache-mb 6144   # whole search
    python -m benchmarks.block_pruner_search --model MODEL_DIR --compare --steps 3   # the three searches, side by side
    python -m benchmarks.block_pruner_search --quick              # seconds
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from benchmarks.page import spread, table
from benchmarks.registry import Options
from lightning_align.algorithms.block_pruner import (
    DEFAULT_CACHE_MB,
    SearchCheckpoint,
    SearchResult,
    StopRule,
    block_pruner,
)
from lightning_align.data.calibration import calibration_sets
from lightning_align.models.blocks import all_blocks
from lightning_align.models.checkpoint import load_pretrained


@dataclass(frozen=True)
class Sizes:
    layers: int
    hidden: int
    sequences: int
    length: int
    blocks: int
    batch: int


QUICK = Sizes(layers=4, hidden=32, sequences=4, length=16, blocks=3, batch=2)
DEFAULT = Sizes(layers=8, hidden=64, sequences=16, length=64, blocks=6, batch=8)
REAL = Sizes(layers=0, hidden=0, sequences=8, length=128, blocks=3, batch=8)  # layers/hidden: the model's own


class StepClock(SearchCheckpoint):
    """Records wall time and block-forwards at the end of every greedy step (a checkpoint that never replays)."""

    def __init__(self) -> None:
        super().__init__(Path("unused"), {})
        self.marks: list[tuple[float, int, int]] = [(time.perf_counter(), 0, 0)]

    def load(self, dense_ppl: float) -> list:
        self.marks = [(time.perf_counter(), 0, 0)]
        return []

    def save(self, result: SearchResult) -> None:
        self.marks.append((time.perf_counter(), result.block_forwards, result.head_passes))


def random_llama(sizes: Sizes, device: str = "cpu", dtype: torch.dtype = torch.float32
                 ) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=sizes.hidden, intermediate_size=sizes.hidden * 3,
                         num_hidden_layers=sizes.layers, num_attention_heads=4, num_key_value_heads=4)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (sizes.sequences, sizes.length), generator=generator)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval(), tokens


def compare_searches(model: torch.nn.Module, tokens: torch.Tensor, blocks: int, batch: int, repeats: int
                     ) -> tuple[str, bool]:
    """This project's search, without its LM-head bound, without the bound and the stream cache (the search before
    either), and the naive one, for ``blocks`` greedy steps, alternating ``repeats`` times; (Markdown table,
    identical order and perplexities?)."""
    stop = StopRule(num_blocks=blocks)
    variants = {"this project": {"cache_mb": DEFAULT_CACHE_MB}, "without the LM-head bound": {"head_bound": False},
                "prefix reuse only (neither)": {"cache_mb": 0, "head_bound": False},
                "naive": {"reuse_prefix": False}}
    block_pruner(model, tokens[:batch], StopRule(num_blocks=1), batch_size=batch, progress=False)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, SearchResult] = {}
    for _ in range(repeats):
        for name, kwargs in variants.items():
            start = time.perf_counter()
            results[name] = block_pruner(model, tokens, stop, batch_size=batch, progress=False, **kwargs)
            seconds[name].append(time.perf_counter() - start)
    naive = results["naive"]
    same = all(r.order == naive.order and [s.ppl for s in r.steps] == [s.ppl for s in naive.steps]
               for r in results.values())
    official, dense = naive.official_block_forwards, tokens.size(0) * len(all_blocks(model))
    rows = [[name, f"{r.block_forwards - dense:,}", f"{official / (r.block_forwards - dense):.2f}",
             f"{r.head_passes - tokens.size(0):,}", spread(seconds[name], 3),
             spread([n / f for n, f in zip(seconds["naive"], seconds[name])])]
            for name, r in results.items()]
    rows.append(["official (counted)", f"{official:,}", "1.00", f"{naive.candidates_scored:,}", "", ""])
    header = ["search", "block-forwards", "official / this", "LM-head passes", "wall s", "naive wall / this"]
    return table(header, rows), same


def _described(dtype: torch.dtype, tokens: torch.Tensor, batch: int, blocks: int, repeats: int, same: bool) -> str:
    return (f"{str(dtype).split('.')[1]}; {tokens.size(0)}x{tokens.size(1)} calibration tokens, batch {batch}, "
            f"{blocks} blocks removed; {repeats} alternating repetition(s). Identical order and perplexities: {same}. "
            "Block-forwards of the steps (the dense pass left out).")


def compare_on_random(sizes: Sizes, repeats: int, device: str = "cpu", dtype: torch.dtype = torch.float32
                      ) -> tuple[str, bool]:
    """The three searches on a random LLaMA; (Markdown, identical?)."""
    model, tokens = random_llama(sizes, device, dtype)
    text, same = compare_searches(model, tokens, sizes.blocks, sizes.batch, repeats)
    intro = (f"Random LLaMA, {sizes.layers} layers, hidden {sizes.hidden}, {device}, "
             + _described(dtype, tokens, sizes.batch, sizes.blocks, repeats, same))
    return f"{intro}\n\n{text}", same


def compare_on_model(model_dir: Path, sizes: Sizes, repeats: int, device: str = "cpu",
                     dtype: torch.dtype = torch.float32) -> tuple[str, bool]:
    """The three searches on a pretrained model, on the embedded corpus; (Markdown, identical?)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = load_pretrained(model_dir, dtype=dtype).to(device).eval()
    tokens, _ = calibration_sets(tokenizer, "embedded", sizes.length, sizes.sequences, sizes.sequences, 0.1, 0)
    text, same = compare_searches(model, tokens, sizes.blocks, sizes.batch, repeats)
    where = f"{torch.get_num_threads()} thread(s)" if device == "cpu" else device
    intro = (f"`{Path(model_dir).name}` ({len(all_blocks(model)) // 2} layers), {where}, "
             + _described(dtype, tokens, sizes.batch, sizes.blocks, repeats, same))
    return f"{intro}\n\n{text}", same


def steps_on_model(model_dir: Path, sizes: Sizes, stop: StopRule | None = None,
                   cache_mb: float = DEFAULT_CACHE_MB, device: str = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """The project's search on a pretrained model (``sizes.blocks`` greedy steps unless ``stop`` says otherwise):
    seconds and work per step."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = load_pretrained(model_dir, dtype=dtype).to(device).eval()
    calibration, _ = calibration_sets(tokenizer, "embedded", sizes.length, sizes.sequences, sizes.sequences, 0.1, 0)
    clock = StepClock()
    result = block_pruner(model, calibration, stop or StopRule(num_blocks=sizes.blocks), batch_size=sizes.batch,
                          progress=True, cache_mb=cache_mb, checkpoint=clock)
    blocks = 2 * model.config.num_hidden_layers
    rows, official_total, sequences = [], 0, calibration.size(0)
    for k, (step, (before, after)) in enumerate(zip(result.steps, zip(clock.marks, clock.marks[1:]))):
        official = sequences * blocks * (blocks - k)
        official_total += official
        forwards = after[1] - before[1] if k else after[1] - sequences * blocks  # less the dense pass
        heads = after[2] - before[2] if k else after[2] - sequences
        rows.append([str(k + 1), "+".join(map(str, step.removed)), f"{step.ppl:.3f}", f"{after[0] - before[0]:.0f}",
                     f"{forwards:,}", f"{official:,}", f"{official / forwards:.2f}",
                     f"{heads // sequences} of {blocks - k}"])
    search = result.block_forwards - sequences * blocks
    heads = (result.head_passes - sequences) // sequences
    rows.append(["all", "", "", f"{clock.marks[-1][0] - clock.marks[0][0]:.0f}", f"{search:,}", f"{official_total:,}",
                 f"{official_total / search:.2f}", f"{heads} of {result.candidates_scored // sequences}"])
    where = f"{torch.get_num_threads()} thread(s)" if device == "cpu" else device
    intro = (f"`{Path(model_dir).name}` ({blocks // 2} layers, {str(dtype).split('.')[1]}), {calibration.size(0)}x"
             f"{sizes.length} calibration tokens of the embedded corpus, batch {sizes.batch}, {where}, "
             f"`search_cache_mb` {cache_mb:.0f}; dense calibration ppl {result.dense_ppl:.3f}. "
             "Block-forwards of the steps (the dense pass left out; step 1 includes the first walk); LM-head passes "
             "over the calibration set against candidates scored (the official search: one each), the shortlist's "
             "pass included.")
    header = ["step", "removed", "calibration ppl", "seconds", "block-forwards", "official", "official / this",
              "LM-head passes"]
    return f"{intro}\n\n{table(header, rows)}"


def bench(options: Options) -> str:
    torch.set_num_threads(options.threads)
    text, same = compare_on_random(QUICK if options.mode == "quick" else DEFAULT, options.repeats, options.device,
                                   options.dtype)
    if not same:
        raise SystemExit("BlockPruner: the fast and naive searches disagree")
    if options.model is not None and options.mode != "quick":
        text += "\n\n" + steps_on_model(options.model, REAL, device=options.device, dtype=options.dtype)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="local pretrained model directory: a few steps of the fast search")
    parser.add_argument("--steps", type=int, default=REAL.blocks, help="greedy steps on --model")
    parser.add_argument("--target-ratio", type=float, help="on --model: search until this share of parameters is removed")
    parser.add_argument("--compare", action="store_true",
                        help="on --model: this search, without its bound, without bound and cache, naive; alternating")
    parser.add_argument("--sequences", type=int, default=REAL.sequences, help="on --model: calibration sequences")
    parser.add_argument("--length", type=int, default=REAL.length, help="on --model: tokens per calibration sequence")
    parser.add_argument("--cache-mb", type=float, default=DEFAULT_CACHE_MB, help="on --model: search_cache_mb")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repetitions (random model, or --compare)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="4 layers, 4 sequences of 16 tokens, 3 blocks")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model is not None:
        sizes = Sizes(**{**REAL.__dict__, "blocks": args.steps, "sequences": args.sequences, "length": args.length})
        if args.compare:
            text, same = compare_on_model(args.model, sizes, args.repeats)
            print(text)
            if not same:
                raise SystemExit("fast and naive searches disagree")
            return
        stop = StopRule(target_ratio=args.target_ratio) if args.target_ratio is not None else None
        print(steps_on_model(args.model, sizes, stop, args.cache_mb))
        return
    text, same = compare_on_random(QUICK if args.quick else DEFAULT, 1 if args.quick else args.repeats)
    print(text)
    if not same:
        raise SystemExit("fast and naive searches disagree")


if __name__ == "__main__":
    main()
