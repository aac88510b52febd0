"""Gradual block removal during training: picks follow BlockPruner, the count reaches the target, exports reload."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_align.algorithms.block_pruner import StopRule, block_pruner
from lightning_align.callbacks.block_removal import IterativeBlockRemoval, next_block
from lightning_align.callbacks.width_pruning import GradualWidthPruning
from lightning_align.data.lm_datamodule import LMDataModule
from lightning_align.errors import ConfigError
from lightning_align.models.blocks import all_blocks
from lightning_align.models.checkpoint import load_pretrained, read_metadata
from lightning_align.models.mlp_width import mlp_widths
from lightning_align.models.spec import ModelSpec
from lightning_align.modules.optim import OptimConfig
from lightning_align.modules.student import StudentModule
from tiny_decoders import tiny_decoder, token_batch

SPEC = ModelSpec(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
                 num_key_value_heads=2, max_position_embeddings=64)


def test_each_pick_is_the_next_greedy_blockpruner_step() -> None:
    model, calibration = tiny_decoder(layers=3), token_batch(4, 12)
    expected = block_pruner(model, calibration, StopRule(num_blocks=3), batch_size=2, progress=False).order
    picked: list = []
    for _ in range(3):
        picked.append(next_block(model, calibration, set(picked), batch_size=2))
    assert picked == expected


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("corpus") / "texts.txt"
    path.write_text("\n\n".join(f"Paragraph {i} says the cat sat on mat {i % 7} again." * 4 for i in range(60)))
    return str(path)


def test_blocks_and_width_pruned_together_while_training(corpus: str, tmp_path: Path) -> None:
    L.seed_everything(0)
    module = StudentModule(model=SPEC, optim=OptimConfig(lr=1e-2, warmup_steps=2))
    removal = IterativeBlockRemoval(num_blocks=3, start_step=1, end_step=7, every_n_steps=1, calibration_batches=2)
    counts: list[int] = []

    class CountRecorder(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            counts.append(len(removal.order))

    callbacks = [removal, GradualWidthPruning(target_width=20, start_step=1, end_step=6), CountRecorder()]
    trainer = L.Trainer(max_steps=9, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=callbacks)
    trainer.fit(module, LMDataModule(corpus=corpus, block_size=16, batch_size=4))
    assert counts[0] == 0 and counts[-1] == 3 and len(set(counts)) >= 3, "blocks go one or two at a time"
    assert all(b >= a for a, b in zip(counts, counts[1:]))
    assert len(all_blocks(module.model)) == 6 - 3
    assert set(mlp_widths(module.model)) <= {20}
    module.export(tmp_path / "pruned")
    reloaded = load_pretrained(tmp_path / "pruned")
    batch = torch.randint(3, 300, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch).logits, module.model.eval()(batch).logits)
    assert set(read_metadata(tmp_path / "pruned").get("structure", {})) <= {"removed_blocks", "model_type"}


def test_removing_every_block_is_refused(corpus: str) -> None:
    module = StudentModule(model=SPEC)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        callbacks=[IterativeBlockRemoval(num_blocks=6, start_step=0, end_step=1)])
    with pytest.raises(ConfigError, match="num_blocks"):
        trainer.fit(module, LMDataModule(corpus=corpus, block_size=16, batch_size=4))
