"""AdamW moments carried across stage boundaries: saved by name, sliced by width surgery, continuing one optimizer."""
from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from lightning_align.callbacks.block_removal import IterativeBlockRemoval
from lightning_align.callbacks.width_pruning import GradualWidthPruning
from lightning_align.errors import DataError
from lightning_align.models.adam_moments import (
    MOMENT_KEYS,
    MOMENTS_FILE,
    load_moments,
    moments_bytes,
    named_moments,
    read_moments,
)
from lightning_align.models.checkpoint import load_pretrained, save_model_dir
from lightning_align.models.mlp_width import mlp_modules, slice_mlp_widths
from lightning_align.models.spec import LoraSpec, ModelSpec
from lightning_align.modules.optim import OptimConfig
from lightning_align.modules.student import StudentModule
from tests.test_prune_callbacks import SPEC, _data, _trainer, corpus  # noqa: F401  (corpus: a shared fixture)

OPTIM = OptimConfig(lr=1e-2, warmup_steps=2)


def _adamw(model: torch.nn.Module, lr: float = 1e-2) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> None:
    optimizer.zero_grad()
    model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()


def _trained(model: torch.nn.Module, steps: int = 3) -> torch.optim.AdamW:
    torch.manual_seed(0)
    optimizer = _adamw(model)
    for _ in range(steps):
        _step(model, optimizer, torch.randint(3, 300, (2, 16)))
    return optimizer


def test_moments_saved_next_to_the_model_are_loaded_unchanged_by_name(tiny_lm, tokenizer, tmp_path: Path) -> None:
    model = copy.deepcopy(tiny_lm).train()
    saved = named_moments(model, _trained(model))
    out = save_model_dir(model, tokenizer, tmp_path / "stage", files={MOMENTS_FILE: moments_bytes(saved)})
    assert set(saved) == {name for name, _ in model.named_parameters()}
    assert int(saved["model.norm.weight"]["step"]) == 3

    plain = AutoModelForCausalLM.from_pretrained(out)  # the extra file does not disturb plain transformers
    reversed_order = torch.optim.AdamW(list(plain.parameters())[::-1], lr=1e-2)
    load_moments(plain, reversed_order, read_moments(out), out)
    for name, param in plain.named_parameters():
        for key in MOMENT_KEYS:
            assert torch.equal(reversed_order.state[param][key], saved[name][key]), (name, key)


def test_width_surgery_slices_moments_with_the_weights_keep_indices(tiny_lm) -> None:
    model = copy.deepcopy(tiny_lm).train()
    optimizer = _trained(model)
    mlp = mlp_modules(model)[1]
    old = {name: getattr(mlp, name).weight for name in ("gate_proj", "up_proj", "down_proj")}
    before = {name: {key: optimizer.state[param][key].clone() for key in MOMENT_KEYS} for name, param in old.items()}
    keep = [torch.tensor([0, 5, 9, 63]), torch.tensor([2, 3, 40])]
    slice_mlp_widths(model, keep, [optimizer])

    grouped = [param for group in optimizer.param_groups for param in group["params"]]
    assert not any(param is stale for param in grouped for stale in old.values()), "the cut tensors left the optimizer"
    assert not any(stale in optimizer.state for stale in old.values())
    for name, dim in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
        new = getattr(mlp, name).weight
        assert any(param is new for param in grouped)
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(optimizer.state[new][key], before[name][key].index_select(dim, keep[1])), (name, key)
        assert torch.equal(optimizer.state[new]["step"], before[name]["step"])
    moments = named_moments(model, optimizer)
    assert {n: m["exp_avg"].shape for n, m in moments.items()} == {n: p.shape for n, p in model.named_parameters()}
    _step(model, optimizer, torch.randint(3, 300, (2, 16)))  # the optimizer trains the sliced model on


def test_carried_moments_continue_the_optimizer_where_a_fresh_one_jolts(tiny_lm, tokenizer, tmp_path: Path) -> None:
    first = copy.deepcopy(tiny_lm).train()
    optimizer = _trained(first, steps=4)
    out = save_model_dir(first, tokenizer, tmp_path / "stage",
                         files={MOMENTS_FILE: moments_bytes(named_moments(first, optimizer))})
    batch = torch.randint(3, 300, (2, 16))
    carried, fresh = load_pretrained(out).train(), load_pretrained(out).train()
    carried_optimizer, fresh_optimizer = _adamw(carried), _adamw(fresh)
    load_moments(carried, carried_optimizer, read_moments(out), out)
    start = dict(fresh.named_parameters())
    start = {name: param.detach().clone() for name, param in start.items()}
    for model, opt in ((first, optimizer), (carried, carried_optimizer), (fresh, fresh_optimizer)):
        _step(model, opt, batch)

    continued = dict(first.named_parameters())
    for name, param in carried.named_parameters():
        torch.testing.assert_close(param, continued[name], rtol=0, atol=1e-6, msg=name)
    weight = "model.layers.0.mlp.down_proj.weight"
    fresh_update = (dict(fresh.named_parameters())[weight] - start[weight]).abs().mean()
    carried_update = (dict(carried.named_parameters())[weight] - start[weight]).abs().mean()
    assert fresh_update > 1.5 * carried_update, "a fresh AdamW's first step is ~lr per weight, whatever the gradient"


def test_moments_of_another_model_are_refused_naming_the_file(tiny_lm, tokenizer, tmp_path: Path) -> None:
    model = copy.deepcopy(tiny_lm).train()
    moments = named_moments(model, _trained(model))
    out = save_model_dir(model, tokenizer, tmp_path / "stage", files={MOMENTS_FILE: moments_bytes(moments)})
    narrower = slice_mlp_widths(load_pretrained(out).train(), [torch.arange(32)] * 2)
    with pytest.raises(DataError, match=rf"{MOMENTS_FILE}: .*other shape \['model.layers.0.mlp.down_proj.weight'"):
        load_moments(narrower, _adamw(narrower), read_moments(out), out)
    del moments["model.norm.weight"]
    with pytest.raises(DataError, match=r"missing \['model.norm.weight'\]"):
        load_moments(model, _adamw(model), moments, out)


# Stages through Lightning, as the pipeline runs them.

class StartState(L.Callback):
    """The optimizer state at the start of training, by parameter name."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.moments = named_moments(pl_module.model, trainer.optimizers[0])


def _fit(module: StudentModule, corpus: str, steps: int, *callbacks: L.Callback) -> StudentModule:
    _trainer(steps, list(callbacks)).fit(module, _data(corpus))
    return module


def _student(spec: ModelSpec, carry: bool = True) -> StudentModule:
    L.seed_everything(0)
    return StudentModule(model=spec, optim=OPTIM, carry_optimizer_state=carry)


def test_stages_hand_moments_through_width_pruning(corpus: str, tmp_path: Path) -> None:
    enlarged = _fit(_student(SPEC), corpus, 3).export(tmp_path / "enlarge")
    start = StartState()
    pruning = GradualWidthPruning(start_step=1, end_step=3, target_width=20)
    prune = _fit(_student(ModelSpec(path=str(enlarged))), corpus, 4, pruning, start)
    saved = read_moments(enlarged)
    assert start.moments.keys() == saved.keys()
    assert all(torch.equal(start.moments[n][k], saved[n][k]) for n in saved for k in MOMENT_KEYS)

    pruned = prune.export(tmp_path / "prune")
    moments = read_moments(pruned)
    reloaded = AutoModelForCausalLM.from_pretrained(pruned)
    assert reloaded.config.intermediate_size == 20
    shapes = {n: p.shape for n, p in reloaded.named_parameters()}
    assert {n: m["exp_avg_sq"].shape for n, m in moments.items()} == shapes
    assert int(moments["model.norm.weight"]["step"]) == 3 + 4, "one step count across both stages"
    recover = StartState()
    _fit(_student(ModelSpec(path=str(pruned))), corpus, 1, recover)
    assert all(torch.equal(recover.moments[n]["exp_avg"], moments[n]["exp_avg"]) for n in moments)


def test_carrying_off_starts_fresh_and_saves_nothing(corpus: str, tmp_path: Path) -> None:
    carried = _fit(_student(SPEC), corpus, 2).export(tmp_path / "carried")
    start = StartState()
    plain = _fit(_student(ModelSpec(path=str(carried)), carry=False), corpus, 2, start).export(tmp_path / "plain")
    assert start.moments == {}, "without the option AdamW starts empty, as before"
    assert not (plain / MOMENTS_FILE).exists()


def test_block_removal_drops_the_cut_blocks_moments(corpus: str, tmp_path: Path) -> None:
    before = _fit(_student(SPEC), corpus, 2).export(tmp_path / "before")
    removal = IterativeBlockRemoval(num_blocks=2, start_step=0, end_step=2, every_n_steps=1, calibration_batches=1)
    cut = _fit(_student(ModelSpec(path=str(before))), corpus, 3, removal).export(tmp_path / "cut")
    model = load_pretrained(cut)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in load_pretrained(before).parameters())
    assert read_moments(cut).keys() == {name for name, _ in model.named_parameters()}
    _fit(_student(ModelSpec(path=str(cut))), corpus, 1)  # the next stage takes them


def test_lora_and_8bit_stages_train_fresh_and_say_so(corpus: str, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    carried = _fit(_student(SPEC), corpus, 2).export(tmp_path / "carried")
    lora = ModelSpec(path=str(carried), lora=LoraSpec(r=4, alpha=8.0, dropout=0.0))
    with caplog.at_level("WARNING"):
        out = _fit(_student(lora), corpus, 2).export(tmp_path / "lora")
        eight_bit = StudentModule(model=ModelSpec(path=str(carried)), optim=OptimConfig(name="adamw8bit"),
                                  carry_optimizer_state=True)
    assert "LoRA adapters are merged on export" in caplog.text
    assert not (out / MOMENTS_FILE).exists()
    assert not eight_bit.carry and "optim.name=adamw8bit keeps quantized moments" in caplog.text
