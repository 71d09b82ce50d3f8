"""Report figures: matplotlib's Agg canvas, saved byte-stable (no dates, no salts).

Every figure comes back as a Figure; save() writes the PNG (and the PDF when asked) and
returns the PNG bytes for embedding. Heatmaps share one fixed colour scale so conditions
compare by eye. Where the report has one near-identical chart per listener group or
condition, they are small multiples: panels of one figure on shared axes, each label
drawn once. Margins are set from the label lengths rather than measured by
tight_layout, which draws every figure an extra time. Words over WORD_MAX characters (and
condition or group names over NAME_MAX) are shortened in the middle, in figures only, so one
long word cannot take over a figure; fonts come from hearsay.fonts, so words in any script an
installed font covers are drawn.
"""
from __future__ import annotations

import io
import os
import unicodedata
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib import rcParams
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.transforms import offset_copy

from hearsay import atomic, fonts
from hearsay.answers import RATING_LABELS

rcParams.update({"svg.hashsalt": "hearsay", "pdf.compression": 6, "font.size": 9, "figure.dpi": 100})
fonts.configure()
PNG_DPI = 110
CHAR_IN = 0.62 / 72  # width of an average DejaVu Sans character per point of font size, in inches
WIDE_CHARS = 1.6  # a CJK character is about one em wide: 1.6 average Latin characters
TICK_PT = 7
WORD_MAX = 24  # characters of a word's label in a figure (at 7 pt, 1.5 inches)
NAME_MAX = 40  # of a condition or listener group's label, which studies name more freely


def _chars(text: str) -> float:
    """Width of the text in average Latin characters (wide East Asian characters count 1.6)."""
    wide = sum(1 for c in text if ord(c) > 0x10FF and unicodedata.east_asian_width(c) in ("W", "F"))
    return len(text) + (WIDE_CHARS - 1) * wide if wide else len(text)


def _text_in(labels, points: float = TICK_PT) -> float:
    """Inches the longest label takes at this font size."""
    return max((_chars(str(x)) for x in labels), default=0) * points * CHAR_IN


def _middle(text: str, limit: int) -> str:
    """The text cut to `limit` characters with an ellipsis in the middle, keeping its start and end."""
    if len(text) <= limit:
        return text
    head = limit // 2
    return f"{text[:head]}…{text[len(text) - (limit - 1 - head):]}"


def _shared_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def short_labels(labels, limit: int = WORD_MAX) -> dict[str, str]:
    """A figure label for each distinct label (keyed by str(label)), at most about `limit` characters and distinct
    for distinct labels: long ones keep their start and end around an ellipsis ("extraordinar…ification"); where
    two would read alike, the part where they differ is shown between two ellipses."""
    texts = list(dict.fromkeys(str(x) for x in labels))
    out = {t: _middle(t, limit) for t in texts}
    by_short: dict[str, list[str]] = {}
    for t in texts:
        by_short.setdefault(out[t], []).append(t)
    for group in (g for g in by_short.values() if len(g) > 1):
        head, window = max(1, (limit - 2) // 3), max(1, (limit - 2) // 3)
        tail = max(1, limit - 2 - head - window)
        for t in group:
            if len(t) <= limit:
                continue  # a label shown whole stays as it is; the long ones around it move
            at = max(_shared_prefix(t, u) for u in group if u != t)
            start = min(max(head, at - 2), max(head, len(t) - tail - window))  # two characters before they part
            out[t] = f"{t[:head]}…{t[start:start + window]}…{t[len(t) - tail:]}"
    seen: dict[str, int] = {}
    for t in texts:  # whatever still reads alike gets a number
        n = seen[out[t]] = seen.get(out[t], 0) + 1
        if n > 1:
            out[t] = f"{out[t][:max(1, limit - 4)]} #{n}"
    return out


@dataclass(frozen=True)
class Margins:
    """Space around the panel grid in inches: labels, titles and the colour bar live here."""

    left: float
    right: float
    top: float
    bottom: float
    wspace: float = 0.25
    hspace: float = 0.45


def _grid(n: int, ncols: int, panel: tuple[float, float], m: Margins, sharey: bool = False,
          ) -> tuple[Figure, list[Axes]]:
    """A figure of n panels (ncols per row) of the given size in inches, placed by fixed margins."""
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    width = m.left + m.right + ncols * panel[0] + (ncols - 1) * m.wspace
    height = m.top + m.bottom + nrows * panel[1] + (nrows - 1) * m.hspace
    fig = Figure(figsize=(width, height))
    axes: list[Axes] = []
    for i in range(n):
        r, c = divmod(i, ncols)
        rect = ((m.left + c * (panel[0] + m.wspace)) / width,
                1 - (m.top + r * (panel[1] + m.hspace) + panel[1]) / height, panel[0] / width, panel[1] / height)
        axes.append(fig.add_axes(rect, sharey=axes[0] if sharey and axes else None))
    return fig, axes


def _bottom_row(i: int, n: int, ncols: int) -> bool:
    """Whether panel i has no panel below it (so it carries the x labels)."""
    return i + ncols >= n


def _suptitle(fig: Figure, title: str) -> None:
    fig.suptitle(title, y=1 - 0.12 / fig.get_figheight(), va="top", fontsize=9)


def _heatmap_axes(ax: Axes, matrix: pd.DataFrame, vmin: float, vmax: float, cmap: str, show_x: bool, show_y: bool,
                  xlabel: str, ylabel: str, row_names: list[str], col_names: list[str]):
    """One heatmap; row and column names (as drawn: `row_names`, `col_names`) as plain text beside it (with dozens
    of words, matplotlib's tick machinery costs more than everything else in the figure), axis names beyond the
    longest name."""
    image = ax.imshow(matrix.to_numpy(dtype=float), vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto",
                      interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    pad = TICK_PT * 0.4
    if show_x:
        below = offset_copy(ax.get_xaxis_transform(), ax.figure, y=-pad, units="points")
        for j, name in enumerate(col_names):
            ax.text(j, 0, name, transform=below, rotation=90, ha="center", va="top", fontsize=TICK_PT)
        names_pt = _text_in(col_names) * 72 + pad
        ax.text(0.5, 0, xlabel, transform=offset_copy(ax.transAxes, ax.figure, y=-names_pt - 2, units="points"),
                ha="center", va="top")
    if show_y:
        left = offset_copy(ax.get_yaxis_transform(), ax.figure, x=-pad, units="points")
        for i, name in enumerate(row_names):
            ax.text(0, i, name, transform=left, ha="right", va="center", fontsize=TICK_PT)
        names_pt = _text_in(row_names) * 72 + pad
        ax.text(0, 0.5, ylabel, transform=offset_copy(ax.transAxes, ax.figure, x=-names_pt - 2, units="points"),
                rotation=90, ha="right", va="center")
    return image


def heatmap_panels(panels: list[tuple[str, pd.DataFrame]], title: str, vmin: float = 0.0, vmax: float = 1.0,
                   cmap: str = "viridis", xlabel: str = "heard", ylabel: str = "intended",
                   colorbar_label: str = "share of answers", ncols: int = 3, cell: float = 0.15,
                   separator: str | None = None, label_max: tuple[int, int] = (WORD_MAX, WORD_MAX)) -> Figure:
    """Heatmaps on one fixed colour scale, one panel per (title, rows x columns matrix); a blank (NaN) cell means
    no answers. All panels take the rows and columns of the first, plus any the others add, so one set of
    labels (left column, bottom row) serves every panel. `separator`: a column set apart by a white line.
    `label_max`: the longest row and column label drawn, in characters (longer ones are shortened)."""
    rows = list(panels[0][1].index)
    cols = list(panels[0][1].columns)
    for _, matrix in panels[1:]:
        rows += [r for r in matrix.index if r not in rows]
        cols += [c for c in matrix.columns if c not in cols]
    if separator in cols:
        cols = [c for c in cols if c != separator] + [separator]
    n = len(panels)
    ncols = max(1, min(ncols, n))
    panel = (max(1.6, cell * len(cols)), max(1.2, cell * len(rows)))
    row_short, col_short = short_labels(rows, label_max[0]), short_labels(cols, label_max[1])
    row_names = [row_short[str(r)] for r in rows]
    col_names = [col_short[str(c)] for c in cols]
    m = Margins(left=_text_in(row_names) + 0.55, right=1.1, top=0.75, bottom=_text_in(col_names) + 0.6, wspace=0.2,
                hspace=0.4)
    if separator == "none" and separator in cols:  # drawn under this name (the margin allows for the word)
        col_names[-1] = "can't tell"
    fig, axes = _grid(n, ncols, panel, m)
    image = None
    for i, (ax, (name, matrix)) in enumerate(zip(axes, panels)):
        full = matrix.reindex(index=rows, columns=cols)
        image = _heatmap_axes(ax, full, vmin, vmax, cmap, _bottom_row(i, n, ncols), i % ncols == 0, xlabel, ylabel,
                              row_names, col_names)
        if separator in cols:
            ax.axvline(len(cols) - 1.5, color="white", linewidth=2)
        ax.set_title(name, fontsize=8)
    bar = min(3.0, fig.get_figheight() - m.top - m.bottom)  # beside the first row, up to 3 inches tall
    cax = fig.add_axes((1 - 0.85 / fig.get_figwidth(), 1 - (m.top + bar) / fig.get_figheight(),
                        0.15 / fig.get_figwidth(), bar / fig.get_figheight()))
    fig.colorbar(image, cax=cax, label=colorbar_label)
    _suptitle(fig, title)
    return fig


def confusion_panels(panels: list[tuple[str, pd.DataFrame]], title: str) -> Figure:
    """Intended x heard per condition, rows summing to 1; "can't tell" sits apart as the last column."""
    return heatmap_panels(panels, title, separator="none", ncols=4)


def confusion_difference_panels(panels: list[tuple[str, pd.DataFrame]], title: str) -> Figure:
    """Differences of two row-normalized confusion matrices on a diverging [-1, 1] scale, one panel per pair."""
    return heatmap_panels(panels, title, vmin=-1.0, vmax=1.0, cmap="RdBu_r", colorbar_label="difference in share",
                          separator="none", ncols=4)


def word_accuracy_panels(panels: list[tuple[str, pd.DataFrame]], title: str) -> Figure:
    """Words x conditions accuracy per listener group, one fixed [0, 1] scale."""
    return heatmap_panels(panels, title, xlabel="condition", ylabel="intended word", colorbar_label="accuracy",
                          ncols=6, cell=0.17, label_max=(WORD_MAX, NAME_MAX))


def heatmap(matrix: pd.DataFrame, title: str, vmin: float = 0.0, vmax: float = 1.0, cmap: str = "viridis",
            xlabel: str = "heard", ylabel: str = "intended", colorbar_label: str = "share of answers") -> Figure:
    """One rows x columns heatmap on a fixed colour scale (e.g. the objective experiment's)."""
    return heatmap_panels([("", matrix)], title, vmin, vmax, cmap, xlabel, ylabel, colorbar_label, cell=0.24)


def _bars_axes(ax: Axes, frame: pd.DataFrame, value: str, low: str, high: str, reference: str | None) -> None:
    x = np.arange(len(frame))
    vals = frame[value].to_numpy(dtype=float)
    # an interval never reaches past its estimate; clip float noise so matplotlib accepts it
    err = np.clip(np.vstack([vals - frame[low].to_numpy(dtype=float), frame[high].to_numpy(dtype=float) - vals]),
                  0, None)
    ax.bar(x, vals, color="#4C72B0", yerr=err, capsize=3)
    if reference is not None:
        ax.scatter(x, frame[reference].to_numpy(dtype=float), marker="_", s=300, color="#C44E52", label="chance",
                   zorder=3)


def interval_bar_panels(panels: list[tuple[str, pd.DataFrame]], value: str, low: str, high: str, label: str,
                        ylabel: str, title: str, ylim: tuple[float, float], reference: str | None = None,
                        ncols: int = 3) -> Figure:
    """Bars with 95% interval whiskers, one panel per (title, frame) on a shared y axis; `reference` names a
    column of per-bar marks (e.g. chance)."""
    n = len(panels)
    ncols = max(1, min(ncols, n))
    short = short_labels([x for _, frame in panels for x in frame[label]], NAME_MAX)
    labels = list(short.values())
    longest = max(len(frame) for _, frame in panels)
    m = Margins(left=0.7, right=0.2, top=0.6, bottom=0.7 * _text_in(labels) + 0.3,
                wspace=0.15, hspace=0.7 * _text_in(labels) + 0.45)
    fig, axes = _grid(n, ncols, (max(2.2, 0.42 * longest + 0.4), 2.6), m, sharey=True)
    for i, (ax, (name, frame)) in enumerate(zip(axes, panels)):
        _bars_axes(ax, frame, value, low, high, reference)
        ax.set_xticks(np.arange(len(frame)), [short[str(x)] for x in frame[label]], rotation=45, ha="right",
                      fontsize=TICK_PT)
        ax.set_ylim(*ylim)
        if i % ncols == 0:
            ax.set_ylabel(ylabel)
        else:
            ax.tick_params(labelleft=False)
        ax.set_title(name, fontsize=8)
    if reference is not None:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="upper right", fontsize=7, frameon=False)
    _suptitle(fig, title)
    return fig


def grouped_interval_bars(value: pd.DataFrame, low: pd.DataFrame, high: pd.DataFrame, ylabel: str, title: str,
                          ylim: tuple[float, float], reference: float | None = None,
                          reference_label: str = "chance") -> Figure:
    """Side-by-side bars per row (condition), one colour per column (listener group), 95% whiskers.

    Missing cells (NaN) leave a gap rather than a zero-height bar.
    """
    n_rows, n_cols = value.shape
    rows, cols = short_labels(value.index, NAME_MAX), short_labels(value.columns, NAME_MAX)
    legend = _text_in([*cols.values(), reference_label]) + 0.5
    m = Margins(left=0.7, right=legend, top=0.45, bottom=0.5 * _text_in(rows.values(), 8) + 0.35)
    fig, (ax,) = _grid(1, 1, (max(3.5, 0.28 * n_rows * max(n_cols, 1) + 0.6), 2.6), m)
    width = 0.8 / max(n_cols, 1)
    x = np.arange(n_rows)
    for j, col in enumerate(value.columns):
        vals = value[col].to_numpy(dtype=float)
        err = np.clip(np.vstack([vals - low[col].to_numpy(dtype=float), high[col].to_numpy(dtype=float) - vals]),
                      0, None)
        ax.bar(x + (j - (n_cols - 1) / 2) * width, np.nan_to_num(vals), width, yerr=np.nan_to_num(err),
               capsize=2, label=cols[str(col)])
    if reference is not None:
        ax.axhline(reference, color="#555555", linestyle="--", linewidth=1, label=reference_label)
    ax.set_xticks(x, [rows[str(r)] for r in value.index], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _suptitle(fig, title)
    return fig


def grouped_bar_panels(panels: list[tuple[str, pd.DataFrame]], ylabel: str, title: str,
                       ylim: tuple[float, float]) -> Figure:
    """One group of bars per row (word), one bar per column (e.g. original / classifier / decoder), one panel per
    (title, matrix) stacked on a shared word axis."""
    words = list(panels[0][1].index)
    for _, matrix in panels[1:]:
        words += [w for w in matrix.index if w not in words]
    series = []
    for _, matrix in panels:
        series += [c for c in matrix.columns if c not in series]
    n_cols = max(len(series), 1)
    word_names, series_names = short_labels(words, WORD_MAX), short_labels(series, NAME_MAX)
    m = Margins(left=0.7, right=_text_in(series_names.values()) + 0.45, top=0.6,
                bottom=_text_in(word_names.values()) + 0.2, hspace=0.35)
    fig, axes = _grid(len(panels), 1, (max(4.0, 0.12 * len(words) * n_cols + 0.5), 2.1), m)
    width = 0.8 / n_cols
    x = np.arange(len(words))
    colours = {c: f"C{j}" for j, c in enumerate(series)}
    for i, (ax, (name, matrix)) in enumerate(zip(axes, panels)):
        full = matrix.reindex(index=words)
        for col in matrix.columns:  # one collection per series: hundreds of bars, drawn as one artist
            left = x + (series.index(col) - (n_cols - 1) / 2) * width - width / 2
            height = full[col].to_numpy(dtype=float)
            ok = ~np.isnan(height)
            corners = np.stack([np.column_stack([left, np.zeros_like(left)]), np.column_stack([left, height]),
                                np.column_stack([left + width, height]),
                                np.column_stack([left + width, np.zeros_like(left)])], axis=1)
            ax.add_collection(PolyCollection(corners[ok], facecolors=colours[col], edgecolors="none"))
        ax.set_xlim(-0.5, len(words) - 0.5)
        if i == len(panels) - 1:  # the word names once, under the last panel
            ax.set_xticks(x, [word_names[str(w)] for w in words], rotation=90, fontsize=TICK_PT)
        else:
            ax.set_xticks([])
        ax.set_ylim(*ylim)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(name, fontsize=8)
    axes[0].legend([Patch(color=colours[c]) for c in series], [series_names[str(c)] for c in series], fontsize=7,
                   loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _suptitle(fig, title)
    return fig


def rating_histogram_panels(panels: list[tuple[str, pd.DataFrame]], title: str, ncols: int = 2) -> Figure:
    """Share of answers at each rating 0..4, one bar series per condition, one panel per (title, counts)."""
    n = len(panels)
    ncols = max(1, min(ncols, n))
    m = Margins(left=0.7, right=0.25, top=0.7, bottom=0.75, wspace=0.2, hspace=0.75)
    fig, axes = _grid(n, ncols, (3.8, 2.2), m, sharey=True)
    ticks = [f"{label} ({value})" for value, label in enumerate(RATING_LABELS)]
    for i, (ax, (name, counts)) in enumerate(zip(axes, panels)):
        k = counts.shape[1]
        width = 0.8 / max(k, 1)
        x = np.arange(counts.shape[0])
        for j, col in enumerate(counts.columns):
            total = counts[col].sum()
            share = counts[col].to_numpy(dtype=float) / total if total else np.zeros(len(x))
            ax.bar(x + (j - (k - 1) / 2) * width, share, width, label=f"{col} (n={int(total)})")
        ax.set_xticks(x, ticks, rotation=20, ha="right", fontsize=6)
        ax.set_ylim(0, 1)
        if i % ncols == 0:
            ax.set_ylabel("share of answers")
        else:
            ax.tick_params(labelleft=False)
        ax.set_title(name, fontsize=8)
        ax.legend(fontsize=6, loc="upper left")
    _suptitle(fig, title)
    return fig


def scatter(x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str, title: str) -> Figure:
    """One point per unit (e.g. listener), both axes on [0, 1] with the diagonal for reference."""
    m = Margins(left=0.65, right=0.2, top=0.55, bottom=0.55)
    fig, (ax,) = _grid(1, 1, (3.6, 3.1), m)
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=1)
    ax.scatter(x, y, s=14, alpha=0.7, color="#4C72B0")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=8, wrap=True)
    return fig


def histogram(values: np.ndarray, title: str, xlabel: str) -> Figure:
    """Plain histogram on [0, 1] (e.g. per-listener gold accuracy)."""
    m = Margins(left=0.65, right=0.2, top=0.4, bottom=0.55)
    fig, (ax,) = _grid(1, 1, (4.1, 2.6), m)
    ax.hist(np.asarray(values, dtype=float), bins=np.linspace(0, 1, 21), color="#4C72B0")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("listeners")
    ax.set_title(title, fontsize=9)
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    with fonts.quiet():  # characters no font has are reported once, in the report's notes (font_notes)
        fig.savefig(buf, format="png", dpi=PNG_DPI, metadata={"Software": None})
    return buf.getvalue()


def save(fig: Figure, stem: Path, pdf: bool = False) -> bytes:
    """Write stem.png (and stem.pdf when asked) byte-stably; return the PNG bytes for the HTML report."""
    png = png_bytes(fig)
    atomic.write_bytes(stem.with_suffix(".png"), png)
    if pdf:
        buf = io.BytesIO()
        with fonts.quiet():
            fig.savefig(buf, format="pdf", metadata={"CreationDate": None, "Producer": None, "Creator": None})
        atomic.write_bytes(stem.with_suffix(".pdf"), buf.getvalue())
    return png


@dataclass(frozen=True)
class Later:
    """A figure to draw when the report is written: the drawing function and its (picklable) arguments.

    Analysis stages only describe figures, so they cost nothing until written, and the
    writer can draw them in several processes at once.
    """

    draw: Callable[..., Figure]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def __init__(self, draw: Callable[..., Figure], *args, **kwargs):
        object.__setattr__(self, "draw", draw)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "kwargs", kwargs)

    def figure(self) -> Figure:
        return self.draw(*self.args, **self.kwargs)


def _is_text(column: pd.Series) -> bool:
    """Whether a column holds names (object, string or categorical) rather than numbers, flags or times."""
    return getattr(column.dtype, "kind", "O") not in "biufcmM"


def _label_texts(value) -> list[str]:
    """The strings a figure's arguments hold: titles, names, and the index, columns and text cells of frames."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, pd.DataFrame):
        columns = [value.iloc[:, i] for i in range(value.shape[1])]
        return [*map(str, value.index), *map(str, value.columns),
                *(str(x) for c in columns if _is_text(c) for x in c.dropna().unique())]
    if isinstance(value, pd.Index):
        return list(map(str, value))
    if isinstance(value, pd.Series):
        return [*map(str, value.index), *(map(str, value.dropna().unique()) if _is_text(value) else [])]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _label_texts(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _label_texts(v)]
    return []


def font_notes(described: dict[str, Later]) -> list[str]:
    """One note when some figure's labels hold characters no installed font draws (boxes in the figure)."""
    texts = dict.fromkeys(s for later in described.values() for s in _label_texts([later.args, later.kwargs]))
    line = fonts.note(texts, where="; the tables are unaffected")
    return [line] if line else []


PARALLEL_MIN_FIGURES = 8


def _render(item: tuple[Later, Path, bool]) -> bytes:
    later, stem, pdf = item
    return save(later.figure(), stem, pdf)


def _png_of(later: Later) -> bytes:
    return png_bytes(later.figure())


class DrawingAhead:
    """PNGs drawn in one forked background process while the analysis computes on the main one.

    The analysis is single-threaded, so on a machine with a second core its figures can be
    drawn meanwhile instead of all at write time. Whether PDFs are wanted is known only when
    the report is written, so this draws PNGs only (the bytes are those the writer would draw).
    """

    def __init__(self):
        self._pool: ProcessPoolExecutor | None = None
        self.pending: dict[str, Future] = {}

    @staticmethod
    def worthwhile() -> bool:
        return os.name == "posix" and len(os.sched_getaffinity(0)) >= 2

    def submit(self, described: dict[str, Later]) -> None:
        """Start drawing every figure not yet started."""
        for name, later in described.items():
            if name not in self.pending:
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("fork"))
                self.pending[name] = self._pool.submit(_png_of, later)

    def take(self) -> dict[str, bytes]:
        """The PNGs drawn or being drawn now; figures still queued are cancelled (the writer draws them)."""
        started = {name: future for name, future in self.pending.items() if not future.cancel()}
        return {name: future.result() for name, future in started.items()}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def render_all(pending: dict[str, Later], folder: Path, progress: bool = False, workers: int | None = None,
               pdf: bool = False, ahead: DrawingAhead | None = None) -> dict[str, bytes]:
    """Draw and save every figure (PNG, and PDF when asked), in worker processes when there are many; returns
    the PNG bytes. Without PDFs, the PNGs `ahead` already drew are written as they are.

    Workers are forked (a spawned worker would re-run an unguarded calling script) and
    only draw with matplotlib; output bytes are the same either way.
    """
    from tqdm import tqdm

    drawn: dict[str, bytes] = {}
    if ahead is not None:  # with PDFs every figure is drawn here once, for both formats
        drawn = {} if pdf else ahead.take()
        ahead.close()
    for name, png in drawn.items():
        atomic.write_bytes((folder / name).with_suffix(".png"), png)
    names = [n for n in pending if n not in drawn]
    jobs = [(pending[n], folder / n, pdf) for n in names]
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)), 4)
    if workers < 2 or len(jobs) < PARALLEL_MIN_FIGURES or os.name != "posix":
        done = [_render(job) for job in tqdm(jobs, desc="figures", unit="fig", disable=not progress)]
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
            done = list(tqdm(pool.map(_render, jobs, chunksize=max(1, len(jobs) // (4 * workers))),
                             total=len(jobs), desc="figures", unit="fig", disable=not progress))
    drawn.update(zip(names, done))
    return {name: drawn[name] for name in pending}


def save_png_copy(png: bytes, stem: Path, pdf: bool = False) -> None:
    """Keep a PNG made elsewhere as it is, and when PDFs are asked for, wrap it in a PDF page of the same size."""
    import matplotlib.image as mpimg

    atomic.write_bytes(stem.with_suffix(".png"), png)
    if not pdf:
        return
    pixels = mpimg.imread(io.BytesIO(png), format="png")
    fig = Figure(figsize=(pixels.shape[1] / 100, pixels.shape[0] / 100), dpi=100)
    fig.figimage(pixels, resize=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf", dpi=100, metadata={"CreationDate": None, "Producer": None, "Creator": None})
    atomic.write_bytes(stem.with_suffix(".pdf"), buf.getvalue())

