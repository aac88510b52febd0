"""Preference pairs {"prompt","chosen","rejected"}: tokenization, batching and the datamodule of RM and DPO stages.

A batch holds chosen rows first and rejected rows second ([2B, T], right-padded), so a model scores both in one
forward. Records may carry extra float fields (e.g. reference log-probs a policy computed once); they are batched
as [B] tensors under the same name.

Every path that encodes a prompt (SFT, DPO, RM scoring, sampling, evaluation) goes through `encode_prompt` /
`encode_response` / `encode_pairs`, which apply the tokenizer's chat template when it has one.
"""
from __future__ import annotations

import random
import warnings
from typing import Any, Callable, Sequence, Union

import torch
from jsonargparse.typing import OpenUnitInterval, PositiveInt
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from lightning_align.data.gold_task import check_gold_task, preference_records
from lightning_align.data.loaders import check_source
from lightning_align.data.records import read_pairs
from lightning_align.data.resumable import ResumableDataModule
from lightning_align.errors import ConfigError

GOLD = "gold"
Prompt = Union[str, list[dict[str, str]]]  # one user message, or chat messages {"role", "content"}


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Padding id: the tokenizer's pad token, else EOS (positions under the mask never matter)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _chat(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[dict[str, str]] | None:
    """The messages to render through the chat template, or None when `prompt` is encoded as plain text.

    Plain text: an empty prompt (language-modelling text), or any prompt when the tokenizer has no template. A list
    of messages without a template is accepted only if it is one user message (the same as its text): joining a
    longer conversation would invent a format the model never saw.
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}] if prompt and tokenizer.chat_template else None
    if tokenizer.chat_template:
        return list(prompt)
    if len(prompt) == 1 and prompt[0].get("role") == "user":
        return None
    raise ConfigError("model.chat_template", f"a prompt of {len(prompt)} chat messages needs a chat template, but the "
                      "tokenizer has none (or chat_template is false); use a model with a template or string prompts")


def _plain_text(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else prompt[0]["content"]


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    """Prompt ids exactly as generation, training and scoring all see them.

    With a chat template the prompt is rendered with the generation prompt (the assistant header) and tokenized
    without the tokenizer's own special tokens, so a template that writes BOS itself gets exactly one; if the template
    writes none but the tokenizer adds one to plain text, that one BOS is put in front. Without a template (or for an
    empty prompt) the text is tokenized as is, special tokens as the tokenizer adds them.
    """
    messages = _chat(tokenizer, prompt)
    if messages is None:
        return tokenizer(_plain_text(prompt))["input_ids"]
    ids = tokenizer(_render(tokenizer, messages, True), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and ids[:1] != [bos] and tokenizer("")["input_ids"][:1] == [bos]:
        ids = [bos] + ids
    return ids


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str, prompt: Prompt = "") -> list[int]:
    """Response ids ending where the model must learn to stop (and where the RM reads its score).

    With a chat template (and a non-empty `prompt`): the text the template writes for an assistant turn after the
    rendered generation prompt, i.e. the (possibly template-trimmed) content followed by the template's end of turn
    (`<|im_end|>` and a newline for ChatML). If rendering [prompt, answer] does not start with the rendered prompt
    (a template that rewrites earlier turns), or without a template, the response text is followed by EOS.
    """
    messages = _chat(tokenizer, prompt)
    if messages is not None:
        head = _render(tokenizer, messages, True)
        whole = _render(tokenizer, messages + [{"role": "assistant", "content": response}], False)
        if whole.startswith(head):
            return tokenizer(whole[len(head):], add_special_tokens=False)["input_ids"]
        warnings.warn("the chat template does not extend the prompt with the answer; answers end with EOS instead")
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], responses: Sequence[str], max_length: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded prompt+response batch: (input_ids, attention_mask, response_mask), each [B, T].

    response_mask marks the response tokens (incl. EOS) whose log-probs count; the prompt is masked out.
    Sequences over max_length lose prompt tokens from the left first, then response tokens from the right.
    """
    rows, starts = [], []
    for prompt, response in zip(prompts, responses, strict=True):
        p, r = encode_prompt(tokenizer, prompt), encode_response(tokenizer, response, prompt)
        r = r[:max_length - 1]
        p = p[max(0, len(p) + len(r) - max_length):]
        rows.append(p + r)
        starts.append(len(p))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros_like(ids)
    response_mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, starts)):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        response_mask[i, start:len(row)] = True
    return ids, mask, response_mask


def collate_pairs(tokenizer: PreTrainedTokenizerBase, records: list[dict[str, Any]],
                  max_length: int) -> dict[str, Tensor]:
    """Batch of B pairs: input_ids/attention_mask/response_mask of shape [2B, T] plus any float fields as [B]."""
    prompts = [r["prompt"] for r in records]
    ids, mask, response_mask = encode_pairs(tokenizer, prompts + prompts, [r["chosen"] for r in records]
                                            + [r["rejected"] for r in records], max_length)
    batch = {"input_ids": ids, "attention_mask": mask, "response_mask": response_mask}
    for key, value in records[0].items():
        if isinstance(value, float):
            batch[key] = torch.tensor([r[key] for r in records], dtype=torch.float32)
    return batch


def load_pairs(path: str, num_pairs: int, seed: int, gold_task: str = "plain") -> list[dict[str, Any]]:
    """Pairs from the built-in gold task (labelled by its variant `gold_task`) or a data file in a TRL preference
    format (see `data/records.py`)."""
    if path == GOLD:
        return preference_records(num_pairs, seed, task=gold_task)
    return read_pairs(path)


def split_records(records: list[dict[str, Any]], val_fraction: float,
                seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, val) after a seeded shuffle; with one record both sides get it. A reward model's export saves its
    val side (`modules/reward.py`), so evaluation never re-derives it."""
    records = list(records)
    random.Random(seed).shuffle(records)
    n_val = max(1, round(len(records) * val_fraction)) if len(records) > 1 else 0
    return records[n_val:] or records, records[:n_val] or records


class PairSlots(Dataset):
    """A fixed number of slots over a replaceable list of records (slot i holds record i mod len).

    Mutual-Taught builds each round's pairs after Lightning has already built that epoch's dataloader; a fixed
    length keeps the epoch's batch count valid while the records behind the slots change at round start.
    """

    def __init__(self, records: list[dict[str, Any]], slots: int | None = None) -> None:
        self.records = records
        self.slots = slots if slots is not None else len(records)

    def __len__(self) -> int:
        return self.slots

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.records[index % len(self.records)]


class PreferenceDataModule(ResumableDataModule):
    """Train/val pairs for the reward and DPO stages: `path` is a data file (`data/records.py`) or "gold" (labelled
    by the gold reward of the variant `gold_task`, `data/gold_task.py`).

    The tokenizer and `max_length` are the LightningModule's: a DPO policy's reference log-probs and its training
    batches must be truncated alike, so the length is written in one place. If the module has `annotate(records)`
    (DPO: reference log-probs, computed once without grad), the first loader built runs it on every train and val
    record: by then Lightning has moved the model to its device, and annotating both sets at once makes the initial
    model the reference of both, whichever of fit or validate comes first.
    """

    def __init__(self, path: str = GOLD, num_pairs: PositiveInt = 512, val_fraction: OpenUnitInterval = 0.1,
                 batch_size: PositiveInt = 16, seed: int = 0, gold_task: str = "plain") -> None:
        super().__init__()
        check_source(path, GOLD)
        check_gold_task(gold_task, path, GOLD)
        self.path, self.num_pairs, self.val_fraction, self.gold_task = path, num_pairs, val_fraction, gold_task
        self.batch_size, self.seed = batch_size, seed
        self.train_set: PairSlots | None = None
        self.val_set: PairSlots | None = None

    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        pairs = load_pairs(self.path, self.num_pairs, self.seed, self.gold_task)
        train, val = split_records(pairs, self.val_fraction, self.seed)
        self.train_set, self.val_set = PairSlots(train), PairSlots(val)

    def _annotate(self) -> None:
        annotate: Callable[[list[dict]], None] | None = getattr(self.trainer.lightning_module, "annotate", None)
        if annotate is not None:
            annotate([r for r in self.train_set.records + self.val_set.records if "ref_chosen" not in r])

    def _collate(self, records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        module = self.trainer.lightning_module
        return collate_pairs(module.tokenizer, records, module.max_length)

    def state_dict(self) -> dict[str, Any]:
        """The loader's position and the reference log-probs: a resumed DPO stage must keep the initial policy's,
        not annotate again with the weights it resumes from."""
        state = super().state_dict()
        records = self.train_set.records + self.val_set.records if self.train_set is not None else []
        if any("ref_chosen" in r for r in records):
            state["reference"] = [[r.get("ref_chosen"), r.get("ref_rejected")] for r in records]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called after `setup`, before the loaders are built (so `_annotate` finds the records annotated)."""
        state = dict(state_dict)
        reference = state.pop("reference", None)
        super().load_state_dict(state)
        for record, (chosen, rejected) in zip(self.train_set.records + self.val_set.records, reference or []):
            if chosen is not None:
                record["ref_chosen"], record["ref_rejected"] = chosen, rejected

    def train_dataloader(self) -> DataLoader:
        self._annotate()
        return self.position.new_loader(self.train_set, self.batch_size, self.seed, self._collate)

    def val_dataloader(self) -> DataLoader:
        self._annotate()
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=self._collate)
