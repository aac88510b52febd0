"""Reading a user's text file as UTF-8, with the place of the first byte that is not, so a bad file is one line."""
from __future__ import annotations

from pathlib import Path

from lightning_align.errors import DataError


def read_utf8(path: Path) -> str:
    """The whole file decoded as UTF-8; `DataError` with the line and byte offset of the first undecodable byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(path, f"is not UTF-8 text: byte 0x{data[err.start]:02x} at byte offset {err.start} "
                        "(save the file as UTF-8)", line=line) from None
