"""CUDA paths: the alignment pipeline under bf16-mixed, seeded generation, QLoRA and pruning on the device.

Skipped without a CUDA device; where one is present they show that nothing in the stages assumes the CPU (a CPU
generator handed to a CUDA op, reference log-probs outside the precision plugin, bitsandbytes kernels)."""
from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch

from lightning_align.algorithms.sampling import SamplingConfig, sample_responses
from lightning_align.cli import main
from lightning_align.models.loading import load_model, load_tokenizer
from lightning_align.models.spec import LoraSpec, ModelSpec
from lightning_align.modules.sft import SFTModule
from lightning_align.data.sft import SFTDataModule
from tests.conftest import TINY_OVERRIDES
from tests.test_mutual_taught_pipeline import SMALL_ALIGNMENT

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
GPU = ["trainer.accelerator=gpu", "trainer.devices=1"]


def test_align_pipeline_bf16_mixed_on_gpu(tmp_path):
    """pretrain -> sft -> reward -> mutual_taught (DPO rounds, RM refits, sampling) -> evaluate under bf16-mixed."""
    args = ["run", f"run.dir={tmp_path}", "run.name=gpu", "pipeline=align", *TINY_OVERRIDES, *SMALL_ALIGNMENT, *GPU,
            "trainer.precision=bf16-mixed"]
    assert main(args) == 0
    done = json.loads((tmp_path / "gpu" / "state.json").read_text())["done"]
    assert list(done) == ["pretrain", "sft", "reward", "mutual_taught", "evaluate"]
    assert all(math.isfinite(v) for stage in done.values() for v in stage["metrics"].values())
    assert not any(stage["warnings"] for stage in done.values())


def test_seeded_sampling_on_gpu(tiny_lm_dir):
    spec = ModelSpec(path=str(tiny_lm_dir))
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, tokenizer).cuda()
    config = SamplingConfig(max_new_tokens=12, temperature=1.0, top_p=0.9, batch_size=8)
    draw = lambda seed: sample_responses(model, tokenizer, ["the quick", "a class"], 3,  # noqa: E731
                                         config, torch.Generator().manual_seed(seed))
    assert draw(0) == draw(0) and draw(0) != draw(1)


def test_qlora_sft_on_gpu(tmp_path, tiny_lm_dir):
    """A 4-bit base with LoRA adapters trains on the GPU and exports a plain full-precision directory."""
    module = SFTModule(ModelSpec(path=str(tiny_lm_dir), quantization="4bit", lora=LoraSpec(r=4)))
    data = SFTDataModule(num_records=32, batch_size=4, max_length=32)
    L.Trainer(max_steps=2, accelerator="gpu", devices=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, limit_val_batches=0).fit(module, data)
    out = module.export(tmp_path / "qlora")
    reloaded = load_model(ModelSpec(path=str(out)))
    assert all(p.dtype == torch.float32 for p in reloaded.parameters())


def test_prune_on_gpu_in_bf16(tmp_path, tiny_lm_dir):
    code = main(["prune", "--model", str(tiny_lm_dir), "--blocks", "1", "--num-sequences", "2", "--block-size", "16",
                 "--no-compare", "--device", "cuda", "--dtype", "bfloat16", "--output", str(tmp_path / "p")])
    assert code == 0 and (tmp_path / "p" / "report.md").is_file()


def test_frozen_reward_model_in_4bit_on_gpu(tmp_path, tiny_lm_dir, tokenizer):
    """A frozen scoring RM loads through bitsandbytes 4-bit on the device and scores like its fp32 self."""
    import bitsandbytes as bnb

    from lightning_align.algorithms.sampling import score_responses
    from lightning_align.models.checkpoint import save_model_dir
    from lightning_align.models.reward_model import load_frozen_reward_model, load_reward_model

    rm = load_reward_model(ModelSpec(path=str(tiny_lm_dir)), tokenizer)
    torch.manual_seed(0)
    torch.nn.init.normal_(rm.score.weight, std=0.5)
    rm_dir = save_model_dir(rm, tokenizer, tmp_path / "rm")
    prompts, responses = ["the quick", "a class", "the for"] * 2, [" brown fox", " 3.14 42", " iterates"] * 2
    full = load_frozen_reward_model(rm_dir, None, "reward_quantization").cuda()
    small = load_frozen_reward_model(rm_dir, "4bit", "reward_quantization").cuda()
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in small.modules())
    exact = torch.tensor(score_responses(full, tokenizer, prompts, responses, 32))
    rounded = torch.tensor(score_responses(small, tokenizer, prompts, responses, 32))
    assert torch.isfinite(rounded).all() and torch.corrcoef(torch.stack([exact, rounded]))[0, 1] > 0.5
