"""`manage.py explain`: attributions -> regions -> audio people can hear, and how faithful the regions are (seed 002).

For each method: relevance maps of the chosen clips (and of validation clips
for the region grid search), the best region settings on validation clips,
rectangular regions per clip, the target-probability drop when the regions
are removed against `runs` random selections of equal area, audio of the
regions and of one random control per clip by each strategy, figures, and
manifest rows. The manifest follows the stimulus contract (`init` test,
`stage` after for explanation audio and its control, `stage` original for the
natural clip) with extra columns `control` (region | random), `strategy` and
`condition`, so `load_stimuli` takes it unchanged and `analyze` can compare
explanation audio with its random control.

Output: attributions/<method>.npz, tuning/<method>.csv, regions/<method>.csv,
methods/<method>.json (the finished method: resumes skip it), wav/<id>.wav,
figures/*.png|pdf, faithfulness.csv, per_clip.csv, manifest.csv, run.json.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from hearsay import manifest
from hearsay.errors import HearsayError
from ..stimuli import stimulus_id
from ..vocoder import GriffinLimVocoder, Vocoder, finish, write_wav
from . import regions as R
from . import sonify
from .attribution import AttributionSettings, Explainer, lrp_unsupported, relevance_batches
from .common import Clips, RunFolder, load_classifier, load_clips, load_npz, pick, plt, read_split, save_figure, save_npz, write_csv, write_json

TARGETS = ("predicted", "true")
MAX_RANDOM_RUNS = 1000  # random controls per clip; each run holds a mask per region and clip in memory (default 5)
FAITHFULNESS_COLUMNS = [
    "method", "clips", "clips_with_regions", "percentile", "min_cluster_size", "min_samples", "mean_area_share",
    "mean_prob", "mean_drop_regions", "mean_drop_random", "mean_gap", "share_regions_beat_random", "wilcoxon_p",
]

PER_CLIP_COLUMNS = [
    "method", "source_file", "word", "target_word", "pred_a", "prob", "n_regions", "area", "drop_regions", "drop_random_mean",
]


@dataclass
class ExplainOptions:
    methods: Sequence[str]
    n: int = 50
    split: str = "test"
    tune_n: int = 20
    target: str = "predicted"
    strategies: Sequence[str] = sonify.STRATEGIES
    percentiles: Sequence[float] = R.PERCENTILES
    min_cluster_sizes: Sequence[int] = R.MIN_CLUSTER_SIZES
    min_samples: Sequence[int] = R.MIN_SAMPLES
    runs: int = R.RANDOM_RUNS
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    seed: int = 0
    batch_size: int = 32
    examples: int = 6

    def __post_init__(self) -> None:
        # a value given twice (`--audio identification,identification`) is asked for once: twice would write every clip's
        # audio under one stimulus id twice, a manifest load_stimuli refuses
        for name in ("methods", "strategies", "percentiles", "min_cluster_sizes", "min_samples"):
            setattr(self, name, list(dict.fromkeys(getattr(self, name))))

    def validate(self) -> None:
        if self.n < 1:
            raise HearsayError(f"n must be at least 1, got {self.n}")
        if self.tune_n < 0:
            raise HearsayError(f"tune_n must be >= 0, got {self.tune_n}")
        if self.target not in TARGETS:
            raise HearsayError(f"unknown target {self.target!r}; choose from {', '.join(TARGETS)}")
        bad = [s for s in self.strategies if s not in sonify.STRATEGIES]
        if bad or not self.strategies:
            raise HearsayError(f"unknown audio strategy {bad[0] if bad else ''!r}; choose from {', '.join(sonify.STRATEGIES)}")
        if not 1 <= self.runs <= MAX_RANDOM_RUNS:
            raise HearsayError(f"random_runs must be between 1 and {MAX_RANDOM_RUNS}, got {self.runs}")
        if self.batch_size < 1:
            raise HearsayError(f"batch_size must be at least 1, got {self.batch_size}")
        R.grid(self.percentiles, self.min_cluster_sizes, self.min_samples)

    def identity(self) -> dict:
        return {
            "methods": list(self.methods), "n": self.n, "split": self.split, "tune_n": self.tune_n, "target": self.target,
            "strategies": list(self.strategies), "percentiles": list(self.percentiles),
            "min_cluster_sizes": list(self.min_cluster_sizes), "min_samples": list(self.min_samples), "runs": self.runs,
            "attribution": self.attribution.to_dict(), "seed": self.seed,
        }


@dataclass
class ExplainSummary:
    out: Path
    table: list[dict]
    skipped: dict[str, str]
    computed: list[str]
    resumed: list[str]
    clips: int
    seconds: float


def run_explain(classifier: str | Path, corpus: str | Path, out: str | Path, options: ExplainOptions, *,
                device: torch.device = torch.device("cpu"), vocoder: Vocoder | None = None, progress: bool = False) -> ExplainSummary:
    """Explain `options.n` clips of `corpus` with every method; resumes a previous run with the same settings."""
    from tqdm import tqdm

    options.validate()
    started = time.time()
    ckpt = load_classifier(classifier, device)
    data, pool = read_split(corpus, ckpt, options.split)
    chosen = pick(pool, options.n, options.seed)
    if not chosen:
        raise HearsayError(f"the corpus at {data.root} has no {options.split} clips")
    tune_pool = data.split("validation")
    tune_utts = pick(tune_pool, options.tune_n, options.seed + 1) if options.tune_n else []
    if options.tune_n and not tune_utts:
        raise HearsayError(f"the corpus at {data.root} has no validation clips for the region search; set tune_n to 0 to use the first value of each search list")
    cfg = ckpt.feature_config
    vocoder = vocoder or GriffinLimVocoder(cfg, device=device)
    voc_config = vocoder.config() if hasattr(vocoder, "config") else {"vocoder": type(vocoder).__name__, "sample_rate": vocoder.sample_rate}
    identity = {
        **options.identity(), "classifier_sha256": ckpt.sha256, "corpus_fingerprint": data.fingerprint(),
        "clips": [u.relpath for u in chosen], "tune_clips": [u.relpath for u in tune_utts], "vocoder": voc_config,
        "feature_config": cfg.to_dict(),
    }
    folder = RunFolder(out, "explain", identity)
    out = folder.out
    lrp_missing = lrp_unsupported(ckpt.model)
    record = folder.open({"classifier": str(classifier), "corpus": str(data.root)}, device, {
        "arch": ckpt.arch, "batch_size": options.batch_size,
        "lrp": "supported" if not lrp_missing else f"not supported: no rule for {', '.join(lrp_missing)}",
    })
    for sub in ("attributions", "tuning", "regions", "methods", "wav", "figures"):
        (out / sub).mkdir(exist_ok=True)

    clips = load_clips(ckpt, chosen, device)
    tune = load_clips(ckpt, tune_utts, device) if tune_utts else None
    waves = clips.waves(cfg)
    targets = clips.predicted if options.target == "predicted" else clips.labels
    explainer = Explainer(ckpt.model, options.attribution)
    avoid = list(ckpt.classes) + list(options.methods) + ["natural", "random", "region", "original", "identification", "reconstruction"]
    originals = write_originals(out, clips, folder.key, avoid, ckpt, vocoder)

    table, skipped, computed, resumed, all_rows, per_clip = [], {}, [], [], list(originals), []
    for method in tqdm(options.methods, desc="explain", unit="method", disable=not progress):
        if method == "lrp" and lrp_missing:
            skipped[method] = f"no LRP rule for {', '.join(lrp_missing)} ({ckpt.arch} architecture)"
            continue
        done = out / "methods" / f"{method}.json"
        finished = _finished(done, out)
        if finished is None:
            finished = _explain_method(method, out, explainer, clips, tune, waves, targets, options, ckpt, vocoder, folder.key, avoid, progress)
            write_json(done, finished)
            computed.append(method)
        else:
            resumed.append(method)
        table.append(finished["summary"])
        all_rows += finished["rows"]
        per_clip += finished["per_clip"]

    write_manifest(out / "manifest.csv", all_rows)
    write_csv(out / "faithfulness.csv", FAITHFULNESS_COLUMNS, [[r[c] for c in FAITHFULNESS_COLUMNS] for r in table])
    if per_clip:  # fixed columns: a resumed method's rows come back from JSON with their keys sorted
        write_csv(out / "per_clip.csv", PER_CLIP_COLUMNS, [[r[c] for c in PER_CLIP_COLUMNS] for r in per_clip])
    if table:
        _faithfulness_figure(out / "figures" / "faithfulness", table)
    folder.finish(record, skipped=skipped, faithfulness=table, clips=len(clips), stimuli=sum(bool(r["file"]) for r in all_rows),
                  seconds_last_run=round(time.time() - started, 1))
    return ExplainSummary(out, table, skipped, computed, resumed, len(clips), time.time() - started)


def _finished(path: Path, out: Path) -> dict | None:
    """A finished method whose audio is all still there; anything else is redone."""
    import json

    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data["rows"]
        _ = data["summary"], data["per_clip"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all((out / r["file"]).is_file() for r in rows if r["file"]):
        return None
    return data


def write_originals(out: Path, clips: Clips, key: str, avoid, ckpt, vocoder) -> list[dict]:
    """The natural clips, loudness-matched like every stimulus: what listeners hear as the reference."""
    from ..features import read_wave

    rows = []
    target_rms = getattr(vocoder, "target_rms_db", -23.0)
    fade = getattr(vocoder, "fade_ms", 10.0)
    for i, u in enumerate(clips.utterances):
        sid = stimulus_id(key, u.relpath, "original", avoid=avoid)
        path = out / "wav" / f"{sid}.wav"
        if not path.is_file():
            wave, rate = read_wave(u.path)
            write_wav(path, finish(torch.from_numpy(wave)[None], rate, target_rms, fade)[0].numpy(), rate)
        rows.append({
            "stimulus_id": sid, "file": f"wav/{sid}.wav", "word": u.word, "method": "natural", "init": "none", "stage": "original",
            "pair_id": pair_of(key, u.relpath, avoid), "condition": "original", "control": "", "strategy": "", "source_file": u.relpath,
            "speaker": u.speaker, "target_word": "", "pred_a": ckpt.classes[int(clips.predicted[i])],
            "prob_a": round(float(clips.probs[i, clips.labels[i]]), 6), "region_area": "", "n_regions": "", "drop": "",
            "classifier_sha256": ckpt.sha256,
        })
    return rows


def pair_of(key: str, relpath: str, avoid) -> str:
    """One pair id per source clip: its natural version, every method's regions and their random controls."""
    return stimulus_id(key, relpath, "pair", avoid=avoid)


def _relevance(explainer, method, clips, targets, batch_size, path: Path, tune: Clips | None, tune_targets):
    """Attributions of the explained and the tuning clips, saved once so a resumed run does not redo them."""
    saved = load_npz(path)
    if saved is not None and saved["test"].shape == tuple(clips.features.shape) and (
        tune is None or saved["tune"].shape == tuple(tune.features.shape)
    ):
        return saved["test"], (saved["tune"] if tune is not None else None)
    test = relevance_batches(explainer, method, clips.features, targets, batch_size)
    tuned = relevance_batches(explainer, method, tune.features, tune_targets, batch_size) if tune is not None else np.zeros((0, 1, 1), np.float32)
    save_npz(path, test=test, tune=tuned)
    return test, (tuned if tune is not None else None)


def _explain_method(method, out: Path, explainer: Explainer, clips: Clips, tune: Clips | None, waves, targets, options: ExplainOptions,
                    ckpt, vocoder, key: str, avoid, progress: bool) -> dict:
    cfg = ckpt.feature_config
    tune_targets = None if tune is None else (tune.predicted if options.target == "predicted" else tune.labels)
    t0 = time.perf_counter()
    relevance, tune_relevance = _relevance(explainer, method, clips, targets, options.batch_size,
                                           out / "attributions" / f"{method}.npz", tune, tune_targets)
    attribution_seconds = time.perf_counter() - t0
    combos = R.grid(options.percentiles, options.min_cluster_sizes, options.min_samples)
    if tune is not None:
        tuning = R.tune(explainer.probabilities, tune.features, tune_targets, tune_relevance, combos, options.seed, options.runs, progress)
        params = tuning.best
        cols = list(tuning.table[0])
        write_csv(out / "tuning" / f"{method}.csv", cols, [[r[c] for c in cols] for r in tuning.table])
    else:
        params = combos[0]
    rects, masks, controls = R.regions_and_controls(relevance, params, options.seed, options.runs)
    faith = R.faithfulness(explainer.probabilities, clips.features, targets, masks, controls)

    region_rows = []
    sec_per_frame = cfg.hop_length / cfg.sample_rate
    edges = _mel_edges_hz(cfg)
    for i, rs in enumerate(rects):
        for k, r in enumerate(rs):
            region_rows.append([clips.utterances[i].relpath, k, r.t0, r.t1, r.f0, r.f1, round(r.t0 * sec_per_frame, 4),
                                round(r.t1 * sec_per_frame, 4), round(edges[r.f0][0], 1), round(edges[r.f1 - 1][1], 1), r.area])
    write_csv(out / "regions" / f"{method}.csv",
              ["source_file", "region", "frame_start", "frame_end", "mel_start", "mel_end", "seconds_start", "seconds_end", "hz_low", "hz_high", "bins"],
              region_rows)

    rows, per_clip = [], []
    has = faith.area > 0
    for strategy in options.strategies:
        idx = np.flatnonzero(has)
        if not len(idx):
            continue
        sel = torch.from_numpy(idx)
        region_m, control_m = torch.from_numpy(masks[idx]), torch.from_numpy(controls[idx, 0])
        if strategy == "identification":
            region_w, control_w = (sonify.identification(vocoder, clips.features[sel], m) for m in (region_m, control_m))
            rate = vocoder.sample_rate
        else:
            region_w, control_w = (sonify.reconstruction(waves[sel], m, cfg) for m in (region_m, control_m))
            rate = cfg.sample_rate
        for j, i in enumerate(idx):
            u = clips.utterances[i]
            for control, wave, drop in (("region", region_w[j], faith.drop_regions[i]), ("random", control_w[j], faith.drop_random[i, 0])):
                sid = stimulus_id(key, u.relpath, method, strategy, control, avoid=avoid)
                write_wav(out / "wav" / f"{sid}.wav", wave, rate)
                rows.append({
                    "stimulus_id": sid, "file": f"wav/{sid}.wav", "word": u.word, "method": method, "init": "test", "stage": "after",
                    "pair_id": pair_of(key, u.relpath, avoid), "condition": f"explain-{method}-{strategy}-{control}", "control": control,
                    "strategy": strategy, "source_file": u.relpath, "speaker": u.speaker, "target_word": ckpt.classes[int(targets[i])],
                    "pred_a": ckpt.classes[int(clips.predicted[i])], "prob_a": round(float(faith.prob[i]), 6),
                    "region_area": int(faith.area[i]), "n_regions": len(rects[i]), "drop": round(float(drop), 6),
                    "classifier_sha256": ckpt.sha256,
                })
    for i, u in enumerate(clips.utterances):
        per_clip.append({
            "method": method, "source_file": u.relpath, "word": u.word, "target_word": ckpt.classes[int(targets[i])],
            "pred_a": ckpt.classes[int(clips.predicted[i])], "prob": round(float(faith.prob[i]), 6), "n_regions": len(rects[i]),
            "area": int(faith.area[i]), "drop_regions": round(float(faith.drop_regions[i]), 6),
            "drop_random_mean": round(float(faith.drop_random[i].mean()), 6),
        })
    _method_figures(out / "figures", method, clips, relevance, masks, controls, ckpt.classes, targets, options.examples)
    summary = _summary(method, faith, params, clips.features.shape[1] * clips.features.shape[2])
    summary["attribution_seconds"] = round(attribution_seconds, 3)
    return {"summary": summary, "rows": rows, "per_clip": per_clip, "params": params.to_dict()}


def _summary(method: str, f: R.Faithfulness, params: R.RegionParams, bins: int) -> dict:
    from scipy.stats import wilcoxon

    random_mean = f.drop_random.mean(axis=1)
    gap = f.drop_regions - random_mean
    has = f.area > 0
    p = float("nan")
    if has.sum() >= 2 and np.any(gap[has] != 0):
        p = float(wilcoxon(f.drop_regions[has], random_mean[has]).pvalue)
    return {
        "method": method, "clips": int(len(f.prob)), "clips_with_regions": int(has.sum()), **params.to_dict(),
        "mean_area_share": round(float(f.area.mean() / bins), 6), "mean_prob": round(float(f.prob.mean()), 6),
        "mean_drop_regions": round(float(f.drop_regions.mean()), 6), "mean_drop_random": round(float(random_mean.mean()), 6),
        "mean_gap": round(float(gap.mean()), 6),
        "share_regions_beat_random": round(float((gap[has] > 0).mean()), 6) if has.any() else 0.0,
        "wilcoxon_p": round(p, 6) if np.isfinite(p) else "",
    }


def _mel_edges_hz(cfg) -> list[tuple[float, float]]:
    """Lowest and highest frequency each mel band's filter reaches."""
    support = sonify.mel_band_edges(cfg).numpy()
    hz = np.linspace(0, cfg.sample_rate / 2, support.shape[0])
    return [(float(hz[col].min()), float(hz[col].max())) if col.any() else (0.0, 0.0) for col in support.T]


def write_manifest(path: Path, rows: list[dict]) -> None:
    """The run's clips in the manifest contract (rows without audio, e.g. clips with no region, are left out)."""
    manifest.write_manifest(path, [r for r in rows if r["file"]])


def _overlay(ax, mask: np.ndarray, color: str) -> None:
    if mask.any():
        ax.contour(mask.T.astype(float), levels=[0.5], colors=color, linewidths=0.8, origin="lower")


def _method_figures(folder: Path, method, clips: Clips, relevance, masks, controls, classes, targets, examples: int) -> None:
    """Relevance heatmaps with their regions (white) and one random control (red); the same for mispredictions."""
    pyplot = plt()
    groups = {"regions": list(range(min(examples, len(clips))))}
    wrong = [i for i in range(len(clips)) if int(clips.predicted[i]) != int(clips.labels[i])][:examples]
    if wrong:
        groups["mispredictions"] = wrong
    for name, idx in groups.items():
        fig, axes = pyplot.subplots(2, len(idx), figsize=(2.2 * len(idx) + 0.5, 4.6), squeeze=False)
        for col, i in enumerate(idx):
            u = clips.utterances[i]
            top, bottom = axes[0][col], axes[1][col]
            top.imshow(clips.features[i].numpy().T, origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1)
            _overlay(top, masks[i], "white")
            top.set_title(f"{u.word} -> {classes[int(clips.predicted[i])]}", fontsize=8)
            lim = float(np.abs(relevance[i]).max()) or 1.0
            bottom.imshow(relevance[i].T, origin="lower", aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim)
            _overlay(bottom, masks[i], "black")
            _overlay(bottom, controls[i, 0], "red")
            bottom.set_title(f"{method} for '{classes[int(targets[i])]}'", fontsize=7)
            for ax in (top, bottom):
                ax.tick_params(labelsize=6)
        axes[0][0].set_ylabel("mel band", fontsize=7)
        axes[1][0].set_ylabel("mel band", fontsize=7)
        fig.supxlabel("frame", fontsize=8)
        fig.tight_layout()
        save_figure(fig, folder / f"{method}_{name}")
        pyplot.close(fig)


def _faithfulness_figure(stem: Path, table: list[dict]) -> None:
    pyplot = plt()
    names = [r["method"] for r in table]
    x = np.arange(len(names))
    fig, ax = pyplot.subplots(figsize=(1.0 + 0.9 * len(names), 3.4))
    ax.bar(x - 0.2, [r["mean_drop_regions"] for r in table], 0.4, label="regions removed")
    ax.bar(x + 0.2, [r["mean_drop_random"] for r in table], 0.4, label="random, same area")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("drop in target probability")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, stem)
    pyplot.close(fig)
