"""The analysis report as a test reads it: `manage.py analyze` run on an answer table, and the page's plain words."""
from __future__ import annotations

import html
import re

import pandas as pd
from django.core.management import call_command


def analyze(tmp_path, table: pd.DataFrame, name: str = "study", **options) -> str:
    """Save the table as an answer CSV, run `manage.py analyze --answers` and return report.html's text."""
    path = tmp_path / f"{name}.csv"
    table.to_csv(path, index=False)
    out = tmp_path / f"{name}-report"
    call_command("analyze", answers=str(path), out=str(out), verbosity=0, **options)
    return (out / "report.html").read_text(encoding="utf-8")


def page_text(page: str) -> str:
    """The words an analyst reads: tags, styles and embedded images taken out, entities decoded."""
    page = re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"data:image/png;base64,[^'\"]+", "", page)))
