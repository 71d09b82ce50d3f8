"""Field audit: figure labels an analyst could not read.

Words in other scripts (猫) were drawn as empty boxes with a "Glyph ... missing from font(s) DejaVu Sans" warning
per character, and one 80-character word sized the margins of every heatmap so the panels shrank to a strip.
Tables keep the words whole either way; these tests look at the figures only.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import font_manager
from matplotlib.ft2font import FT2Font

import tests.report_data as report_data
from analysis import figures
from analysis.report import ReportOptions, analyse
from analysis.table import Exclusion
from tests.helpers.report import analyze, page_text
from tests.report_data import small_table

CAT = "猫"
ROOT = Path(__file__).resolve().parents[1]
LAST_RESORT = "LastResort"  # matplotlib's own box-drawing font: it "covers" everything with code-chart boxes
RARE = ["\U00013000", "\U00012000", "\U00010600", "\U00017000", "\U0001B170", "\U00011A00", "\U00016A40"]


@lru_cache(maxsize=None)
def _charmap(path: str, index: int = 0) -> frozenset[int]:
    try:
        return frozenset(FT2Font(path, face_index=index).get_charmap())
    except Exception:  # a font file FreeType cannot open covers nothing
        return frozenset()


def _every_font_file() -> list[str]:
    """Every font on the machine, whether or not matplotlib's cache has seen it yet."""
    files = {f.fname for f in font_manager.fontManager.ttflist} | set(font_manager.findSystemFonts())
    return sorted(f for f in files if LAST_RESORT not in f and not f.endswith(".afm"))


def _installed_cover(char: str) -> bool:
    return any(ord(char) in _charmap(path) for path in _every_font_file())


needs_cjk = pytest.mark.skipif(not _installed_cover(CAT), reason="no CJK font installed (./hearsay.sh test installs "
                                                                 "Debian's fonts-droid-fallback)")


def _glyph_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


def _drawn(fig) -> list:
    """Every Text of the figure, after a draw (tick labels get their text only then)."""
    fig.canvas.draw()
    return [t for t in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_fontproperties"))
            if t.get_visible() and t.get_text()]


@needs_cjk
def test_a_cjk_word_is_drawn_in_a_font_that_has_it_without_missing_glyph_warnings():
    """猫 in a confusion figure: matplotlib looked only in DejaVu Sans and drew a box (Last Resort) instead."""
    matrix = pd.DataFrame([[0.7, 0.3], [0.2, 0.8]], index=[CAT, "yes"], columns=[CAT, "yes"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = figures.confusion_panels([("people", matrix)], "Confusion")
        label = next(t for t in _drawn(fig) if t.get_text() == CAT)
        png = figures.png_bytes(fig)
    fonts = font_manager.fontManager._find_fonts_by_props(label.get_fontproperties())
    # the families matplotlib falls back through for this label include one whose character map has the word
    assert any(ord(CAT) in _charmap(f, getattr(f, "face_index", 0)) for f in fonts), fonts
    assert not _glyph_warnings(caught)
    assert png.startswith(b"\x89PNG")


@needs_cjk
def test_the_objective_heatmap_draws_a_cjk_class_without_missing_glyph_warnings(tmp_path):
    """The generation commands' figures share the report's fonts: `objective` wrote boxes for 猫 too."""
    from generation.objective import _write_heatmap

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _write_heatmap(tmp_path, "classifier", [CAT, "yes"], [CAT, "yes", "no"], np.full((2, 3), 1 / 3))
    assert not _glyph_warnings(caught)
    assert (tmp_path / "heatmap_classifier.png").is_file() and (tmp_path / "heatmap_classifier.pdf").is_file()


@needs_cjk
def test_a_font_installed_after_matplotlib_cached_its_font_list_is_still_found(tmp_path):
    """Installing fonts-droid-fallback after the first run: matplotlib's cached font list does not see new fonts
    (it is rebuilt only when a listed file disappears), so the figures kept drawing boxes."""
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl"), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], env=env, check=True, cwd=ROOT)
    cache = next((tmp_path / "mpl").glob("fontlist-v*.json"))
    listed = json.loads(cache.read_text())
    listed["ttflist"] = [f for f in listed["ttflist"] if ord(CAT) not in _charmap(f["fname"], f.get("index", 0))]
    cache.write_text(json.dumps(listed))
    os.utime(cache, (946684800, 946684800))  # written in 2000: before any font on this machine was installed
    draw = ("import warnings, pandas as pd\n"
            "from analysis import figures\n"
            "warnings.simplefilter('always')\n"
            f"m = pd.DataFrame([[1.0]], index=[{CAT!r}], columns=[{CAT!r}])\n"
            "figures.png_bytes(figures.confusion_panels([('p', m)], 't'))\n")
    run = subprocess.run([sys.executable, "-c", draw], env=env, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "missing from font" not in run.stderr


def test_a_character_no_installed_font_has_gets_one_note_and_no_warning_flood(tmp_path, monkeypatch, capfd):
    """A word in a script no font on the machine covers: the figures are written (boxes where it cannot be
    helped), the analyst reads one line saying which character and what to install, not a warning per glyph."""
    rare = next((c for c in RARE if not _installed_cover(c)), None)
    if rare is None:
        pytest.skip("every candidate rare character is covered by an installed font")
    word = f"{rare}{rare}x"
    monkeypatch.setattr(report_data, "WORDS", ["yes", "no", word])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page = page_text(analyze(tmp_path, small_table(listeners=3, machines=0)))
    notes = [line for line in page.splitlines() if "no installed font draws" in line]
    assert len(notes) == 1, page[:2000]
    assert f"'{rare}'" in notes[0] and word in notes[0] and "the tables are unaffected" in notes[0]
    assert not _glyph_warnings(caught)
    assert "missing from font" not in capfd.readouterr().err  # figures drawn in worker processes print there
    assert list((tmp_path / "study-report" / "figures").glob("confusion_*.png"))
    assert word in (tmp_path / "study-report" / "tables" / "word_accuracy.csv").read_text(encoding="utf-8")


LONG = ("pneumonoultramicroscopicsilicovolcanoconiosis" + "hippopotomonstrosesquippedaliophobia")[:80]


def _study(words: list[str]):
    report_data_words = report_data.WORDS
    report_data.WORDS = words
    try:
        table = small_table(listeners=3, machines=0)
    finally:
        report_data.WORDS = report_data_words
    options = ReportOptions(exclusion=Exclusion("none", include_machines=True), n_boot=50)
    return analyse(table, {"slug": "long", "task": "identification", "words": words}, options, progress=False)


def _heatmap_panels(fig):
    return [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>" and ax.get_title() != ""]


def _panel_share(fig) -> tuple[float, float]:
    """The share of the figure's width and height that the panel grid spans (the rest is margins)."""
    boxes = [ax.get_position() for ax in _heatmap_panels(fig)]
    return (max(b.x1 for b in boxes) - min(b.x0 for b in boxes), max(b.y1 for b in boxes) - min(b.y0 for b in boxes))


def test_an_80_character_word_leaves_the_heatmaps_a_fair_share_of_the_figure():
    """Margins were sized from the longest word: one of 80 characters (4.8 inches at 7 pt) left the confusion
    panels under half the width they span with short words. Labels of at most 24 characters cost at most 1.5
    inches, so the panels keep at least two thirds of their usual share on each side; the table keeps the word."""
    assert len(LONG) == 80
    long, short = _study(["yes", "no", LONG]), _study(["yes", "no", "maybe"])
    assert LONG in set(long.tables["word_accuracy"]["word"])
    for name in ["confusion_people", "word_accuracy"]:
        fig = long.figures[name].figure()
        usual = _panel_share(short.figures[name].figure())
        share = _panel_share(fig)
        assert share[0] >= 2 / 3 * usual[0] and share[1] >= 2 / 3 * usual[1], (name, share, usual)
        labels = [t.get_text() for ax in _heatmap_panels(fig) for t in ax.texts]
        mine = [x for x in labels if x.startswith(LONG[:6])]
        assert LONG not in labels and mine and max(map(len, mine)) <= 24, (name, labels)


def test_two_long_words_that_differ_only_in_the_middle_keep_different_labels():
    """Shortening keeps each word's start and end; two words alike there must still be told apart."""
    first = "a" * 38 + "north" + "b" * 37
    second = "a" * 38 + "south" + "b" * 37
    matrix = pd.DataFrame(np.eye(3), index=[first, second, "yes"], columns=[first, second, "yes"])
    fig = figures.confusion_panels([("people", matrix)], "Confusion")
    (ax,) = _heatmap_panels(fig)
    rows = [t.get_text() for t in ax.texts if t.get_rotation() == 0 and t.get_ha() == "right"][:3]
    cols = [t.get_text() for t in ax.texts if t.get_rotation() == 90 and t.get_va() == "top"][:3]
    for labels in (rows, cols):
        assert len(labels) == 3 and len(set(labels)) == 3, labels
        assert all(len(x) <= 24 for x in labels), labels
        assert "yes" in labels


def test_short_words_are_drawn_exactly_as_written():
    """Figures of ordinary words must not change: only labels over the limit are shortened."""
    words = ["yes", "no", "café", "x" * 24]
    matrix = pd.DataFrame(np.eye(4), index=words, columns=words)
    (ax,) = _heatmap_panels(figures.confusion_panels([("people", matrix)], "Confusion"))
    texts = [t.get_text() for t in ax.texts]  # column names, "heard", row names, "intended"
    assert texts[:4] == words and texts[5:9] == words
