"""Claim: Mutual-Taught (the RM refreshed every round) ends with a better policy than iterative DPO with r_0 frozen.

Runs ``pipeline=align`` on the gold task's ``blind_spot`` variant (``data.gold_task``; docs/mutual_taught.md): r_0 is
right on π_0's outputs but prefers repetitive responses, which are worth 0, so a policy optimised against it can drift
where it is wrong. Pretrain, SFT and r_0 are trained once (seeded by the run, shared by every arm and seed, so each
seed's arms start from the same π_0 and r_0), then the ``mutual_taught`` stage per seed and arm, seeded by the seed
(sampling, DPO batches and the round prompts). Arms (``ARMS``: a name and its overrides of the stage):

- ``mutual_taught``: the paper's rounds (M-step: y_new ≻ y_old pairs with the ε filter plus the E-step pairs);
- ``frozen_rm``: iterative DPO with r_0 frozen, the floor;
- ``oracle_rm``: the gold reward ranks and selects in place of any RM, the ceiling;
- ``mutual_taught_replay``: Mutual-Taught with r_0's own training pairs replayed in every M-step (an extension
  beyond the paper).

Values: the final round's gold reward and gold win rate vs π_0 on the held-out selection prompts
(``GoldRoundMetrics``); every round's metrics are kept too (``PER_ROUND``) for the page's per-round table.
"""
from __future__ import annotations

import json
import math
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
    "mutual_taught_replay": [f"{MT}.model.init_args.reward_refresh=true",
                             f"{MT}.trainer.callbacks.0.init_args.replay_reward_pairs=true"],
}
TASK = "blind_spot"
# The quick sizes' policy writes no words yet, so every gold reward is 0 and the oracle has nothing to rank by.
NOT_QUICK = ("oracle_rm",)
METRICS = ("gold_reward", "gold_win_rate")
COMPARED = [("mutual_taught", "frozen_rm"), ("oracle_rm", "mutual_taught"), ("mutual_taught_replay", "mutual_taught")]
PER_ROUND = ("gold_reward", "gold_win_rate", "rm_prev_accuracy_fresh", "rm_accuracy_fresh", "rm_accuracy_heldout",
             "repetitive_share")
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


def arm_rounds(out: Path, arm: str, seed: int, quick: bool) -> list[dict[str, float | None]]:
    """Run (or reuse) the shared stages and this arm's ``mutual_taught`` stage; its rows from round 0 (π_0, r_0) on,
    reduced to ``PER_ROUND`` (None where a value is NaN: no fresh pairs, say)."""
    args = ["pipeline=align", "~pipeline.stages.evaluate", f"run.dir={out}", "run.name=align",
            f"+data.gold_task={TASK}",
            "+trainer.enable_progress_bar=false", f"+{MT}.seed_everything={seed}", f"+{MT}.data.init_args.seed={seed}",
            *ARMS[arm], *(QUICK if quick else [])]
    trainer = MultiStageTrainer(compose(CONF, "config", args))
    trainer.run()
    rows = json.loads((trainer.run_dir / "mutual_taught" / "lightning_align.json").read_text())["rounds"]
    return [{"round": row["round"], **{k: _measured(row.get(k)) for k in PER_ROUND}} for row in rows]


def _measured(value: float | None) -> float | None:
    """The report writes an unmeasured value (NaN) as null; the record keeps None for both."""
    return None if value is None or math.isnan(value) else float(value)


def run(scale: Scale) -> ClaimResult:
    values: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    per_round: dict[str, list[list[dict[str, float | None]]]] = {}
    arms = [arm for arm in ARMS if not (scale.quick and arm in NOT_QUICK)]
    for seed in range(scale.seeds):
        for arm in arms:
            start = time.perf_counter()
            rows = arm_rounds(scale.out / "mutual_taught", arm, seed, scale.quick)
            seconds[arm] = seconds.get(arm, 0.0) + time.perf_counter() - start
            per_round.setdefault(arm, []).append(rows)
            for metric in METRICS:
                values.setdefault(f"{arm}: {metric}", []).append(float(rows[-1][metric]))
    comparisons = [(f"{better}: {m}", f"{other}: {m}") for better, other in COMPARED for m in METRICS
                   if better in arms and other in arms]
    rounds = max(len(rows) - 1 for runs in per_round.values() for rows in runs)
    setup = (f"`pipeline=align data.gold_task={TASK}`{' with tiny quick sizes' if scale.quick else ''}: the gold "
             "task's blind-spot variant (a response repeating a word more than twice is worth 0; r_0, trained on "
             "documentation continuations where that is rare, prefers such responses). Pretrain, SFT and r_0 trained "
             "once (run seed 42) and shared; the `mutual_taught` stage per seed (its seed and prompt draw = the seed), "
             f"up to {rounds} round(s) (the τ rule may stop a run earlier: its last round counts). Arms: "
             "`mutual_taught` (the paper's M-step), `frozen_rm` (iterative DPO, the floor), `oracle_rm` (the gold "
             "reward ranks and selects, the ceiling), `mutual_taught_replay` (r_0's training pairs replayed in every "
             "M-step: an extension beyond the paper). Values: the last round's gold reward and gold win rate vs π_0 "
             "(higher is better). The first run of the shared stages is counted in the first arm's seconds.")
    return ClaimResult(values=values, seconds=seconds, comparisons=comparisons, setup=setup, per_round=per_round,
                       notes=["The plain gold task (no blind spot) is not rerun here: its earlier 5-seed run was "
                              "inconclusive (docs/mutual_taught.md). Seeds vary the `mutual_taught` stage only; π_0 "
                              "and r_0 are shared.", *(["Quick mode leaves out `oracle_rm`: its tiny policy writes no "
                                                       "words, so there is no gold reward to rank by."]
                                                      if scale.quick else [])])
