"""Claim: Mutual-Taught (the RM refreshed every round) ends with a better policy than iterative DPO with r_0 frozen.

Runs ``pipeline=align``: pretrain, SFT and r_0 once (seeded by the run, shared by every arm and seed, so each seed's
two arms start from the same π_0 and r_0), then the ``mutual_taught`` stage per seed and arm, seeded by the seed
(sampling, DPO batches and the round prompts), with ``reward_refresh`` true and false. Values: the final round's
gold reward and gold win rate vs π_0 on the held-out selection prompts (``GoldRoundMetrics``).

Left for later (the issue's blind-spot task): a task where r_0 is good on π_0's outputs but has a blind spot the
policy can drift into, and the gold-reward oracle RM as the ceiling. ``ARMS`` is where they join: an arm is a name and
its overrides of the ``mutual_taught`` stage.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks.reproduce_types import ClaimResult, Scale
from lightning_align.pipeline import MultiStageTrainer
from lightning_align.run_config import compose

CONF = Path(__file__).resolve().parents[1] / "conf"
MT = "stages.mutual_taught"
ARMS = {
    "mutual_taught": [f"{MT}.model.init_args.reward_refresh=true"],
    "frozen_rm": [f"{MT}.model.init_args.reward_refresh=false"],
    "oracle_rm": [f"{MT}.model.init_args.reward_refresh=false", f"{MT}.model.init_args.ranker=gold"],
}
METRICS = ("gold_reward", "gold_win_rate")
QUICK_SAMPLING = "{max_new_tokens:6,temperature:1.0,top_p:1.0,batch_size:64}"
QUICK = [
    "model.vocab_size=300", "model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
    "model.num_attention_heads=2", "model.num_key_value_heads=2", "model.max_position_embeddings=64",
    "stages.pretrain.trainer.max_steps=10", "stages.pretrain.trainer.val_check_interval=10",
    "stages.pretrain.trainer.limit_val_batches=1", "stages.pretrain.data.init_args.block_size=32",
    "stages.sft.trainer.max_steps=4", "stages.sft.trainer.val_check_interval=4",
    "stages.sft.trainer.limit_val_batches=1",
    "stages.sft.data.init_args.num_records=32", "stages.sft.data.init_args.max_length=24",
    "stages.reward.trainer.max_steps=4", "stages.reward.trainer.val_check_interval=4",
    "+stages.reward.trainer.limit_val_batches=1", "stages.reward.data.init_args.num_pairs=32",
    "stages.reward.model.init_args.max_length=24",
    f"{MT}.trainer.max_epochs=1", f"{MT}.model.init_args.max_length=24",
    f"{MT}.data.init_args.policy_prompts=4", f"{MT}.data.init_args.reward_prompts=4",
    f"{MT}.data.init_args.selection_prompts=4", f"{MT}.data.init_args.batch_size=4",
    f"{MT}.trainer.callbacks.0.init_args.num_samples=2", f"{MT}.trainer.callbacks.0.init_args.tau=0.0",
    f"{MT}.trainer.callbacks.0.init_args.checkpoints=1",
    f"{MT}.trainer.callbacks.0.init_args.sampling={QUICK_SAMPLING}",
    f"{MT}.trainer.callbacks.1.init_args.sampling={QUICK_SAMPLING}",
]


def final_round(out: Path, arm: str, seed: int, quick: bool) -> dict[str, float]:
    """Run (or reuse) the shared stages and this arm's ``mutual_taught`` stage; the last round's row."""
    args = ["pipeline=align", "~pipeline.stages.evaluate", f"run.dir={out}", "run.name=align",
            "+trainer.enable_progress_bar=false", f"+{MT}.seed_everything={seed}", f"+{MT}.data.init_args.seed={seed}",
            *ARMS[arm], *(QUICK if quick else [])]
    trainer = MultiStageTrainer(compose(CONF, "config", args))
    trainer.run()
    rounds = json.loads((trainer.run_dir / "mutual_taught" / "lightning_align.json").read_text())["rounds"]
    return rounds[-1]


def run(scale: Scale) -> ClaimResult:
    values: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    rounds = []
    for seed in range(scale.seeds):
        for arm in ARMS:
            start = time.perf_counter()
            row = final_round(scale.out / "mutual_taught", arm, seed, scale.quick)
            seconds[arm] = seconds.get(arm, 0.0) + time.perf_counter() - start
            rounds.append(int(row["round"]))
            for metric in METRICS:
                values.setdefault(f"{arm}: {metric}", []).append(float(row[metric]))
    comparisons = [(f"mutual_taught: {m}", f"frozen_rm: {m}") for m in METRICS]
    comparisons += [(f"oracle_rm: {m}", f"mutual_taught: {m}") for m in METRICS]
    setup = (f"`pipeline=align`{' with tiny quick sizes' if scale.quick else ''}; pretrain, SFT and r_0 trained once "
             f"(run seed 42) and shared; the `mutual_taught` stage per seed (its seed and prompt draw = the seed), "
             f"{max(rounds)} round(s). Values: the last round's gold reward and gold win rate vs π_0 "
             "(higher is better). The first run of the shared stages is counted in the first arm's seconds.")
    return ClaimResult(values=values, seconds=seconds, comparisons=comparisons, setup=setup,
                       notes=["Not yet run: the blind-spot task and the gold-reward oracle RM arm (see `ARMS`)."])
