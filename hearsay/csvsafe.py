"""CSV cells that a spreadsheet would run as formulas are written as text.

A worker id such as ``=HYPERLINK("http://evil","x")`` in a responses export would otherwise be a
live link when the researcher opens the file (OWASP "CSV injection"). Every CSV export passes its
cells through `safe_cell`, which prefixes a single quote to text starting with = + - @, tab or CR.
Numbers are left alone: -3 is a number, not a formula.
"""
from __future__ import annotations

from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """`value` unchanged unless it is text a spreadsheet would evaluate; then the same text behind a quote."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_row(values):
    return [safe_cell(v) for v in values]


def safe_frame(frame):
    """A copy of a pandas DataFrame whose text cells are neutralized (numeric columns untouched)."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or str(out[col].dtype).startswith("str"):
            out[col] = out[col].map(safe_cell)
    return out
