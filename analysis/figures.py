"""Report figures: matplotlib on the Agg backend, saved byte-stable (no dates, no salts).

Every figure comes back as a Figure; save() writes PNG and PDF and returns the PNG
bytes for embedding. Heatmaps share one fixed colour scale so conditions compare by eye.
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from hearsay import atomic  # noqa: E402
from hearsay.answers import RATING_LABELS  # noqa: E402

plt.rcParams.update({"svg.hashsalt": "hearsay", "pdf.compression": 6, "font.size": 9, "figure.dpi": 100})
PNG_DPI = 110


def _size_for_labels(n_rows: int, n_cols: int) -> tuple[float, float]:
    """Grow the canvas with the label count so every one of 35+ words stays readable."""
    return (max(5.0, 0.24 * n_cols + 2.6), max(4.0, 0.24 * n_rows + 1.8))


def heatmap(matrix: pd.DataFrame, title: str, vmin: float = 0.0, vmax: float = 1.0, cmap: str = "viridis",
            xlabel: str = "heard", ylabel: str = "intended", colorbar_label: str = "share of answers") -> Figure:
    """Rows x columns heatmap on a fixed colour scale; a blank (NaN) cell means no answers."""
    fig = Figure(figsize=_size_for_labels(*matrix.shape))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(matrix.to_numpy(dtype=float), vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto",
                      interpolation="nearest")
    ax.set_xticks(range(matrix.shape[1]), [str(c) for c in matrix.columns], rotation=90, fontsize=7)
    ax.set_yticks(range(matrix.shape[0]), [str(r) for r in matrix.index], fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8, wrap=True)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label=colorbar_label)
    fig.tight_layout()
    return fig


def confusion(matrix: pd.DataFrame, title: str) -> Figure:
    """Intended x heard, rows summing to 1; "can't tell" sits apart as the last column."""
    labelled = matrix.rename(columns={"none": "can't tell"})
    fig = heatmap(labelled, title)
    if "none" in matrix.columns:
        fig.axes[0].axvline(list(matrix.columns).index("none") - 0.5, color="white", linewidth=3)
    return fig


def confusion_difference(matrix: pd.DataFrame, title: str) -> Figure:
    """Difference of two row-normalized confusion matrices on a diverging [-1, 1] scale."""
    return heatmap(matrix, title, vmin=-1.0, vmax=1.0, cmap="RdBu_r", colorbar_label="difference in share")


def word_accuracy(matrix: pd.DataFrame, title: str) -> Figure:
    """Words x conditions accuracy, one fixed [0, 1] scale."""
    return heatmap(matrix, title, xlabel="condition", ylabel="intended word", colorbar_label="accuracy")


def interval_bars(frame: pd.DataFrame, value: str, low: str, high: str, label: str, ylabel: str, title: str,
                  ylim: tuple[float, float], reference: pd.Series | None = None) -> Figure:
    """Bars with 95% interval whiskers; optional per-bar reference marks (e.g. chance)."""
    fig = Figure(figsize=(max(5.0, 0.55 * len(frame) + 2.0), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(frame))
    vals = frame[value].to_numpy(dtype=float)
    # an interval never reaches past its estimate; clip float noise so matplotlib accepts it
    err = np.clip(np.vstack([vals - frame[low].to_numpy(dtype=float), frame[high].to_numpy(dtype=float) - vals]),
                  0, None)
    ax.bar(x, vals, color="#4C72B0", yerr=err, capsize=3)
    if reference is not None:
        ax.scatter(x, reference.to_numpy(dtype=float), marker="_", s=400, color="#C44E52", label="chance", zorder=3)
        ax.legend(loc="best")
    ax.set_xticks(x, frame[label].tolist(), rotation=45, ha="right", fontsize=7)
    ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def grouped_interval_bars(value: pd.DataFrame, low: pd.DataFrame, high: pd.DataFrame, ylabel: str, title: str,
                          ylim: tuple[float, float], reference: float | None = None,
                          reference_label: str = "chance") -> Figure:
    """Side-by-side bars per row (condition), one colour per column (listener group), 95% whiskers.

    Missing cells (NaN) leave a gap rather than a zero-height bar.
    """
    n_rows, n_cols = value.shape
    fig = Figure(figsize=(max(6.0, 0.28 * n_rows * max(n_cols, 1) + 2.5), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(n_cols, 1)
    x = np.arange(n_rows)
    for j, col in enumerate(value.columns):
        vals = value[col].to_numpy(dtype=float)
        err = np.clip(np.vstack([vals - low[col].to_numpy(dtype=float), high[col].to_numpy(dtype=float) - vals]),
                      0, None)
        ax.bar(x + (j - (n_cols - 1) / 2) * width, np.nan_to_num(vals), width, yerr=np.nan_to_num(err),
               capsize=2, label=str(col))
    if reference is not None:
        ax.axhline(reference, color="#555555", linestyle="--", linewidth=1, label=reference_label)
    ax.set_xticks(x, [str(r) for r in value.index], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def grouped_bars(matrix: pd.DataFrame, ylabel: str, title: str, ylim: tuple[float, float]) -> Figure:
    """One group of bars per row (word), one bar per column (e.g. original / classifier / decoder)."""
    n_rows, n_cols = matrix.shape
    fig = Figure(figsize=(max(6.0, 0.12 * n_rows * max(n_cols, 1) + 2.0), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(n_cols, 1)
    x = np.arange(n_rows)
    for j, col in enumerate(matrix.columns):
        ax.bar(x + (j - (n_cols - 1) / 2) * width, matrix[col].to_numpy(dtype=float), width, label=str(col))
    ax.set_xticks(x, [str(r) for r in matrix.index], rotation=90, fontsize=7)
    ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def rating_histograms(counts: pd.DataFrame, title: str) -> Figure:
    """Share of answers at each rating 0..4, one bar series per condition."""
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    n = counts.shape[1]
    width = 0.8 / max(n, 1)
    x = np.arange(counts.shape[0])
    for j, col in enumerate(counts.columns):
        total = counts[col].sum()
        share = counts[col].to_numpy(dtype=float) / total if total else np.zeros(len(x))
        ax.bar(x + (j - (n - 1) / 2) * width, share, width, label=f"{col} (n={int(total)})")
    ax.set_xticks(x, [f"{label} ({value})" for value, label in enumerate(RATING_LABELS)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of answers")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def scatter(x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str, title: str) -> Figure:
    """One point per unit (e.g. listener), both axes on [0, 1] with the diagonal for reference."""
    fig = Figure(figsize=(4.6, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=1)
    ax.scatter(x, y, s=14, alpha=0.7, color="#4C72B0")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


def histogram(values: np.ndarray, title: str, xlabel: str) -> Figure:
    """Plain histogram on [0, 1] (e.g. per-listener gold accuracy)."""
    fig = Figure(figsize=(5.0, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(np.asarray(values, dtype=float), bins=np.linspace(0, 1, 21), color="#4C72B0")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("listeners")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def save(fig: Figure, stem: Path) -> bytes:
    """Write stem.png and stem.pdf byte-stably; return the PNG bytes for the HTML report."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI, metadata={"Software": None})
    png = buf.getvalue()
    atomic.write_bytes(stem.with_suffix(".png"), png)
    buf = io.BytesIO()
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


PARALLEL_MIN_FIGURES = 8


def _render(item: tuple[Later, Path]) -> bytes:
    later, stem = item
    return save(later.figure(), stem)


def render_all(pending: dict[str, Later], folder: Path, progress: bool = False, workers: int | None = None,
               ) -> dict[str, bytes]:
    """Draw and save every figure (PNG + PDF), in worker processes when there are many; returns PNG bytes.

    Workers are forked (a spawned worker would re-run an unguarded calling script) and
    only draw with matplotlib; output bytes are the same either way.
    """
    from tqdm import tqdm

    names = list(pending)
    jobs = [(pending[n], folder / n) for n in names]
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)), 4)
    if workers < 2 or len(jobs) < PARALLEL_MIN_FIGURES or os.name != "posix":
        return {n: _render(job) for n, job in zip(names, tqdm(jobs, desc="figures", unit="fig", disable=not progress))}
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
        done = tqdm(pool.map(_render, jobs, chunksize=max(1, len(jobs) // (4 * workers))), total=len(jobs),
                    desc="figures", unit="fig", disable=not progress)
        return dict(zip(names, done))


def save_png_copy(png: bytes, stem: Path) -> None:
    """Keep a PNG made elsewhere as it is, and wrap it in a PDF page of the same size."""
    import matplotlib.image as mpimg

    atomic.write_bytes(stem.with_suffix(".png"), png)
    pixels = mpimg.imread(io.BytesIO(png), format="png")
    fig = Figure(figsize=(pixels.shape[1] / 100, pixels.shape[0] / 100), dpi=100)
    fig.figimage(pixels, resize=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf", dpi=100, metadata={"CreationDate": None, "Producer": None, "Creator": None})
    atomic.write_bytes(stem.with_suffix(".pdf"), buf.getvalue())

