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


# How spreadsheets write TRUE back into a CSV in the languages of their users (Excel and LibreOffice translate it;
# the locales that write ';' for ',' are among them): a flag must not turn false there.
TRUE_WORDS = frozenset({
    "true", "wahr", "vrai", "vero", "verdadero", "verdadeiro", "waar", "sant", "sann", "tosi", "pravda", "prawda",
    "igaz", "adevărat", "истина", "doğru", "αληθές",
})
FALSE_WORDS = frozenset({
    "false", "falsch", "faux", "falso", "onwaar", "falsk", "epätosi", "nepravda", "fałsz", "hamis", "fals", "ложь",
    "yanlış", "ψευδές",
})


def is_true(text: str) -> bool:
    """A cell that says true: 'true', or a spreadsheet's TRUE in its user's language."""
    return (text or "").strip().casefold() in TRUE_WORDS


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


def spreadsheet_text(path: Path, what: str) -> tuple[str, str]:
    """The text of a CSV as people save it, and its separator: UTF-8 with or without a BOM (even twice) or a
    spreadsheet's "Unicode text" (UTF-16, tabs); commas, tabs, or semicolons (a spreadsheet's CSV where the decimal
    mark is a comma). Column names hold no separator, so the header line tells which one the file uses."""
    text = read_text(path, what, utf16=True).lstrip("\ufeff")
    first_line = text.split("\n", 1)[0]
    return text, next((d for d in (",", "\t", ";") if d in first_line), ",")


def header_cell(cell: str) -> str:
    """A column name as written in a header line, also one repeated further down a file (files joined with `cat`,
    each with its BOM, which then sits before a quoted name: '\ufeff"HITId"')."""
    cell = cell.strip().lstrip("\ufeff")
    return cell[1:-1].strip() if len(cell) > 1 and cell[0] == cell[-1] == '"' else cell


def spreadsheet_records(path: Path, what: str) -> tuple[list[str] | None, Iterator[tuple[int, list[str]]]]:
    """(header, records) of a CSV as people save it (see spreadsheet_text); header None for an empty file.

    Columns without a name (a spreadsheet saves ',,' past the last column once a cell there was touched) are dropped
    when blank; a value under one is one line naming where. A record of another length passes unchanged, for `body`
    to refuse.
    """
    text, delimiter = spreadsheet_text(path, what)
    rows = records(path, text, delimiter)
    first = next(rows, None)
    if first is None:
        return None, rows
    header = [header_cell(h) for h in first[1]]
    unnamed = [i for i, name in enumerate(header) if not name]
    if not unnamed:
        return header, rows

    def named_only() -> Iterator[tuple[int, list[str]]]:
        for line, record in rows:
            if len(record) == len(header):
                held = next((i for i in unnamed if record[i].strip()), None)
                if held is not None:
                    raise HearsayError(f"{path}:{line}: column {held + 1} has no name in the header but holds "
                                       f"{record[held].strip()[:40]!r}")
                record = [cell for i, cell in enumerate(record) if header[i]]
            yield line, record

    return [name for name in header if name], named_only()
