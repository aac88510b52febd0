"""Data files read through `datasets` and normalised from TRL's dataset formats to the records our stages train on.

Files: .jsonl, .json, .parquet, .csv, or a `save_to_disk` directory (of a DatasetDict, its `train` split); always
read locally, never from the hub. The format is detected once per file: the first of a task's formats whose
columns the file has (most specific first), standard or conversational by the first row's value. Every row is
then checked against it, so a bad row raises `DataError` naming the file, the row and the format. Rows are
numbered from 1 in file order; a JSON Lines file reports the row's line number instead (blank lines are skipped
but counted). An empty file or dataset is an error: a stage trained on nothing would silently do nothing.

A prompt P is a string or a conversation (list of {"role", "content"} messages; other message keys are dropped).
"""
from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from lightning_align.data.text_file import read_utf8
from lightning_align.errors import DataError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")

Message = dict[str, str]
Row = dict[str, Any]


class RowError(ValueError):
    """A row's problem; the reader adds the file, the row number and the detected format."""


@dataclass(frozen=True)
class Format:
    """One TRL dataset type: the columns that identify it and how a row of each variant becomes our record.

    The variant is conversational when the first row's value in `columns[0]` is a list; a type that exists in one
    variant only has None for the other.
    """

    kind: str
    columns: tuple[str, ...]
    standard: Callable[[Row], dict[str, Any]] | None
    conversational: Callable[[Row], dict[str, Any]] | None


def _value(row: Row, column: str) -> Any:
    value = row.get(column)
    if value is None:
        raise RowError(f"'{column}' is missing")
    return value


def _text(row: Row, column: str) -> str:
    value = _value(row, column)
    if not isinstance(value, str):
        raise RowError(f"'{column}' must be a string, got {type(value).__name__}")
    return value


def _messages(row: Row, column: str) -> list[Message]:
    """A non-empty conversation whose messages each have a string role and content."""
    value = _value(row, column)
    if not isinstance(value, list):
        raise RowError(f"'{column}' must be a list of messages, got {type(value).__name__}")
    if not value:
        raise RowError(f"'{column}' is an empty conversation")
    messages = []
    for number, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise RowError(f"'{column}' message {number} must be an object with role and content")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise RowError(f"'{column}' message {number} has no string '{key}'")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _reply(messages: list[Message], column: str) -> str:
    """The content of a completion that is exactly one assistant message (our records hold one response)."""
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in messages)
        raise RowError(f"'{column}' must hold exactly one assistant message, got [{roles}]")
    return messages[0]["content"]


def shared_text_prefix(chosen: str, rejected: str) -> int:
    """Length of the prompt two full texts share: their common prefix, cut back to a word boundary.

    The cut lies where both texts continue with whitespace (or end), else at the last whitespace inside the common
    prefix (0 when it has none); whitespace before the cut moves to the responses, so "The sky is blue." and
    "The sky is green." give the prompt "The sky is" and the responses " blue." and " green.".
    """
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if any(text[n:n + 1].strip() for text in (chosen, rejected)):
        n = next((i for i in range(n - 1, -1, -1) if chosen[i].isspace()), 0)
    while n > 0 and chosen[n - 1].isspace():
        n -= 1
    return n


def _implicit_text(row: Row) -> dict[str, Any]:
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    if chosen == rejected:
        raise RowError("'chosen' and 'rejected' are the same text")
    cut = shared_text_prefix(chosen, rejected)
    return {"prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]}


def _implicit_conversation(row: Row) -> dict[str, Any]:
    """The shared leading messages are the prompt; each side must then continue with one assistant message."""
    chosen, rejected = _messages(row, "chosen"), _messages(row, "rejected")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise RowError("'chosen' and 'rejected' share no leading messages to take as the prompt")
    return {"prompt": chosen[:n], "chosen": _reply(chosen[n:], "chosen"),
            "rejected": _reply(rejected[n:], "rejected")}


def _conversation_sft(row: Row) -> dict[str, Any]:
    """Prompt = every message before the final assistant message, response = that message's content."""
    messages = _messages(row, "messages")
    if messages[-1]["role"] != "assistant":
        raise RowError(f"'messages' must end with an assistant message, ends with '{messages[-1]['role']}'")
    if len(messages) < 2:
        raise RowError("'messages' has no message before the assistant's to take as the prompt")
    return {"prompt": messages[:-1], "response": messages[-1]["content"]}


def _conversation_prompt(row: Row) -> dict[str, Any]:
    """The conversation up to and including its final user message (what a policy answers in a round)."""
    messages = _messages(row, "messages")
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise RowError("'messages' has no user message to take as the prompt")
    return {"prompt": messages[:last_user + 1]}


def _compared(convert: Callable[[Row], dict[str, Any]]) -> Callable[[Row], dict[str, Any]]:
    """`convert`, refusing a pair that trains on nothing: an empty response, or the same response twice (DPO's and
    Bradley-Terry's gradients are zero on it, so it would dilute every batch silently)."""
    def checked(row: Row) -> dict[str, Any]:
        record = convert(row)
        for side in ("chosen", "rejected"):
            if not record[side].strip():
                raise RowError(f"'{side}' response is empty: a pair needs two responses to compare")
        if record["chosen"] == record["rejected"]:
            raise RowError("'chosen' and 'rejected' are the same response: the pair states no preference")
        return record
    return checked


PAIR_FORMATS = (
    Format("preference", ("prompt", "chosen", "rejected"),
           _compared(lambda r: {"prompt": _text(r, "prompt"), "chosen": _text(r, "chosen"),
                                "rejected": _text(r, "rejected")}),
           _compared(lambda r: {"prompt": _messages(r, "prompt"), "chosen": _reply(_messages(r, "chosen"), "chosen"),
                                "rejected": _reply(_messages(r, "rejected"), "rejected")})),
    Format("implicit-prompt preference", ("chosen", "rejected"), _compared(_implicit_text),
           _compared(_implicit_conversation)),
)
SFT_FORMATS = (
    Format("prompt-completion", ("prompt", "completion"),
           lambda r: {"prompt": _text(r, "prompt"), "response": _text(r, "completion")},
           lambda r: {"prompt": _messages(r, "prompt"), "response": _reply(_messages(r, "completion"), "completion")}),
    Format("prompt-response", ("prompt", "response"),
           lambda r: {"prompt": _text(r, "prompt"), "response": _text(r, "response")}, None),
    Format("language modeling", ("messages",), None, _conversation_sft),
    Format("language modeling", ("text",), lambda r: {"prompt": "", "response": _text(r, "text")}, None),
)
PROMPT_FORMATS = (
    Format("prompt-only", ("prompt",), lambda r: {"prompt": _text(r, "prompt")},
           lambda r: {"prompt": _messages(r, "prompt")}),
    Format("language modeling", ("messages",), None, _conversation_prompt),
)
TEXT_FORMATS = (Format("language modeling", ("text",), lambda r: {"text": _text(r, "text")}, None),)


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """Preference records {"prompt": P, "chosen": str, "rejected": str} (standard, conversational or implicit)."""
    return _read(Path(path), PAIR_FORMATS, "preference")


def read_sft(path: str | Path) -> list[dict[str, Any]]:
    """SFT records {"prompt": P, "response": str}; plain text gives the prompt "" (the whole text is the target)."""
    return _read(Path(path), SFT_FORMATS, "SFT")


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Prompt records {"prompt": P} from a `prompt` column or from `messages` (up to the final user message)."""
    return _read(Path(path), PROMPT_FORMATS, "prompt")


def read_texts(path: str | Path) -> list[str]:
    """The `text` column, for language modelling."""
    return [record["text"] for record in _read(Path(path), TEXT_FORMATS, "text")]


def source_problem(path: Path, suffixes: tuple[str, ...] = SUFFIXES) -> str | None:
    """Why `path` cannot be read (None when it can), from names and split indexes only: planning stays instant."""
    if path.is_dir():
        if (path / "state.json").is_file():
            return None
        splits = _saved_splits(path)
        if splits is None:
            return "is a directory but not one written by save_to_disk"
        return None if "train" in splits else f"has no 'train' split (splits: {', '.join(splits)})"
    if not path.is_file():
        return "not found"
    if path.suffix.lower() not in suffixes:
        return f"has an unsupported type '{path.suffix}': use {', '.join(suffixes)} or a save_to_disk directory"
    return None


def _saved_splits(path: Path) -> list[str] | None:
    index = path / "dataset_dict.json"
    return json.loads(index.read_text(encoding="utf-8"))["splits"] if index.is_file() else None


def _read(path: Path, formats: tuple[Format, ...], task: str) -> list[dict[str, Any]]:
    rows = _load_rows(path)
    columns = set(rows[0])
    fmt = next((f for f in formats if set(f.columns) <= columns), None)
    if fmt is None:
        expected = " or ".join("+".join(f.columns) for f in formats)
        raise DataError(path, f"columns [{', '.join(sorted(columns))}] fit no {task} format: expected {expected}")
    conversational = fmt.standard is None or (fmt.conversational is not None
                                              and isinstance(rows[0].get(fmt.columns[0]), list))
    convert = fmt.conversational if conversational else fmt.standard
    name = f"{'conversational' if conversational else 'standard'} {fmt.kind}"
    records = []
    for index, row in enumerate(rows):
        try:
            records.append(convert(row))
        except RowError as err:
            raise _row_error(path, index, f"{err} ({name} format)") from None
    return records


def _row_error(path: Path, index: int, problem: str) -> DataError:
    if path.suffix.lower() != ".jsonl":
        return DataError(path, f"row {index + 1}: {problem}")
    return DataError(path, problem, line=_nonblank_lines(path)[index][0])


def _nonblank_lines(path: Path) -> list[tuple[int, str]]:
    with path.open(encoding="utf-8") as handle:
        return [(number, line) for number, line in enumerate(handle, start=1) if line.strip()]


def _load_rows(path: Path) -> list[Row]:
    """Every row as a dict, read by `datasets` without touching the hub or leaving a cache behind."""
    problem = source_problem(path)
    if problem is not None:
        raise DataError(path, problem)
    if path.is_file() and path.suffix.lower() != ".parquet" and not read_utf8(path).strip():
        raise DataError(path, "no records")
    import datasets  # imported on first read: it adds a second to every start of the CLI

    with _quiet(datasets):
        try:
            table = _load_table(path, datasets)
        except Exception as err:  # datasets raises ValueError, StopIteration, IndexError, DatasetGenerationError...
            raise _unreadable(path, err) from None
    if len(table) == 0:
        raise DataError(path, "no records")
    return table.to_list()


@contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """No progress bars or logged failures from `datasets` while it reads: our DataError says what went wrong."""
    bars_were_on, verbosity = not datasets.are_progress_bars_disabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()


def _load_table(path: Path, datasets: Any) -> Any:
    if path.is_dir():
        saved = datasets.load_from_disk(str(path), keep_in_memory=True)
        return saved["train"] if isinstance(saved, datasets.DatasetDict) else saved
    with tempfile.TemporaryDirectory() as cache:
        kwargs: dict[str, Any] = {"keep_in_memory": True, "cache_dir": cache}
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return datasets.Dataset.from_parquet(str(path), **kwargs)
        if suffix == ".csv":
            return datasets.Dataset.from_csv(str(path), features=_csv_text_columns(path, datasets),
                                             keep_default_na=False, **kwargs)
        return datasets.Dataset.from_json(str(path), **kwargs)


def _csv_text_columns(path: Path, datasets: Any) -> Any:
    """Every CSV column is text: "42" stays a string and an empty cell is "", never a number or a null."""
    import csv

    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    return datasets.Features({name: datasets.Value("string") for name in header})


def _unreadable(path: Path, err: Exception) -> DataError:
    """Why `datasets` could not read a source: the first malformed JSON line, no records, or its own reason."""
    if path.suffix.lower() == ".jsonl":
        for number, line in _nonblank_lines(path):
            try:
                value = json.loads(line)
            except json.JSONDecodeError as bad:
                return DataError(path, f"malformed JSON ({bad.msg})", line=number)
            if not isinstance(value, dict):
                return DataError(path, "expected a JSON object", line=number)
    if path.suffix.lower() == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as bad:
            return DataError(path, f"malformed JSON ({bad.msg})", line=bad.lineno)
    if _known_empty(path):
        return DataError(path, "no records")
    cause = err.__cause__ or err
    return DataError(path, f"cannot be read: {type(cause).__name__}: {cause}")


def _known_empty(path: Path) -> bool:
    """The empty sources `datasets` fails on instead of returning no rows."""
    suffix = path.suffix.lower()
    try:
        if path.is_dir():
            split = path if (path / "state.json").is_file() else path / "train"
            return json.loads((split / "state.json").read_text(encoding="utf-8"))["_data_files"] == []
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_metadata(path).num_rows == 0
        if suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8")) == []
        return suffix == ".csv" and len(_nonblank_lines(path)) < 2
    except (OSError, ValueError, KeyError):  # a corrupt source is reported with datasets' own reason
        return False
