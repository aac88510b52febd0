"""LoRA / QLoRA training through PEFT, quantization only where it is safe, and merged plain exports."""
from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import PAIRS, TINY, write_pairs
from tests.tiny_decoders import FAMILIES, tiny_decoder
from lightning_align.algorithms.reward_training import pair_rewards
from lightning_align.cli import PACKAGE_CONF, main
from lightning_align.config import validate_dataclass
from lightning_align.data.preference import PreferenceDataModule, collate_pairs
from lightning_align.data.gold_task import sft_records
from lightning_align.data.sft import SFTDataModule, collate_sft
from lightning_align.errors import ConfigError
from lightning_align.models.adapters import ADAPTER_DIR, merged
from lightning_align.models.checkpoint import read_metadata, save_model_dir
from lightning_align.models.loading import build_llama, load_model
from lightning_align.models.reward_model import load_frozen_reward_model, load_reward_model
from lightning_align.models.spec import LoraSpec, ModelSpec
from lightning_align.modules.optim import OptimConfig
from lightning_align.modules.policy import PolicyModule
from lightning_align.modules.reward import RewardModule
from lightning_align.modules.sft import SFTModule
from lightning_align.modules.student import DistillConfig, StudentModule
from lightning_align.pipeline import MultiStageTrainer
from lightning_align.run_config import compose

LORA = LoraSpec(r=4, alpha=8.0, dropout=0.0)
OPTIM = OptimConfig(lr=1e-2, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0)


def _trainer(steps: int) -> L.Trainer:
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     check_val_every_n_epoch=1000)


def _sft_data() -> SFTDataModule:
    return SFTDataModule(num_records=32, batch_size=4, max_length=32, val_fraction=0.25)


def _trainable(module: L.LightningModule) -> set[str]:
    return {name for name, p in module.model.named_parameters() if p.requires_grad}


def test_lora_sft_trains_only_adapters_and_exports_a_plain_merged_model(tmp_path, tiny_lm_dir, tokenizer):
    spec = ModelSpec(path=str(tiny_lm_dir), lora=LoraSpec(r=4, alpha=8.0, dropout=0.0, keep_adapters=True))
    module = SFTModule(spec, OPTIM)
    assert _trainable(module) and all("lora_" in name for name in _trainable(module))
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    _trainer(4).fit(module, datamodule=_sft_data())
    after = module.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed), "the base stays frozen"
    out = module.export(tmp_path / "sft")
    assert (out / ADAPTER_DIR / "adapter_config.json").is_file() and not (out / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in name for name, _ in reloaded.named_parameters())
    in_memory = module.model.eval().merge_and_unload()
    ids = torch.randint(3, 300, (2, 16))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, in_memory(ids).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_sft_on_every_family_trains_adapters_and_exports_the_merged_model(tmp_path, tokenizer, family):
    base = tiny_decoder(family, layers=2, vocab=len(tokenizer))
    path = save_model_dir(base, tokenizer, tmp_path / family)
    module = SFTModule(ModelSpec(path=str(path), lora=LORA), OPTIM)
    trainable = _trainable(module)
    assert trainable and all("lora_" in name for name in trainable)
    linears = {n.rsplit(".", 1)[-1] for n, m in base.model.layers.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable} == linears, "every projection adapts"
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    _trainer(2).fit(module, datamodule=_sft_data())
    after = module.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed), "the base stays frozen"
    reloaded = AutoModelForCausalLM.from_pretrained(module.export(tmp_path / "sft")).eval()
    in_memory = module.model.eval().merge_and_unload()
    ids = torch.randint(3, len(tokenizer), (2, 16))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, in_memory(ids).logits)


def test_lora_reward_stage_trains_adapters_and_the_head(tmp_path, tiny_lm_dir, tokenizer):
    module = RewardModule(ModelSpec(path=str(tiny_lm_dir), lora=LORA), OPTIM)
    trainable = _trainable(module)
    assert any("score" in name for name in trainable) and all("lora_" in n or "score" in n for n in trainable)
    data = PreferenceDataModule(path=write_pairs(tmp_path / "pairs.jsonl", PAIRS), val_fraction=0.25, batch_size=4)
    _trainer(10).fit(module, datamodule=data)
    out = module.export(tmp_path / "rm")
    assert read_metadata(out)["kind"] == "reward_model"
    batch = collate_pairs(tokenizer, PAIRS, 64)
    module.model.eval()
    expected = torch.cat(pair_rewards(module.model, batch))
    assert expected.abs().max() > 0, "the head learned"
    got = torch.cat(pair_rewards(load_reward_model(ModelSpec(path=str(out)), tokenizer), batch))
    assert torch.allclose(got, expected, atol=1e-5)


def test_qlora_4bit_sft_runs_and_exports_full_precision(tmp_path, tiny_lm_dir):
    module = SFTModule(ModelSpec(path=str(tiny_lm_dir), quantization="4bit", lora=LORA), OPTIM)
    assert "Linear4bit" in type(module.model.get_base_model().model.layers[0].mlp.up_proj.base_layer).__name__
    _trainer(2).fit(module, datamodule=_sft_data())
    out = module.export(tmp_path / "qlora")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.model.layers[0].mlp.up_proj.weight.dtype == torch.float32
    assert type(reloaded.model.layers[0].mlp.up_proj) is torch.nn.Linear


def test_merge_uses_the_full_precision_base(tiny_lm_dir, tokenizer):
    spec = ModelSpec(path=str(tiny_lm_dir), quantization="8bit", lora=LORA)
    module = SFTModule(spec, OPTIM)
    plain = merged(module.model, spec, load_model, tokenizer)
    base = load_model(ModelSpec(path=str(tiny_lm_dir)))
    ids = torch.randint(3, 300, (1, 12))
    with torch.no_grad():  # fresh adapters add nothing: the merge is the original fp32 model
        assert torch.equal(plain(ids).logits, base(ids).logits)


def test_quantizing_a_fully_trained_model_is_refused_at_planning(tmp_path, capsys, tiny_lm_dir):
    code = main(["run", f"run.dir={tmp_path}", "pipeline=pretrained_align", f"model.path={tiny_lm_dir}",
                 "model.quantization=8bit"])
    assert code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: config key 'model.quantization'") and "add lora" in line
    assert not (tmp_path / "default").exists()
    with pytest.raises(ConfigError, match="'quantization'.*add lora"):
        ModelSpec(path=str(tiny_lm_dir), quantization="4bit")


def test_lora_fields_are_range_checked(tiny_lm_dir):
    with pytest.raises(ConfigError, match="'model.lora.*r'.*PositiveInt"):
        validate_dataclass(ModelSpec, {"path": str(tiny_lm_dir), "lora": {"r": 0}}, "model")


def test_frozen_reward_model_and_teacher_load_quantized(tmp_path, tiny_lm_dir, tokenizer):
    rm = load_frozen_reward_model(tiny_lm_dir, "8bit", "model.init_args.reward_quantization")
    assert "Linear8bitLt" in type(rm.model.layers[0].mlp.up_proj).__name__
    assert not any(p.requires_grad for p in rm.parameters())
    student = StudentModule(ModelSpec(**TINY), distill=DistillConfig(teacher=str(tiny_lm_dir), quantization="4bit"))
    assert "Linear4bit" in type(student.teacher.model.layers[0].mlp.up_proj).__name__
    with pytest.raises(ConfigError, match="reward_quantization.*reward_refresh: false"):
        PolicyModule(ModelSpec(path=str(tiny_lm_dir)), reward_model=str(tiny_lm_dir), reward_quantization="8bit")
    policy = PolicyModule(ModelSpec(path=str(tiny_lm_dir)), reward_model=str(tiny_lm_dir), reward_refresh=False,
                          reward_quantization="4bit")
    assert "Linear4bit" in type(policy.reward_model.model.layers[0].mlp.up_proj).__name__


def test_a_structured_directory_refuses_quantization(tmp_path, tokenizer):
    model = build_llama(ModelSpec(**TINY), tokenizer)
    out = save_model_dir(model, tokenizer, tmp_path / "m", {"structure": {"intermediate_sizes": [48, 64]}})
    with pytest.raises(ConfigError, match="'model.quantization'.*structurally pruned"):
        load_model(ModelSpec(path=str(out), quantization="4bit", lora=LORA))


def test_lora_dpo_starts_at_ln2_and_learns(tmp_path, tiny_lm_dir):
    module = PolicyModule(ModelSpec(path=str(tiny_lm_dir), lora=LORA), OPTIM, beta=0.5)
    data = PreferenceDataModule(path=write_pairs(tmp_path / "pairs.jsonl", PAIRS), val_fraction=0.25, batch_size=4)
    trainer = _trainer(10)
    start = trainer.validate(module, datamodule=data, verbose=False)[0]
    assert start["val/loss"] == pytest.approx(math.log(2), abs=1e-5)
    trainer.fit(module, datamodule=data)
    assert trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"] < start["val/loss"]


def test_run_level_lora_reaches_every_training_stage(tmp_path, tiny_lm_dir):
    cfg = compose(PACKAGE_CONF, "config", [f"run.dir={tmp_path}", "pipeline=pretrained_align",
                                           f"model.path={tiny_lm_dir}", "+model.lora={r: 4}", "model.quantization=4bit"])
    specs = {s.name: s.config["model"]["init_args"]["model"] for s in MultiStageTrainer(cfg).stages}
    for name in ("sft", "reward", "mutual_taught"):
        assert specs[name]["lora"] == {"r": 4} and specs[name]["quantization"] == "4bit", name
    assert specs["mutual_taught"]["path"] == str(tmp_path / "default" / "sft")
    assert "lora" not in specs["evaluate"] and "quantization" not in specs["evaluate"], "evaluation runs the export"


@pytest.mark.parametrize("lora", [None, LORA])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_lm_dir, lora):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same adapter initialisation
        module = SFTModule(ModelSpec(path=str(tiny_lm_dir), lora=lora, gradient_checkpointing=checkpointing), OPTIM)
        assert module.model.is_gradient_checkpointing == checkpointing
        batch = collate_sft(module.tokenizer, sft_records(4, 0), 32)
        module._loss(batch).backward()
        grads.append({n: p.grad for n, p in module.model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all(g is not None for g in grads[1].values())
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])
