import lightning as L

from lightning_align.data.gold_task import gold_reward
from lightning_align.data.sft import SFTDataModule
from lightning_align.models.spec import ModelSpec
from lightning_align.modules.optim import OptimConfig
from lightning_align.modules.sft import SFTModule


def test_sft_lowers_response_loss_on_gold_records(tiny_lm_dir):
    module = SFTModule(ModelSpec(path=str(tiny_lm_dir)), OptimConfig(lr=5e-3, warmup_steps=0, min_lr_ratio=1.0))
    data = SFTDataModule(num_records=64, batch_size=8, max_length=32, val_fraction=0.25)
    trainer = L.Trainer(max_steps=16, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        check_val_every_n_epoch=1000)
    start = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    trainer.fit(module, datamodule=data)
    end = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    assert end < start - 1.0
    assert all(gold_reward(r["response"]) >= 0.5 for r in data.train_records)
