"""One run of each arm of the peer comparison: this project's trainer or TRL's on the same model directory and pairs.

Every run trains through the trainer a user would start (a Lightning ``Trainer`` with this project's module and
datamodule; TRL's ``DPOTrainer`` / ``RewardTrainer``) and records the wall time between consecutive optimizer-step
ends with a callback, so a step's time includes what the trainer does around it (fetching and collating the batch,
logging). The first ``warmup`` steps are dropped. Setup (DPO reference log-probs of all pairs) is timed around the
one method each side runs it in: ``PolicyModule.annotate`` and ``DPOTrainer._precompute_ref_logps``.

Both sides: the same model directory and tokenizer, the same pairs (the same one pair held out, which both annotate),
pairs per step, ``max_length`` (no pair is truncated), AdamW (betas 0.9/0.999, no weight decay, constant learning
rate, no warm-up, no gradient clipping), fp32 on CPU or bf16 mixed precision (fp32 weights) on CUDA, no gradient
checkpointing, sum of response log-probs, sigmoid DPO loss with the same beta. Each side shuffles the pairs with its
own seeded sampler. On CUDA every clock reading waits for the device first.

    python -m benchmarks.peer_runs --memory project|trl --model-dir DIR --pairs FILE --schedule JSON

(one memory arm in this process, printed as JSON; ``benchmarks.peers`` starts one such process per arm).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.memory import clock, peak_mib, rss_mib

LR, BETA, SEED = 1e-4, 0.1, 0


@dataclass(frozen=True)
class Schedule:
    """What every training run does: pairs per optimizer step, steps dropped as warm-up, steps timed."""

    pairs: int
    warmup: int
    timed: int
    max_length: int
    device: str = "cpu"  # or "cuda": bf16 mixed precision on both sides

    @property
    def steps(self) -> int:
        return self.warmup + self.timed


@dataclass(frozen=True)
class Timing:
    """Per-step wall seconds after the warm-up, and the setup's seconds (DPO reference annotation; 0 for none)."""

    steps: list[float]
    setup: float = 0.0


def _step_seconds(ends: list[float], schedule: Schedule) -> list[float]:
    """Intervals between consecutive step ends (the first from the start of training), warm-up steps dropped."""
    return [b - a for a, b in zip(ends, ends[1:])][schedule.warmup:]


def _pairs(pairs_file: Path) -> list[dict[str, Any]]:
    from lightning_align.data.preference import load_pairs

    return load_pairs(str(pairs_file), 0, SEED)


def read_split(pairs_file: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held out) exactly as this project's datamodule splits the file: one pair held out."""
    from lightning_align.data.preference import split_records

    records = _pairs(pairs_file)
    return split_records(records, val_fraction(len(records)), SEED)


def val_fraction(pairs: int) -> float:
    """The datamodule's split option that holds out exactly one pair (it must hold out at least one)."""
    return 1 / pairs


def project_dpo(model_dir: Path, pairs_file: Path, schedule: Schedule) -> Timing:
    """DPO through this project's stage pieces: ``PolicyModule`` + ``PreferenceDataModule`` under a Lightning Trainer.

    The reference log-probs are annotated once at the start (the project's only way: no reference model is kept)."""
    from lightning_align.modules.policy import PolicyModule

    class TimedPolicy(PolicyModule):
        setup_seconds = 0.0

        def annotate(self, records: list[dict[str, Any]]) -> None:
            start = clock(schedule.device)
            super().annotate(records)
            self.setup_seconds += clock(schedule.device) - start

    module = TimedPolicy(**_project_args(model_dir, schedule), beta=BETA, annotate_batch_size=schedule.pairs)
    ends = _fit(module, pairs_file, schedule)
    return Timing(_step_seconds(ends, schedule), module.setup_seconds)


def project_reward(model_dir: Path, pairs_file: Path, schedule: Schedule) -> Timing:
    """Bradley-Terry training through ``RewardModule`` (a fresh scalar head on the causal LM's backbone)."""
    from lightning_align.modules.reward import RewardModule

    return Timing(_step_seconds(_fit(RewardModule(**_project_args(model_dir, schedule)), pairs_file, schedule),
                                schedule))


def _project_args(model_dir: Path, schedule: Schedule) -> dict[str, Any]:
    from lightning_align.models.spec import ModelSpec
    from lightning_align.modules.optim import OptimConfig

    optim = OptimConfig(lr=LR, weight_decay=0.0, beta1=0.9, beta2=0.999, warmup_steps=0, min_lr_ratio=1.0)
    return {"model": ModelSpec(path=str(model_dir)), "optim": optim, "max_length": schedule.max_length}


def _fit(module: Any, pairs_file: Path, schedule: Schedule) -> list[float]:
    import lightning as L

    from lightning_align.data.preference import PreferenceDataModule

    class StepClock(L.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.ends.append(clock(schedule.device))

        def on_train_batch_end(self, *args: Any) -> None:
            self.ends.append(clock(schedule.device))

    data = PreferenceDataModule(path=str(pairs_file), val_fraction=val_fraction(len(_pairs(pairs_file))),
                                batch_size=schedule.pairs, seed=SEED)
    steps = StepClock()
    cuda = schedule.device == "cuda"
    trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision="bf16-mixed" if cuda else "32-true",
                        max_steps=schedule.steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[steps])
    trainer.fit(module, datamodule=data)
    return steps.ends


def trl_dpo(model_dir: Path, pairs_file: Path, schedule: Schedule, precompute: bool) -> Timing:
    """TRL's DPOTrainer: reference log-probs precomputed in its constructor, or a live reference model."""
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    class TimedDPOTrainer(DPOTrainer):
        setup_seconds = 0.0

        def _precompute_ref_logps(self, *args: Any, **kwargs: Any) -> Any:
            start = clock(schedule.device)
            out = super()._precompute_ref_logps(*args, **kwargs)
            self.setup_seconds += clock(schedule.device) - start
            return out

    def load() -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(**_trl_args(out, schedule), beta=BETA, loss_type=["sigmoid"],
                         precompute_ref_log_probs=precompute, precompute_ref_batch_size=schedule.pairs)
        train, held_out = _trl_datasets(pairs_file)
        trainer = TimedDPOTrainer(model=load(), ref_model=None if precompute else load(), args=args,
                                  train_dataset=train, eval_dataset=held_out, processing_class=_tokenizer(model_dir),
                                  callbacks=[_trl_clock(schedule.device)])
        return Timing(_trl_train(trainer, schedule), trainer.setup_seconds)


def trl_reward(model_dir: Path, pairs_file: Path, schedule: Schedule) -> Timing:
    """TRL's RewardTrainer on a sequence-classification model with one label, its head zeroed as this project's."""
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    torch.nn.init.zeros_(model.score.weight)
    with tempfile.TemporaryDirectory() as out:
        train, _ = _trl_datasets(pairs_file)
        trainer = RewardTrainer(model=model, args=RewardConfig(**_trl_args(out, schedule)), train_dataset=train,
                                processing_class=_tokenizer(model_dir), callbacks=[_trl_clock(schedule.device)])
        return Timing(_trl_train(trainer, schedule))


def _tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _trl_args(out: str, schedule: Schedule) -> dict[str, Any]:
    return {"output_dir": out, "max_steps": schedule.steps, "per_device_train_batch_size": schedule.pairs,
            "learning_rate": LR, "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": 0.0,
            "adam_beta1": 0.9, "adam_beta2": 0.999, "optim": "adamw_torch", "max_grad_norm": 0.0,
            "max_length": schedule.max_length, "use_cpu": schedule.device == "cpu", "bf16": schedule.device == "cuda",
            "fp16": False,
            "gradient_checkpointing": False, "report_to": "none", "save_strategy": "no", "eval_strategy": "no",
            "disable_tqdm": True, "dataloader_num_workers": 0, "seed": SEED}


def _trl_datasets(pairs_file: Path) -> tuple[Any, Any]:
    import datasets

    datasets.disable_caching()  # else a repetition would read the previous one's reference log-probs from disk
    datasets.disable_progress_bars()
    return tuple(datasets.Dataset.from_list(part) for part in read_split(pairs_file))


def _trl_clock(device: str) -> Any:
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            self.ends.append(clock(device))

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.ends.append(clock(device))

    return StepClock()


def _trl_train(trainer: Any, schedule: Schedule) -> list[float]:
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every log line; this project's side prints none either
    trainer.train()
    steps = next(c for c in trainer.callback_handler.callbacks if type(c).__name__ == "StepClock")
    return _step_seconds(steps.ends, schedule)


def sample_project(model: Any, tokenizer: Any, prompts: list[str], new_tokens: int) -> tuple[float, list[str]]:
    """``sample_responses`` greedy, one response per prompt, all prompts in one batch: (seconds, texts)."""
    from lightning_align.algorithms.sampling import SamplingConfig, sample_responses

    config = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0, batch_size=len(prompts))
    start = clock(model.device.type)
    texts = sample_responses(model, tokenizer, prompts, 1, config, None)
    return clock(model.device.type) - start, [t[0] for t in texts]


def sample_bare(model: Any, tokenizer: Any, prompts: list[str], new_tokens: int) -> tuple[float, list[str]]:
    """What a user writes without the project: tokenize left-padded, ``generate`` greedy, decode."""
    start = clock(model.device.type)
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(model.device)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return clock(model.device.type) - start, texts


def memory(arm: str, model_dir: Path, pairs_file: Path, schedule: Schedule) -> dict[str, float]:
    """Peak memory of a whole DPO run (reference precomputed) in this process, and that peak minus what was in use
    once both sides' libraries are imported (so import footprints do not count): the resident set on CPU, allocated
    GPU memory on CUDA."""
    import lightning_align.modules.policy  # noqa: F401  (both arms import both sides' libraries)
    import trl  # noqa: F401

    base = rss_mib() if schedule.device == "cpu" else torch.cuda.memory_allocated() / 2**20
    if arm == "project":
        project_dpo(model_dir, pairs_file, schedule)
    else:
        trl_dpo(model_dir, pairs_file, schedule, precompute=True)
    peak = peak_mib(schedule.device)
    return {"peak_mib": peak, "training_mib": peak - base}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="peak memory of one DPO arm in this process, printed as JSON")
    parser.add_argument("--memory", choices=("project", "trl"), required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--schedule", type=json.loads, required=True, help="Schedule fields as JSON")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(memory(args.memory, args.model_dir, args.pairs, Schedule(**args.schedule))))


if __name__ == "__main__":
    main()
