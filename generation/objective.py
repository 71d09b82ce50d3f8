"""The paper's objective experiment: does an independent classifier agree with the maximized samples?

For every target word and both methods (classifier-only, decoder prior), n noise
starts are maximized toward the word for classifier A; A's and B's softmax
before and after are saved per class, then summarized as a heatmap (rows: target
word, columns: B's mean softmax over the maximized samples) and a table of how
often A and B pick the target. One `.npz` per (method, word) is written
atomically, so an interrupted run resumes by skipping finished classes;
`run.json` pins the settings and the checkpoints so a resumed run never mixes
results of different configurations.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from hearsay import atomic
from hearsay.errors import HearsayError
from hearsay.provenance import library_versions
from hearsay.runs import RunFolder

from . import checkpoint, workers
from .checkpoint import Checkpoint
from .maximize import METHODS, Result, check_precision, default_batch_size, derive_seed, maximize, preset

# Noise starts per word and method at most: 100x the paper's 10,000; what one word keeps in memory (A's and B's
# softmax before and after per start) stays under a gigabyte at 35 words, where a mistyped count would exhaust it.
MAX_N = 1_000_000
ARRAYS = ("prob_a_before", "prob_a_after", "prob_b_before", "prob_b_after", "failed", "trajectory")


def save_figure(fig, stem: Path) -> list[Path]:
    """The same figure as PNG (for a quick look) and PDF (for papers), each written atomically."""
    paths = []
    for ext, kwargs in (("png", {"dpi": 130}), ("pdf", {})):
        path = stem.with_suffix(f".{ext}")
        atomic.write_with(path, lambda fh, ext=ext, kwargs=kwargs: fig.savefig(fh, format=ext, bbox_inches="tight", **kwargs))
        paths.append(path)
    return paths


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    def write(fh) -> None:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)

    atomic.write_with(path, write, binary=False)


@dataclass
class ClassStats:
    method: str
    word: str
    n: int
    failed: int
    a_hits: int
    b_hits: int
    a_prob: float
    b_prob: float
    a_hits_before: int
    b_hits_before: int

    @property
    def valid(self) -> int:
        return self.n - self.failed


@dataclass
class ObjectiveRun:
    out: Path
    classes: list[str]
    words: list[str]
    methods: list[str]
    stats: list[ClassStats]
    heatmaps: dict[str, np.ndarray]
    seconds: float
    computed: int
    resumed: int


def load_models(classifier: str | Path, evaluator: str | Path, decoder: str | Path | None, device: torch.device) -> tuple[Checkpoint, Checkpoint, Checkpoint | None]:
    """Load A, B and the autoencoder and refuse any combination that would see different features or words."""
    a = checkpoint.load(classifier, device, kind="classifier")
    b = checkpoint.load(evaluator, device, kind="classifier")
    ae = checkpoint.load(decoder, device, kind="autoencoder") if decoder is not None else None
    checkpoint.require_compatible(*[c for c in (a, b, ae) if c is not None])
    if ae is not None:
        with torch.no_grad():
            shape = tuple(ae.model.decode(torch.zeros(1, ae.model.latent, device=device)).shape[1:])
        if shape != a.feature_config.shape:
            raise HearsayError(f"{Path(ae.path).name} decodes {shape} features, the classifiers read {a.feature_config.shape}")
    return a, b, ae


def _config(n: int, words: list[str], methods: list[str], preset_name: str, seed: int, a: Checkpoint, b: Checkpoint, ae: Checkpoint | None,
            gens: dict[str, Checkpoint] | None = None, precision_mode: str = "fp32") -> dict:
    """Everything the saved arrays depend on (not the device or batch size, which only change speed)."""
    return {
        "n": n,
        "words": words,
        "methods": methods,
        "preset": preset_name,
        "settings": {m: preset(preset_name, m).to_dict() for m in methods},
        "seed": seed,
        "classes": a.classes,
        "classifier_sha256": a.sha256,
        "evaluator_sha256": b.sha256,
        "decoder_sha256": ae.sha256 if ae is not None else None,
        "feature_config": a.feature_config.to_dict(),
        # fp32 runs keep the identity they had before precisions existed, so they still resume
        **({"precision": precision_mode} if precision_mode != "fp32" else {}),
        **({"generator_sha256": {m: g.sha256 for m, g in gens.items()}} if gens else {}),
    }


def _write_run_json(folder: RunFolder, device: torch.device, batch_size: int, extra: dict) -> None:
    folder.write_record({
        "device": str(device),
        "batch_size": batch_size,
        "versions": library_versions(),
        "written": datetime.now(timezone.utc).isoformat(),
        **extra,
    })


def _save_class(path: Path, result: Result) -> None:
    arrays = {
        "prob_a_before": result.start_prob_a.numpy(),
        "prob_a_after": result.prob_a.numpy(),
        "prob_b_before": result.start_prob_b.numpy(),
        "prob_b_after": result.prob_b.numpy(),
        "failed": result.failed.numpy(),
        "trajectory": result.trajectory.numpy(),
    }
    atomic.write_with(path, lambda fh: np.savez(fh, **arrays))


def _load_class(path: Path, n: int, n_classes: int) -> dict[str, np.ndarray] | None:
    """A finished class file, or None when it is missing or not what this run writes."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in ARRAYS}
    except (OSError, ValueError, KeyError):
        return None
    if arrays["prob_a_after"].shape != (n, n_classes):
        return None
    return arrays


@dataclass(frozen=True)
class _ClassTask:
    """What maximizing one (method, word) needs besides the models: the same in the parent and in a worker."""

    n: int
    targets: dict[str, int]
    preset_name: str
    seed: int
    device: torch.device
    batch_size: int
    shape: tuple[int, int]
    precision_mode: str

    def compute(self, models: tuple, method: str, word: str, out: Path) -> None:
        a, b, ae, gens = models
        prior = gens[method].model if method in gens else ae.model if ae else None
        result = maximize(
            a.model, torch.full((self.n,), self.targets[word], dtype=torch.long), method=method, decoder=prior,
            settings=preset(self.preset_name, method), seed=derive_seed(self.seed, method, word), evaluator=b.model,
            device=self.device, batch_size=self.batch_size, shape=self.shape, keep_waves=False, keep_features=False,
            precision_mode=self.precision_mode,
        )
        _save_class(out / method / f"{word}.npz", result)


def _load_for_worker(classifier: str, evaluator: str, decoder: str | None, gans: dict[str, str]) -> tuple:
    from .gan import load_generators

    a, b, ae = load_models(classifier, evaluator, decoder, torch.device("cpu"))
    return a, b, ae, load_generators(gans, a, torch.device("cpu"))


def _compute_in_worker(task: _ClassTask, method: str, word: str, out: Path) -> None:
    task.compute(workers.state(), method, word, out)


def _stats(method: str, word: str, target: int, arrays: dict[str, np.ndarray]) -> ClassStats:
    ok = ~arrays["failed"].astype(bool)
    pa, pb = arrays["prob_a_after"][ok], arrays["prob_b_after"][ok]
    return ClassStats(
        method=method,
        word=word,
        n=len(ok),
        failed=int((~ok).sum()),
        a_hits=int((pa.argmax(1) == target).sum()),
        b_hits=int((pb.argmax(1) == target).sum()),
        a_prob=float(pa[:, target].mean()) if len(pa) else float("nan"),
        b_prob=float(pb[:, target].mean()) if len(pb) else float("nan"),
        a_hits_before=int((arrays["prob_a_before"][ok].argmax(1) == target).sum()),
        b_hits_before=int((arrays["prob_b_before"][ok].argmax(1) == target).sum()),
    )


def _rate(hits: int, valid: int) -> float:
    return hits / valid if valid else float("nan")


def _write_heatmap(out: Path, method: str, words: list[str], classes: list[str], matrix: np.ndarray) -> None:
    from hearsay import fonts

    plt = fonts.pyplot(words, classes)  # Agg, with fonts for words in any installed script

    write_csv(out / f"heatmap_{method}.csv", ["target", *classes], [[w, *(f"{v:.6f}" for v in row)] for w, row in zip(words, matrix)])
    fig, ax = plt.subplots(figsize=(2.0 + 0.28 * len(classes), 1.5 + 0.28 * len(words)))
    im = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(words)), words, fontsize=7)
    ax.set_xlabel("classifier B: mean softmax over maximized samples")
    ax.set_ylabel("target word (classifier A)")
    ax.set_title(f"{method} method")
    fig.colorbar(im, ax=ax, fraction=0.04)
    save_figure(fig, out / f"heatmap_{method}")
    plt.close(fig)


def summary_rows(run: ObjectiveRun) -> list[list[object]]:
    """Per method: one row per word, then ALL (pooled over words), told apart by `pooled` (a class may be named "ALL")."""
    rows = []
    for method in run.methods:
        stats = [s for s in run.stats if s.method == method]
        pooled = ClassStats(method, "ALL", sum(s.n for s in stats), sum(s.failed for s in stats), sum(s.a_hits for s in stats),
                            sum(s.b_hits for s in stats), float(np.nanmean([s.a_prob for s in stats])), float(np.nanmean([s.b_prob for s in stats])),
                            sum(s.a_hits_before for s in stats), sum(s.b_hits_before for s in stats))
        for s in [*stats, pooled]:
            rows.append([s.method, s.word, "true" if s is pooled else "false", s.n, s.failed, f"{_rate(s.a_hits, s.valid):.4f}", f"{_rate(s.b_hits, s.valid):.4f}",
                         f"{s.a_prob:.4f}", f"{s.b_prob:.4f}", f"{_rate(s.a_hits_before, s.valid):.4f}", f"{_rate(s.b_hits_before, s.valid):.4f}"])
    return rows


SUMMARY_HEADER = ["method", "word", "pooled", "n", "failed", "a_picks_target", "b_picks_target", "a_mean_target_prob",
                  "b_mean_target_prob", "a_picks_target_before", "b_picks_target_before"]


def run_objective(
    classifier: str | Path,
    evaluator: str | Path,
    decoder: str | Path | None,
    out: str | Path,
    *,
    n: int = 10000,
    words: Sequence[str] | None = None,
    methods: Sequence[str] = METHODS,
    preset_name: str = "paper",
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    progress: bool = True,
    gans: dict[str, str | Path] | None = None,
    precision_mode: str = "fp32",
    jobs: int = 1,
) -> ObjectiveRun:
    """Run (or resume) the experiment into `out`; returns the per-class statistics and heatmaps.

    `batch_size` None takes `maximize.default_batch_size` (64 on a CPU, up to
    4,096 on a GPU); results agree across batch sizes to float rounding (1e-6). `precision_mode` (fp32, tf32,
    bf16; see `maximize.precision`) is part of the run's identity. `jobs` > 1 on a CPU maximizes
    the classes in that many worker processes of one thread each (`generation.workers`).
    """
    from tqdm import tqdm

    check_precision(precision_mode)
    workers.check_jobs(jobs)
    if not 1 <= n <= MAX_N:
        raise HearsayError(f"n must be between 1 and {MAX_N:,} noise starts per word and method, got {n}")
    if batch_size is not None and batch_size < 1:
        raise HearsayError(f"batch size must be at least 1, got {batch_size}")
    from .gan import load_generators

    methods = list(dict.fromkeys([*methods, *(gans or {})]))
    for m in methods:
        if m not in METHODS and m not in (gans or {}):
            raise HearsayError(f"unknown method {m!r}; choose from {', '.join(METHODS)} (GAN priors: gan, cgan, wave-gan)")
    if not methods:
        raise HearsayError("no method chosen; use classifier, decoder or both")
    if "decoder" in methods and decoder is None:
        raise HearsayError("the decoder method needs an autoencoder checkpoint")
    for m in methods:
        preset(preset_name, m)
    device = torch.device(device)
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    a, b, ae = load_models(classifier, evaluator, decoder if "decoder" in methods else None, device)
    gens = load_generators(gans or {}, a, device)
    words = list(dict.fromkeys(words)) if words else list(a.classes)
    targets = {w: a.class_index(w) for w in words}
    out = Path(out)
    config = _config(n, words, methods, preset_name, seed, a, b, ae, gens, precision_mode)
    folder = RunFolder(out, config, what="objective run", identity_key="config")
    folder.open()
    _write_run_json(folder, device, batch_size, {"status": "running"})

    started = time.perf_counter()
    stats: list[ClassStats] = []
    heatmaps: dict[str, np.ndarray] = {}
    units = [(m, w) for m in methods for w in words]
    found = {job: _load_class(out / job[0] / f"{job[1]}.npz", n, len(a.classes)) for job in units}
    todo = [job for job in units if found[job] is None]
    resumed = len(units) - len(todo)
    task = _ClassTask(n=n, targets=targets, preset_name=preset_name, seed=seed, device=device, batch_size=batch_size,
                      shape=a.feature_config.shape, precision_mode=precision_mode)
    bar = tqdm(total=len(units), initial=resumed, desc="objective", unit="class", disable=not progress)
    if jobs > 1 and device.type == "cpu" and len(todo) > 1:
        paths = (str(classifier), str(evaluator), str(decoder) if ae is not None else None, {m: str(p) for m, p in (gans or {}).items()})
        with workers.pool(min(jobs, len(todo)), _load_for_worker, paths) as pool:
            for (_, method, word, _), _ in workers.run(pool, _compute_in_worker, [(task, m, w, out) for m, w in todo]):
                bar.set_postfix_str(f"{method}/{word}")
                bar.update()
    else:
        for method, word in todo:
            bar.set_postfix_str(f"{method}/{word}")
            task.compute((a, b, ae, gens), method, word, out)
            bar.update()
    bar.close()
    computed = len(todo)
    rows: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    for method, word in units:
        arrays = found[(method, word)] if found[(method, word)] is not None else _load_class(out / method / f"{word}.npz", n, len(a.classes))
        stats.append(_stats(method, word, targets[word], arrays))
        ok = ~arrays["failed"].astype(bool)
        rows[method].append(arrays["prob_b_after"][ok].mean(axis=0) if ok.any() else np.full(len(a.classes), np.nan))
    seconds = time.perf_counter() - started

    for method in methods:
        heatmaps[method] = np.stack(rows[method])
        _write_heatmap(out, method, words, a.classes, heatmaps[method])
    run = ObjectiveRun(out, a.classes, words, methods, stats, heatmaps, seconds, computed, resumed)
    write_csv(out / "summary.csv", SUMMARY_HEADER, summary_rows(run))
    _write_run_json(folder, device, batch_size, {"status": "finished", "seconds_this_session": round(seconds, 2),
                                                      "classes_computed": computed, "classes_resumed": resumed})
    return run


def format_summary(run: ObjectiveRun) -> str:
    """The ALL rows as a short table, then per-word rates: what the paper printed."""
    lines = [f"{'method':<11}{'word':<14}{'n':>7}{'failed':>7}{'A→target':>10}{'B→target':>10}"]
    for r in summary_rows(run):
        word = "(all words)" if r[2] == "true" else r[1]
        lines.append(f"{r[0]:<11}{word:<14}{r[3]:>7}{r[4]:>7}{float(r[5]):>10.1%}{float(r[6]):>10.1%}")
    return "\n".join(lines)
