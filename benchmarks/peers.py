"""Peer rows: the same DPO, reward-model and sampling work in this project and in what users would pick instead.

TRL (the ``bench`` extra, never a dependency; ``pip install -e '.[bench]'``) for training, a bare transformers
``generate`` call for sampling. Without TRL its rows say so and the sampling row still runs. How each arm runs and
times a step is in ``benchmarks/peer_runs.py``. Repetitions are interleaved (this project, then the peer, then again),
so load that comes and goes on a shared machine falls on both; each ratio is peer time / this project's time (> 1:
this project is faster), median (min-max) over the repetitions. Peak memory arms run in their own processes.
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from statistics import median
from pathlib import Path
from typing import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.page import spread, table, version
from benchmarks.peer_runs import (LR, Schedule, project_dpo, project_reward, sample_bare, sample_project, trl_dpo,
                                  trl_reward)
from benchmarks.registry import Mode, Options
from lightning_align.data.corpus import load_texts
from lightning_align.data.preference import encode_prompt, encode_response
from lightning_align.models.checkpoint import save_model_dir
from lightning_align.models.tokenizer import embedded_tokenizer

TOKENIZER_VOCAB = 2048
PROMPT_TOKENS, RESPONSE_TOKENS = 16, 32


@dataclass(frozen=True)
class Size:
    """A random LLaMA: hidden size, layers, FFN width, attention heads, vocabulary."""

    hidden: int
    layers: int
    ffn: int
    heads: int
    vocab: int = TOKENIZER_VOCAB


SIZES: dict[Mode, tuple[Size, ...]] = {
    "quick": (Size(32, 2, 64, 4),),
    "default": (Size(128, 4, 344, 4), Size(512, 9, 1376, 8)),
    "full": (Size(128, 4, 344, 4), Size(512, 9, 1376, 8)),
}
MEMORY_SIZE = {"quick": Size(32, 2, 64, 4, 8_000), "default": Size(64, 4, 192, 4, 50_000)}
SCHEDULES = {"quick": Schedule(pairs=2, warmup=1, timed=2, max_length=64),
             "default": Schedule(pairs=8, warmup=2, timed=4, max_length=64)}
SAMPLING = {"quick": (4, 8), "default": (64, 32)}  # prompts in one batch, new tokens

TRL_ROWS = [
    ("dpo", "DPO step (reference precomputed)", "TRL DPOTrainer, precompute_ref_log_probs=True"),
    ("dpo_live", "DPO step (this project: reference precomputed, its only way)", "TRL DPOTrainer with a ref_model"),
    ("setup", "DPO setup (reference log-probs of all pairs)", "TRL precompute_ref_log_probs"),
    ("reward", "reward-model step", "TRL RewardTrainer"),
]
SAMPLING_ROW = ("sampling", "sampling (`sample_responses`, greedy)", "transformers `generate`")
ROWS = [*TRL_ROWS, SAMPLING_ROW]


def build_model_dir(size: Size, out: Path, seed: int = 0) -> tuple[Path, int]:
    """A random LLaMA with the embedded tokenizer, saved as a model directory both sides load: (dir, parameters)."""
    tokenizer = embedded_tokenizer(TOKENIZER_VOCAB)
    config = LlamaConfig(vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.ffn,
                         num_hidden_layers=size.layers, num_attention_heads=size.heads,
                         num_key_value_heads=size.heads, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return save_model_dir(model, tokenizer, out, {}), sum(p.numel() for p in model.parameters())


def write_pairs(count: int, out: Path, seed: int = 0) -> Path:
    """``count`` pairs from the embedded corpus, every sequence exactly ``PROMPT_TOKENS + RESPONSE_TOKENS`` tokens
    as both sides encode it, so every batch has the same shape whatever order a sampler draws: the chosen response
    continues its prompt, the rejected one is another passage's (standard TRL format, JSON lines)."""
    tokenizer = embedded_tokenizer(TOKENIZER_VOCAB)
    passages = []
    for words in (text.split() for text in load_texts("embedded")):
        start = 0
        while (prompt := _exactly(words[start:], PROMPT_TOKENS, lambda t: encode_prompt(tokenizer, t))) is not None:
            rest = words[start + len(prompt.split()):]
            response = _exactly(rest, RESPONSE_TOKENS, lambda t: encode_response(tokenizer, " " + t))
            if response is None:
                break
            passages.append((prompt, " " + response))
            start += len(prompt.split()) + len(response.split())
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        (prompt, chosen), (_, rejected) = rng.sample(passages, 2)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


def _exactly(words: list[str], tokens: int, encode: Callable[[str], list[int]]) -> str | None:
    """The first words that encode to exactly ``tokens`` tokens, or None if no prefix does."""
    for n in range(1, len(words) + 1):
        length = len(encode(" ".join(words[:n])))
        if length >= tokens:
            return " ".join(words[:n]) if length == tokens else None
    return None


def _timings(model_dir: Path, pairs_file: Path, schedule: Schedule, prompts: list[str], new_tokens: int,
             repeats: int, with_trl: bool) -> tuple[dict[str, list[tuple[float, float]]], bool]:
    """Interleaved repetitions: per row, (this project's seconds, the peer's) of each repetition; and whether greedy
    sampling gave the same texts on both sides (in bf16 on CUDA, as a user would sample there)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if schedule.device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(schedule.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sample_project(model, tokenizer, prompts[:2], 2)  # warm-up
    sample_bare(model, tokenizer, prompts[:2], 2)
    seconds: dict[str, list[tuple[float, float]]] = {}

    def add(row: str, project: float, peer: float) -> None:
        seconds.setdefault(row, []).append((project, peer))

    same = True
    for _ in range(repeats):
        (ours, our_texts), (theirs, their_texts) = (sample_project(model, tokenizer, prompts, new_tokens),
                                                    sample_bare(model, tokenizer, prompts, new_tokens))
        add("sampling", ours, theirs)
        same = same and our_texts == their_texts
        if not with_trl:
            continue
        ours = project_dpo(model_dir, pairs_file, schedule)
        precomputed = trl_dpo(model_dir, pairs_file, schedule, precompute=True)
        ours_again = project_dpo(model_dir, pairs_file, schedule)
        live = trl_dpo(model_dir, pairs_file, schedule, precompute=False)
        add("dpo", median(ours.steps), median(precomputed.steps))
        add("dpo_live", median(ours_again.steps), median(live.steps))
        add("setup", ours.setup, precomputed.setup)
        add("reward", median(project_reward(model_dir, pairs_file, schedule).steps),
            median(trl_reward(model_dir, pairs_file, schedule).steps))
    return seconds, same


def _memory(model_dir: Path, pairs_file: Path, schedule: Schedule, repeats: int,
            threads: int) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {"project": [], "trl": []}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for _ in range(repeats):
        for arm in runs:
            command = [sys.executable, "-m", "benchmarks.peer_runs", f"--memory={arm}", f"--model-dir={model_dir}",
                       f"--pairs={pairs_file}", f"--schedule={json.dumps(asdict(schedule))}", f"--threads={threads}"]
            out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
            runs[arm].append(json.loads(out.strip().splitlines()[-1]))
    return runs


def bench(options: Options) -> str:
    torch.set_num_threads(options.threads)
    key = "quick" if options.mode == "quick" else "default"
    schedule, (prompt_count, new_tokens) = replace(SCHEDULES[key], device=options.device), SAMPLING[key]
    with_trl = importlib.util.find_spec("trl") is not None
    load_before = os.getloadavg()[0]
    columns: list[str] = []
    cells: dict[str, list[str]] = {row: [] for row, *_ in ROWS}
    absolute: dict[str, list[str]] = {row: [] for row, *_ in ROWS}
    with tempfile.TemporaryDirectory() as tmp:
        pairs_file = write_pairs(schedule.pairs * schedule.steps + 1, Path(tmp) / "pairs.jsonl")
        prompts = [json.loads(line)["prompt"] for line in write_pairs(prompt_count, Path(tmp) / "prompts.jsonl",
                                                                      seed=1).read_text().splitlines()]
        same = True
        for i, size in enumerate(SIZES[options.mode]):
            model_dir, params = build_model_dir(size, Path(tmp) / f"model{i}")
            name = f"{params / 1e6:.1f}M"
            columns.append(f"{name} (hidden {size.hidden}, {size.layers} layers)")
            seconds, same_here = _timings(model_dir, pairs_file, schedule, prompts, new_tokens, options.repeats,
                                          with_trl)
            same = same and same_here
            for row in cells:
                pairs = seconds.get(row, [])
                cells[row].append(spread([peer / ours for ours, peer in pairs]) if pairs else "not installed")
                absolute[row].append(f"{median(o for o, _ in pairs):.3f} / {median(p for _, p in pairs):.3f}"
                                     if pairs else "")
        memory = None
        if with_trl:
            mem_size = MEMORY_SIZE[key]
            mem_dir, mem_params = build_model_dir(mem_size, Path(tmp) / "memory_model")
            memory = (mem_size, mem_params, _memory(mem_dir, pairs_file, schedule, options.repeats, options.threads))
    peers = {row: peer for row, _, peer in ROWS}
    whats = {row: what for row, what, _ in ROWS}
    rows = [[whats[row], peers[row], *cells[row]] for row in cells]
    intro = (
        f"Random LLaMA models saved once and loaded by both sides; the embedded byte-level BPE ({TOKENIZER_VOCAB:,} "
        f"tokens). Pairs from passages of the embedded corpus: a {PROMPT_TOKENS}-token prompt, {RESPONSE_TOKENS}-token "
        f"responses (with EOS), so every batch has the same shape on both sides (`max_length` {schedule.max_length}: "
        "none is truncated); "
        f"{schedule.pairs} pairs per step, {schedule.steps} steps, the first {schedule.warmup} dropped as warm-up; "
        f"1 pair held out (both sides annotate it). AdamW lr {LR:g}, betas 0.9/0.999, no weight decay, "
        "constant rate, no warm-up, no clipping, no gradient checkpointing, "
        + (f"fp32, CPU, {options.threads} torch thread(s)" if options.device == "cpu" else
           "bf16 mixed precision (Lightning `bf16-mixed`, TRL `bf16=True`; sampling in bf16 weights), CUDA")
        + "; DPO beta 0.1, sigmoid loss, summed log-probs. A step is the wall time "
        "between two optimizer-step ends in each side's own trainer (Lightning `Trainer` with `PolicyModule` / "
        "`RewardModule` and `PreferenceDataModule`; TRL's `Trainer`), median over the timed steps; setup is the "
        "time of `PolicyModule.annotate` vs TRL's `_precompute_ref_logps`, both over all pairs, "
        f"{schedule.pairs} pairs per forward. Sampling: {prompt_count} prompts in one left-padded batch, "
        f"{new_tokens} new tokens, greedy (same texts on both sides: {same}), including tokenizing and decoding. "
        f"{options.repeats} interleaved repetition(s); ratio = peer time / this project's time (> 1: this project "
        f"is faster), median (min-max). 1-minute load average {load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after the timings, on {os.cpu_count()} logical CPUs.")
    seconds_rows = [[whats[row], *absolute[row]] for row in cells]
    text = (f"{intro}\n\n{table(['what', 'peer', *columns], rows)}\n\nMedian seconds, this project / peer:\n\n"
            f"{table(['what', *columns], seconds_rows)}")
    if not with_trl:
        return "TRL is not installed (`pip install -e '.[bench]'`).\n\n" + text
    mem_size, mem_params, runs = memory
    mem_rows = [[arm, spread([r["peak_mib"] for r in runs[arm]], 0), spread([r["training_mib"] for r in runs[arm]], 0)]
                for arm in ("project", "trl")]
    ratio = spread([t["training_mib"] / p["training_mib"] for p, t in zip(runs["project"], runs["trl"])])
    return (f"TRL {version('trl')}. {text}\n\nPeak memory of a whole DPO run (reference precomputed on both sides) "
            f"on a {mem_params / 1e6:.1f}M random LLaMA with a {mem_size.vocab:,}-token vocabulary (hidden "
            f"{mem_size.hidden}, {mem_size.layers} layers), same pairs and schedule, each arm in its own process; "
            "\"training MiB\" is the peak minus the "
            f"{'resident set' if options.device == 'cpu' else 'allocated GPU memory'} once both sides' libraries are "
            "imported. "
            f"TRL / this project (training MiB): {ratio}.\n\n"
            f"{table(['arm', 'peak MiB', 'training MiB'], mem_rows)}")

