"""Reading CSV files people edit: one record at a time, with the file line each record starts on.

Multi-line cells (a quoted field with a newline) make a record span several lines; errors and
messages must still name the line a person sees in an editor, so readers take records from here.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

from hearsay.errors import HearsayError


def records(path: Path, text: str) -> Iterable[tuple[int, list[str]]]:
    """(first file line, fields) per record; multi-line cells keep the line numbers right."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
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
