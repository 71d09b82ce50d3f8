"""Fonts for every matplotlib figure Hearsay writes (report and generation commands).

matplotlib (>= 3.6) falls back glyph by glyph through the families listed in font.sans-serif, but by default lists
only Latin fonts, so a word like 猫 came out as an empty box. configure() lists DejaVu Sans first (figures of
Latin-script words stay byte-identical) and then those wide-coverage fonts that are installed, looked up in
matplotlib's font manager so absent ones cause no "findfont" warnings. matplotlib caches its font list and does
not notice fonts installed later; configure() adds them when a font folder changed after that cache was written.

A character that no installed font has still draws as a box; missing() finds such characters from the fonts'
character maps so the caller can say so in one line (note()), and quiet() keeps matplotlib from warning per glyph.
"""
from __future__ import annotations

import contextlib
import os
import unicodedata
import warnings
from functools import lru_cache
from pathlib import Path

PRIMARY = "DejaVu Sans"
# Wide-coverage families, best first; only the installed ones are used.
FALLBACKS = (
    "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR", "Noto Sans CJK HK",
    "Source Han Sans", "Source Han Sans JP", "Source Han Sans SC", "Source Han Sans TC", "Source Han Sans K",
    "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "Noto Sans",
    "Noto Sans Devanagari", "Noto Sans Bengali", "Noto Sans Tamil", "Noto Sans Telugu", "Noto Sans Gujarati",
    "Noto Sans Gurmukhi", "Noto Sans Kannada", "Noto Sans Malayalam", "Noto Sans Sinhala", "Noto Sans Arabic",
    "Noto Sans Hebrew", "Noto Sans Thai", "Noto Sans Lao", "Noto Sans Khmer", "Noto Sans Myanmar",
    "Noto Sans Georgian", "Noto Sans Armenian", "Noto Sans Ethiopic", "Noto Sans Tibetan",
    "Arial Unicode MS", "PingFang SC", "Hiragino Sans", "Hiragino Sans GB", "Microsoft YaHei", "Meiryo",
    "Malgun Gothic", "Nirmala UI", "Segoe UI", "Segoe UI Historic", "Segoe UI Symbol", "FreeSans",
)
_GLYPH_WARNING = r"Glyph \d+ .* missing from font"
_configured: list[str] | None = None


def _font_folders() -> list[Path]:
    from matplotlib import font_manager

    folders = [*font_manager.X11FontDirectories, *font_manager.OSXFontDirectories]
    if os.name == "nt":
        folders.append(font_manager.win32FontDirectory())
    return [Path(os.path.expanduser(f)) for f in folders]


def _newest_folder(folders: list[Path]) -> float:
    """Latest change to any folder under the font folders (installing a font changes the folder it lands in)."""
    newest = 0.0
    for top in folders:
        for here, _, _ in os.walk(top):
            with contextlib.suppress(OSError):
                newest = max(newest, os.stat(here).st_mtime)
    return newest


def refresh_font_list() -> int:
    """Add fonts installed since matplotlib cached its font list (it rebuilds that list only when a listed file
    disappears); returns how many files were added. Cheap when nothing changed: one stat per font folder."""
    import matplotlib
    from matplotlib import font_manager

    manager = font_manager.fontManager
    cache = Path(matplotlib.get_cachedir(), f"fontlist-v{font_manager.FontManager.__version__}.json")
    try:
        written = cache.stat().st_mtime
    except OSError:
        return 0  # no cache file: this process built its list from the folders as they are
    if _newest_folder(_font_folders()) <= written:
        return 0
    known = {os.path.realpath(f.fname) for f in manager.ttflist}
    added = 0
    for path in font_manager.findSystemFonts(fontext="ttf"):
        if os.path.realpath(path) not in known:
            try:
                manager.addfont(path)
                added += 1
            except Exception:  # a file FreeType cannot read is skipped, as matplotlib does
                continue
    with contextlib.suppress(Exception):
        font_manager.json_dump(manager, cache)  # the next process finds them in the cache
    if not added:
        with contextlib.suppress(OSError):
            os.utime(cache)
    return added


def families() -> list[str]:
    """DejaVu Sans, then every installed fallback family in FALLBACKS order."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return [PRIMARY, *(name for name in FALLBACKS if name in installed and name != PRIMARY)]


def configure() -> list[str]:
    """List the fallback fonts in matplotlib's rcParams (once per process); returns the families."""
    global _configured
    if _configured is None:
        from matplotlib import rcParams

        refresh_font_list()
        _configured = families()
        # matplotlib falls back only across the families named in font.family (the "sans-serif" alias resolves to
        # one font), so the list goes there, and into font.sans-serif for text that asks for that alias
        rcParams["font.family"] = list(_configured)
        rcParams["font.sans-serif"] = [*_configured, *(f for f in rcParams["font.sans-serif"] if f not in _configured)]
    return _configured


def pyplot(*labels):
    """pyplot on the non-interactive Agg backend with the fonts configured. When `labels` (strings or lists of
    them) hold characters no installed font has, say so once on stderr and leave out matplotlib's per-glyph
    warnings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configure()
    line = note(_strings(labels))
    if line:
        import sys

        print(line, file=sys.stderr)
        warnings.filterwarnings("ignore", message=_GLYPH_WARNING, category=UserWarning)
    return plt


def _strings(values) -> list[str]:
    out: list[str] = []
    for v in values:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, (list, tuple, set, frozenset)):
            out += _strings(v)
        elif v is not None:
            out.append(str(v))
    return out


@lru_cache(maxsize=None)
def _charmap(path: str, index: int) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path, face_index=index).get_charmap())
    except Exception:
        return frozenset()


def _font_files() -> list[tuple[str, int]]:
    from matplotlib import font_manager
    from matplotlib.font_manager import FontProperties

    files = []
    for name in configure():
        try:
            path = font_manager.fontManager.findfont(FontProperties(family=[name]), fallback_to_default=False)
        except ValueError:
            continue
        index = getattr(path, "face_index", 0)  # matplotlib >= 3.11 names the face of a .ttc collection
        files.append((str(path), index if isinstance(index, int) else 0))
    return files


def _drawable(char: str) -> bool:
    """Whether the character needs a glyph at all (spaces, controls and joiners do not)."""
    return not char.isspace() and unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp", "Zs", "Mn", "Me")


def missing(texts) -> dict[str, str]:
    """Each character of `texts` that none of the configured fonts has, with the first text it appears in."""
    first: dict[str, str] = {}
    for text in texts:
        for char in str(text):
            if char not in first and ord(char) > 0x7E and _drawable(char):
                first[char] = str(text)
    left = dict(first)
    for path, index in _font_files():
        if not left:
            break
        cmap = _charmap(path, index)
        left = {c: t for c, t in left.items() if ord(c) not in cmap}
    return left


def _quoted(items: list[str], most: int = 3) -> str:
    shown = ", ".join(f"'{x}'" for x in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def note(texts, where: str = "") -> str | None:
    """One line for the analyst when some character in `texts` cannot be drawn, else None."""
    absent = missing(texts)
    if not absent:
        return None
    chars = list(absent)
    words = list(dict.fromkeys(absent.values()))
    wide = any(unicodedata.east_asian_width(c) in ("W", "F") for c in chars)
    package = "fonts-noto-cjk" if wide else "fonts-noto-core or fonts-noto-extra"
    return (f"Figures: no installed font draws {_quoted(chars, 5)} (in {_quoted(words)}), so "
            f"{'it is' if len(chars) == 1 else 'they are'} drawn as boxes; install a font that covers "
            f"{'it' if len(chars) == 1 else 'them'}, e.g. Debian's {package}{where}.")


@contextlib.contextmanager
def quiet():
    """Leave out matplotlib's "Glyph ... missing from font(s)" warnings (one per character and draw) while drawing;
    the caller reports such characters once, from note()."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_GLYPH_WARNING, category=UserWarning)
        yield
