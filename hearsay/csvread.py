"""Reading CSV files people edit: one record at a time, with the file line each record starts on.

Multi-line cells (a quoted field with a newline) make a record span several lines; errors and
messages must still name the line a person sees in an editor, so readers take records from here.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path

from hearsay.errors import HearsayError


def records(path: Path, text: str, delimiter: str = ",") -> Iterable[tuple[int, list[str]]]:
    """(first file line, fields) per record; multi-line cells keep the line numbers right."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, delimiter=delimiter)
    line = 0
    while True:
        start = line + 1
        try:
            record = next(reader, None)
        except csv.Error as exc:
            raise HearsayError(f"{path}:{start}: malformed CSV: {exc}") from None
        line = reader.line_num
        if record is None:
            return
        yield start, record


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def read_text(path: Path, what: str, utf16: bool = False) -> str:
    """The text of the CSV file `what` names ("manifest", "batch key file"...), BOM removed; one line when it cannot be.

    Missing, unreadable, not UTF-8, or binary (a NUL byte): each is refused here, the same way for every reader.
    With `utf16`, a file that starts with a UTF-16 byte order mark (a spreadsheet's "Unicode text") is read as
    UTF-16; without one, UTF-16 is never guessed.
    """
    if path.is_dir():
        raise HearsayError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise HearsayError(f"{what} {path} does not exist")
    try:
        data = path.read_bytes()
        text = data.decode("utf-16") if utf16 and data.startswith(UTF16_BOMS) else data.decode("utf-8-sig")
    except OSError as exc:
        raise HearsayError(f"cannot read {what} {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        hint = "; save it again as UTF-8 (a spreadsheet's \"CSV UTF-8\")" if exc.encoding.startswith("utf-8") else ""
        raise HearsayError(f"cannot read {what} {path}: {exc}{hint}") from None
    if "\x00" in text:
        raise HearsayError(f"cannot read {what} {path}: it contains a NUL byte (not a text CSV)")
    return text


def body(path: Path, header: list[str], rows: Iterable[tuple[int, list[str]]]) -> Iterator[tuple[int, str, list[str]]]:
    """(file line, "path:line", fields) of each non-blank record under `header`; a repeated column name or a record
    with another number of fields than the header is one line naming where."""
    if len(set(header)) != len(header):
        raise HearsayError(f"{path}:1: a column name appears twice")
    for line, record in rows:
        if not any(cell.strip() for cell in record):
            continue
        where = f"{path}:{line}"
        if len(record) != len(header):
            raise HearsayError(f"{where}: {len(record)} fields where the header has {len(header)}")
        yield line, where, record
