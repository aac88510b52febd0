"""TRL dataset formats in every file type we read, normalised to our records; bad rows named by file and row."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from lightning_align.data.corpus import CORPUS_SUFFIXES, load_texts
from lightning_align.data.gold_task import preference_records
from lightning_align.data.lm_datamodule import LMDataModule
from lightning_align.data.loaders import check_source
from lightning_align.data.preference import PreferenceDataModule
from lightning_align.data.records import read_pairs, read_prompts, read_sft, read_texts, shared_text_prefix
from lightning_align.data.sft import SFTDataModule
from lightning_align.errors import ConfigError, DataError
from lightning_align.modules.round_prompts import RoundPromptsDataModule

DISK = "saved"  # a save_to_disk directory (no suffix)


def write(tmp_path: Path, kind: str, rows: list[dict]) -> Path:
    """`rows` as a file of type `kind` (".jsonl", ".json", ".parquet", ".csv") or a save_to_disk directory."""
    path = tmp_path / ("data" + kind if kind != DISK else "data")
    if kind == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif kind == ".json":
        path.write_text(json.dumps(rows))
    elif kind == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif kind == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        Dataset.from_list(rows).save_to_disk(str(path))
    return path


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "Be brief."}
TEXT_TYPES = [".jsonl", ".json", ".parquet", ".csv", DISK]
NESTED_TYPES = [".jsonl", ".json", ".parquet", DISK]  # CSV cells cannot hold conversations

# name: (reader, file rows, expected records, file types)
FORMATS = {
    "standard preference": (
        read_pairs,
        [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "score": 1},
         {"prompt": "2+2=", "chosen": "4", "rejected": "5", "score": 2}],
        [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
         {"prompt": "2+2=", "chosen": "4", "rejected": "5"}],
        TEXT_TYPES),
    "conversational preference": (
        read_pairs,
        [{"prompt": [SYSTEM, user("Sky colour?")], "chosen": [assistant("Blue.")], "rejected": [assistant("Green.")]},
         {"prompt": [user("2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")]}],
        [{"prompt": [SYSTEM, user("Sky colour?")], "chosen": "Blue.", "rejected": "Green."},
         {"prompt": [user("2+2?")], "chosen": "4", "rejected": "5"}],
        NESTED_TYPES),
    "standard implicit-prompt preference": (
        read_pairs,
        [{"chosen": "The sky is blue.", "rejected": "The sky is green."},
         {"chosen": "Q: 2+2?\nA: 4", "rejected": "Q: 2+2?\nA: 5"}],
        [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
         {"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5"}],
        TEXT_TYPES),
    "conversational implicit-prompt preference": (
        read_pairs,
        [{"chosen": [user("Sky colour?"), assistant("Blue.")], "rejected": [user("Sky colour?"), assistant("Red.")]},
         {"chosen": [user("Hi"), assistant("Hello"), user("2+2?"), assistant("4")],
          "rejected": [user("Hi"), assistant("Hello"), user("2+2?"), assistant("5")]}],
        [{"prompt": [user("Sky colour?")], "chosen": "Blue.", "rejected": "Red."},
         {"prompt": [user("Hi"), assistant("Hello"), user("2+2?")], "chosen": "4", "rejected": "5"}],
        NESTED_TYPES),
    "standard prompt-completion": (
        read_sft,
        [{"prompt": "The sky is", "completion": " blue."}, {"prompt": "42", "completion": " is the answer"}],
        [{"prompt": "The sky is", "response": " blue."}, {"prompt": "42", "response": " is the answer"}],
        TEXT_TYPES),
    "conversational prompt-completion": (
        read_sft,
        [{"prompt": [user("Sky colour?")], "completion": [assistant("Blue.")]},
         {"prompt": [SYSTEM, user("2+2?")], "completion": [assistant("4")]}],
        [{"prompt": [user("Sky colour?")], "response": "Blue."},
         {"prompt": [SYSTEM, user("2+2?")], "response": "4"}],
        NESTED_TYPES),
    "prompt-response (our own)": (
        read_sft,
        [{"prompt": "a", "response": " b"}],
        [{"prompt": "a", "response": " b"}],
        TEXT_TYPES),
    "conversational language modeling (SFT)": (
        read_sft,
        [{"messages": [user("Sky colour?"), assistant("Blue.")]},
         {"messages": [SYSTEM, user("Hi"), assistant("Hello"), user("2+2?"), assistant("4")]}],
        [{"prompt": [user("Sky colour?")], "response": "Blue."},
         {"prompt": [SYSTEM, user("Hi"), assistant("Hello"), user("2+2?")], "response": "4"}],
        NESTED_TYPES),
    "standard language modeling (SFT)": (
        read_sft,
        [{"text": "The sky is blue."}, {"text": "Two and two make four."}],
        [{"prompt": "", "response": "The sky is blue."}, {"prompt": "", "response": "Two and two make four."}],
        TEXT_TYPES),
    "standard prompt-only": (
        read_prompts,
        [{"prompt": "The sky is"}, {"prompt": "2+2="}],
        [{"prompt": "The sky is"}, {"prompt": "2+2="}],
        TEXT_TYPES),
    "conversational prompt-only": (
        read_prompts,
        [{"prompt": [user("Sky colour?")]}, {"prompt": [SYSTEM, user("2+2?")]}],
        [{"prompt": [user("Sky colour?")]}, {"prompt": [SYSTEM, user("2+2?")]}],
        NESTED_TYPES),
    "conversational language modeling (prompts)": (
        read_prompts,
        [{"messages": [user("Sky colour?"), assistant("Blue.")]},
         {"messages": [user("Hi"), assistant("Hello"), user("2+2?"), assistant("4")]}],
        [{"prompt": [user("Sky colour?")]}, {"prompt": [user("Hi"), assistant("Hello"), user("2+2?")]}],
        NESTED_TYPES),
    "standard language modeling (texts)": (
        lambda path: [{"text": t} for t in read_texts(path)],
        [{"text": "one"}, {"text": "two"}],
        [{"text": "one"}, {"text": "two"}],
        TEXT_TYPES),
}
FORMAT_CASES = [pytest.param(name, kind, id=f"{name}-{kind}")
                for name, (_, _, _, kinds) in FORMATS.items() for kind in kinds]


@pytest.mark.parametrize("name, kind", FORMAT_CASES)
def test_format_is_normalised(tmp_path, name, kind):
    reader, rows, expected, _ = FORMATS[name]
    assert reader(write(tmp_path, kind, rows)) == expected


# (reader, good row, bad row, problem, file types that can hold the bad row)
BAD_ROWS = {
    "preference missing rejected": (
        read_pairs, {"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b", "rejected": None},
        "'rejected' is missing (standard preference format)", NESTED_TYPES),
    "preference chosen not a string": (
        read_pairs, {"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": 7, "rejected": "c"},
        "'chosen' must be a string, got int (standard preference format)", [".jsonl"]),
    "conversational chosen not messages": (
        read_pairs, {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]},
        {"prompt": [user("q")], "chosen": "a", "rejected": [assistant("b")]},
        "'chosen' must be a list of messages, got str (conversational preference format)", [".jsonl"]),
    "message without content": (
        read_pairs, {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]},
        {"prompt": [user("q")], "chosen": [{"role": "assistant"}], "rejected": [assistant("b")]},
        "'chosen' message 1 has no string 'content' (conversational preference format)", NESTED_TYPES),
    "message without role": (
        read_prompts, {"prompt": [user("q")]}, {"prompt": [SYSTEM, {"content": "q"}]},
        "'prompt' message 2 has no string 'role' (conversational prompt-only format)", NESTED_TYPES),
    "empty conversation": (
        read_pairs, {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]},
        {"prompt": [], "chosen": [assistant("a")], "rejected": [assistant("b")]},
        "'prompt' is an empty conversation (conversational preference format)", NESTED_TYPES),
    "completion not one assistant message": (
        read_sft, {"prompt": [user("q")], "completion": [assistant("a")]},
        {"prompt": [user("q")], "completion": [user("a")]},
        "'completion' must hold exactly one assistant message, got [user] (conversational prompt-completion format)",
        NESTED_TYPES),
    "messages without a final assistant message": (
        read_sft, {"messages": [user("q"), assistant("a")]}, {"messages": [assistant("a"), user("q")]},
        "'messages' must end with an assistant message, ends with 'user' (conversational language modeling format)",
        NESTED_TYPES),
    "messages without a user message": (
        read_prompts, {"messages": [user("q"), assistant("a")]}, {"messages": [SYSTEM, assistant("a")]},
        "'messages' has no user message to take as the prompt (conversational language modeling format)",
        NESTED_TYPES),
    "implicit texts that are equal": (
        read_pairs, {"chosen": "The sky is blue", "rejected": "The sky is red"},
        {"chosen": "The sky is", "rejected": "The sky is"},
        "'chosen' and 'rejected' are the same text (standard implicit-prompt preference format)", TEXT_TYPES),
    "implicit conversations without a shared prompt": (
        read_pairs, {"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("b")]},
        {"chosen": [user("q"), assistant("a")], "rejected": [user("p"), assistant("b")]},
        "'chosen' and 'rejected' share no leading messages to take as the prompt "
        "(conversational implicit-prompt preference format)", NESTED_TYPES),
    "implicit conversations that diverge before the answer": (
        read_pairs, {"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("b")]},
        {"chosen": [user("q"), assistant("a"), user("r"), assistant("c")],
         "rejected": [user("q"), assistant("b"), user("r"), assistant("c")]},
        "'chosen' must hold exactly one assistant message, got [assistant, user, assistant] "
        "(conversational implicit-prompt preference format)", NESTED_TYPES),
    "preference with an empty response": (
        read_pairs, {"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b", "rejected": " "},
        "'rejected' response is empty: a pair needs two responses to compare (standard preference format)",
        [".jsonl", ".csv"]),
    "preference with the same response twice": (
        read_pairs, {"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b", "rejected": "b"},
        "'chosen' and 'rejected' are the same response: the pair states no preference (standard preference format)",
        [".jsonl"]),
    "conversational preference with the same answer twice": (
        read_pairs, {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]},
        {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("a")]},
        "'chosen' and 'rejected' are the same response: the pair states no preference "
        "(conversational preference format)", [".jsonl"]),
    "implicit texts where one only extends the other": (
        read_pairs, {"chosen": "The sky is blue", "rejected": "The sky is red"},
        {"chosen": "The sky is blue.", "rejected": "The sky is blue. Yes."},
        "'chosen' response is empty: a pair needs two responses to compare "
        "(standard implicit-prompt preference format)", [".jsonl"]),
    "text missing": (
        read_sft, {"text": "a"}, {"text": None},
        "'text' is missing (standard language modeling format)", NESTED_TYPES),
}
BAD_CASES = [pytest.param(name, kind, id=f"{name}-{kind}")
             for name, (*_, kinds) in BAD_ROWS.items() for kind in kinds]


@pytest.mark.parametrize("name, kind", BAD_CASES)
def test_bad_row_names_file_row_and_format(tmp_path, name, kind):
    reader, good, bad, problem, _ = BAD_ROWS[name]
    path = write(tmp_path, kind, [good, good, bad, good])
    with pytest.raises(DataError) as err:
        reader(path)
    where = f"{path}:3" if kind == ".jsonl" else f"{path}: row 3"
    assert str(err.value) == f"{where}: {problem}"


def test_jsonl_errors_report_the_line_blank_lines_included(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"})
    path.write_text(f"{good}\n\n   \n{good}\n\n" + json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    with pytest.raises(DataError, match=r"pairs\.jsonl:6: 'rejected' is missing \(standard preference format\)"):
        read_pairs(path)
    path.write_text(f"{good}\n\n" + '{"prompt": "a", "chosen"\n')
    with pytest.raises(DataError, match=r"pairs\.jsonl:3: malformed JSON"):
        read_pairs(path)


def test_csv_cells_stay_text(tmp_path):
    path = tmp_path / "sft.csv"
    path.write_text("prompt,completion\n007,\n")
    assert read_sft(path) == [{"prompt": "007", "response": ""}]


@pytest.mark.parametrize("kind, content", [(".jsonl", "\n  \n"), (".json", "[]"), (".csv", "prompt,chosen,rejected\n"),
                                           (".csv", ""), (".parquet", None), (DISK, None)])
def test_empty_data_is_an_error(tmp_path, kind, content):
    path = tmp_path / ("data" + kind if kind != DISK else "data")
    if kind == ".parquet":
        pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    elif kind == DISK:
        Dataset.from_dict({"prompt": []}).save_to_disk(str(path))
    else:
        path.write_text(content)
    with pytest.raises(DataError, match=r"no records"):
        read_prompts(path)


@pytest.mark.parametrize("kind", [".jsonl", ".parquet", ".csv"])
def test_unknown_columns_name_the_expected_ones(tmp_path, kind):
    path = write(tmp_path, kind, [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert str(err.value) == (f"{path}: columns [answer, question] fit no preference format: "
                              "expected prompt+chosen+rejected or chosen+rejected")
    with pytest.raises(DataError, match="expected prompt\\+completion or prompt\\+response or messages or text$"):
        read_sft(path)


@pytest.mark.parametrize("chosen, rejected, prompt", [
    ("The sky is blue.", "The sky is green.", "The sky is"),
    ("The sky is blue", "The sky is black", "The sky is"),  # a shared partial word "bl" stays in the responses
    ("Q: 2+2?\n\nA: 4", "Q: 2+2?\n\nA: 5", "Q: 2+2?\n\nA:"),
    ("Q:\n\nyes", "Q:\n\nno", "Q:"),  # the whole whitespace run goes to the responses
    ("A B", "A B C", "A B"),  # one text ends where the other continues with a space
    ("abc", "abd", ""),  # no word boundary: no prompt
])
def test_implicit_text_prompt_ends_at_a_word_boundary(chosen, rejected, prompt):
    cut = shared_text_prefix(chosen, rejected)
    assert chosen[:cut] == rejected[:cut] == prompt


def test_dataset_dict_directory_uses_train_split(tmp_path):
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}]
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows * 2)}).save_to_disk(
        str(tmp_path / "dd"))
    assert read_pairs(tmp_path / "dd") == rows
    DatasetDict({"test": Dataset.from_list(rows), "validation": Dataset.from_list(rows)}).save_to_disk(
        str(tmp_path / "no_train"))
    with pytest.raises(DataError, match=r"no_train: has no 'train' split \(splits: test, validation\)"):
        read_pairs(tmp_path / "no_train")
    with pytest.raises(ConfigError, match=r"'data.init_args.path': file '.*no_train' has no 'train' split"):
        PreferenceDataModule(path=str(tmp_path / "no_train"))


def test_check_source_refuses_missing_and_unsupported_paths(tmp_path):
    (tmp_path / "pairs.txt").write_text("x")
    (tmp_path / "plain_dir").mkdir()
    for name, problem in [("missing.jsonl", "not found"), ("pairs.txt", "has an unsupported type '.txt'"),
                          ("plain_dir", "is a directory but not one written by save_to_disk")]:
        path = str(tmp_path / name)
        with pytest.raises(ConfigError) as err:
            check_source(path, "gold")
        message = str(err.value)
        assert message.startswith(f"config key 'data.init_args.path': file '{path}' {problem}")
        assert "\n" not in message
    check_source("gold", "gold")
    check_source(str(tmp_path / "pairs.txt"), "embedded", suffixes=CORPUS_SUFFIXES)


def test_datamodules_accept_every_file_type_at_construction(tmp_path):
    pairs = write(tmp_path, ".parquet", FORMATS["standard preference"][1])
    PreferenceDataModule(path=str(pairs))
    RoundPromptsDataModule(prompts=str(write(tmp_path, DISK, FORMATS["conversational prompt-only"][1])))
    texts = tmp_path / "texts.csv"
    texts.write_text("text\nfirst document\nsecond document\n")
    LMDataModule(corpus=str(texts))
    assert load_texts(str(texts)) == ["first document", "second document"]
    with pytest.raises(ConfigError, match=r"data.init_args.corpus': file '.*corpus.tsv' has an unsupported type"):
        (tmp_path / "corpus.tsv").write_text("x")
        LMDataModule(corpus=str(tmp_path / "corpus.tsv"))


def test_sft_datamodule_reads_plain_text_as_prompt_free_records(tmp_path):
    path = write(tmp_path, ".jsonl", [{"text": f"document {i}"} for i in range(4)])
    data = SFTDataModule(path=str(path), val_fraction=0.25)
    data.setup("fit")
    records = data.train_records + data.val_records
    assert len(data.val_records) == 1
    assert sorted(r["response"] for r in records) == [f"document {i}" for i in range(4)]
    assert all(r["prompt"] == "" for r in records)


@pytest.mark.parametrize("seed", [0, 1])
def test_gold_pairs_never_need_refusing(seed):
    """The built-in task skips pairs closer than its gold-reward gap, so it cannot make a pair the file reader would
    refuse (same response twice, or an empty one): the check is for users' files only."""
    records = preference_records(512, seed)
    assert len(records) == 512
    assert all(r["chosen"] != r["rejected"] and r["chosen"].strip() and r["rejected"].strip() for r in records)


def test_text_that_is_not_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}).encode()
    path.write_bytes(good + b"\n" + good[:10] + b"\xff" + good[10:] + b"\n")
    offset = len(good) + 1 + 10
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert str(err.value) == (f"{path}:2: is not UTF-8 text: byte 0xff at byte offset {offset} "
                              "(save the file as UTF-8)")
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes("first paragraph\n\nsecond ".encode() + "é".encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=r"corpus\.txt:3: is not UTF-8 text: byte 0xe9 at byte offset 24"):
        load_texts(str(corpus))
