"""`manage.py veracity`: do LIME's explanations tell the truth? Targeted adversarial examples as ground truth (seed 003).

* LIME on audio: the interpretable features are segments of the log-mel input,
  either time segments (all bands) or time x frequency cells; a segment that is
  "off" takes the clip's mean value (the seed's ``--baseline mean``). Samples,
  distances and the weighted ridge fit follow the `lime` package's `LimeBase`
  (audioLIME's recipe, our code).
* Targeted attacks, all clips at once: on the log-mel input (``spec``) or on the
  waveform through the differentiable feature pipeline `features.LogMel`
  (``wave``); loss = ||δ||² + c * cross-entropy(target), Adam, δ clipped to
  [-ε, ε] after every step (L∞ bound; for waves ε is relative to the
  peak-normalized clip, and the SNR is reported). Success = the classifier's top
  class is the target.
* The veracity test (the seed's Tables 1 and 2): restore the k segments LIME
  ranks highest for the target to their clean content and count how often the
  label flips back, against the k segments where the perturbation is largest;
  and with k = the number of segments LIME weighs positively.
* Partial perturbations: a spectrogram attack confined to a few random time x
  frequency cells (bounded by the feature range only); does LIME's top-k find
  those cells?
* Horses: a visible pattern (a full-level stripe or square) drawn on clips that
  flips their label; does each attribution method point at it (the pattern
  holds the top-relevance bin, and its share of positive relevance)?
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from hearsay.errors import HearsayError
from ..features import LogMel
from ..vocoder import finish, write_wav
from .attribution import AttributionSettings, Explainer, lrp_unsupported
from .common import RunFolder, load_classifier, load_clips, load_npz, pick, plt, read_split, save_figure, save_npz, write_csv

ATTACKS = ("wave", "spec")
SEGMENTATIONS = ("time", "time_frequency")


def segment_map(shape: tuple[int, int], segmentation: str, n_time: int, n_freq: int) -> np.ndarray:
    """[frames, mels] segment index: `n_time` time segments (all bands), or `n_time` x `n_freq` cells."""
    frames, mels = shape
    t_id = np.arange(frames) * min(n_time, frames) // frames
    if segmentation == "time":
        return np.repeat(t_id[:, None], mels, axis=1)
    nf = min(n_freq, mels)
    f_id = np.arange(mels) * nf // mels
    return t_id[:, None] * nf + f_id[None, :]


def lime_weights(probabilities, features: torch.Tensor, target: int, segments: np.ndarray, samples: int, seed: int,
                 batch_size: int = 128) -> np.ndarray:
    """LIME weight of every segment for `target` on one clip [T, M] (segments off = the clip's mean)."""
    from lime.lime_base import LimeBase

    n_seg = int(segments.max()) + 1
    rng = np.random.default_rng(seed)
    z = rng.integers(0, 2, size=(samples, n_seg)).astype(np.float32)
    z[0] = 1.0  # the instance itself first, as LimeBase expects
    seg = torch.from_numpy(segments).long()
    baseline = features.mean()
    probs = []
    for lo in range(0, samples, batch_size):
        on = torch.from_numpy(z[lo : lo + batch_size])[:, seg]  # [b, T, M]
        probs.append(probabilities(features[None] * on + baseline * (1 - on)).cpu().numpy())
    labels = np.concatenate(probs)
    distances = 1.0 - z.sum(axis=1) / np.sqrt(n_seg * np.maximum(z.sum(axis=1), 1e-12))  # cosine distance to all-on
    kernel_width = 0.25

    def kernel(d):
        return np.sqrt(np.exp(-(d**2) / kernel_width**2))

    _, weights, _, _ = LimeBase(kernel, random_state=seed).explain_instance_with_data(z, labels, distances, target, n_seg, "none")
    out = np.zeros(n_seg)
    for k, w in weights:
        out[k] = w
    return out


@dataclass
class Attack:
    adversarial: torch.Tensor  # features the classifier sees [B, T, M]
    waves: torch.Tensor | None  # adversarial waves [B, S] (wave attack)
    success: torch.Tensor  # [B] bool
    snr_db: torch.Tensor  # [B] signal-to-perturbation ratio of the attacked representation


def attack(model, clean_features: torch.Tensor, clean_waves: torch.Tensor | None, targets: torch.Tensor, kind: str, cfg, *,
           epsilon: float, steps: int = 200, lr: float = 0.01, c: float = 10.0, region: torch.Tensor | None = None) -> Attack:
    """Targeted L∞-bounded attack on features (spec) or waves (wave), optionally confined to `region` [B, T, M] bins."""
    device = next(model.parameters()).device
    targets = targets.to(device)
    model.eval()
    if kind == "spec":
        base = clean_features.to(device)
    elif kind == "wave":
        if clean_waves is None:
            raise HearsayError("the wave attack needs the clips' waveforms")
        base = clean_waves.to(device)
        logmel = LogMel(cfg).to(device)
    else:
        raise HearsayError(f"unknown attack {kind!r}; choose from {', '.join(ATTACKS)}")
    delta = torch.zeros_like(base, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    confine = None if region is None else region.to(device).float()

    def inputs(d):
        if kind == "spec":
            d = d if confine is None else d * confine
            return (base + d).clamp(0.0, 1.0), d
        return logmel(base + d), d

    for _ in range(steps):
        feats, d = inputs(delta)
        loss = d.pow(2).flatten(1).sum(1) + c * torch.nn.functional.cross_entropy(model(feats), targets, reduction="none")
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        with torch.no_grad():
            delta.clamp_(-epsilon, epsilon)
    with torch.no_grad():
        feats, d = inputs(delta)
        success = model(feats).argmax(1) == targets
        signal = base.pow(2).flatten(1).sum(1)
        snr = 10 * torch.log10(signal.clamp_min(1e-12) / d.pow(2).flatten(1).sum(1).clamp_min(1e-12))
    return Attack(feats.detach().cpu(), (base + d).detach().cpu() if kind == "wave" else None, success.cpu(), snr.cpu())


def flips_back(probabilities, adversarial: torch.Tensor, clean: torch.Tensor, segments: np.ndarray, chosen: Sequence[int],
               target: int) -> bool:
    """Restore the chosen segments to their clean content: does the classifier leave the target?"""
    restored = adversarial.clone()
    where = torch.from_numpy(np.isin(segments, list(chosen)))
    restored[where] = clean[where]
    return int(probabilities(restored[None]).argmax(1)) != target


def perturbation_ranking(adversarial: torch.Tensor, clean: torch.Tensor, segments: np.ndarray) -> np.ndarray:
    """Segments by total absolute perturbation, largest first."""
    diff = (adversarial - clean).abs().numpy()
    totals = np.bincount(segments.ravel(), weights=diff.ravel(), minlength=int(segments.max()) + 1)
    return np.argsort(-totals, kind="stable")


@dataclass
class VeracityOptions:
    attack: str = "spec"
    n: int = 20
    split: str = "test"
    epsilon: float = 0.0  # 0: 0.1 for spec, 0.005 for wave
    steps: int = 200
    lr: float = 0.0  # 0: epsilon / 10
    c: float = 10.0
    segments_time: int = 10
    segments_freq: int = 8
    lime_samples: int = 500
    ks: tuple[int, ...] = (1, 3, 5)
    partial_segments: int = 3
    horse_methods: tuple[str, ...] = ("saliency", "integrated_gradients", "occlusion", "lime")
    seed: int = 0
    batch_size: int = 32

    def resolved(self) -> "VeracityOptions":
        if self.attack not in ATTACKS:
            raise HearsayError(f"unknown attack {self.attack!r}; choose from {', '.join(ATTACKS)}")
        if self.n < 1 or self.steps < 1 or self.lime_samples < 10 or not self.ks or min(self.ks) < 1 or self.segments_time < 2:
            raise HearsayError("n, steps, k >= 1, lime_samples >= 10, segments_time >= 2")
        if self.segments_freq < 1 or self.partial_segments < 0:
            raise HearsayError(f"segments_freq must be at least 1 and partial_segments at least 0, got {self.segments_freq} and "
                               f"{self.partial_segments}")
        if not (0 <= self.epsilon < math.inf and 0 <= self.lr < math.inf and 0 < self.c < math.inf):
            raise HearsayError("epsilon and lr must be >= 0 (0: default) and c > 0")
        eps = self.epsilon or (0.1 if self.attack == "spec" else 0.005)
        # a k or a method given twice is asked for once (a repeated k was counted twice: shares above 1)
        return VeracityOptions(**{**self.__dict__, "epsilon": eps, "lr": self.lr or eps / 10, "ks": tuple(dict.fromkeys(self.ks)),
                                  "horse_methods": tuple(dict.fromkeys(self.horse_methods))})

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass
class VeracitySummary:
    out: Path
    attack_success: float
    table: list[dict]
    horses: list[dict]
    seconds: float


def run_veracity(classifier, corpus, out, options: VeracityOptions, *, device: torch.device = torch.device("cpu"),
                 progress: bool = False) -> VeracitySummary:
    from tqdm import tqdm

    o = options.resolved()
    started = time.time()
    ckpt = load_classifier(classifier, device)
    if len(ckpt.classes) < 2:
        raise HearsayError("a targeted attack needs a classifier of at least two words")
    data, pool = read_split(corpus, ckpt, o.split)
    chosen = pick(pool, o.n, o.seed)
    if not chosen:
        raise HearsayError(f"the corpus at {data.root} has no {o.split} clips")
    cfg = ckpt.feature_config
    folder = RunFolder(out, "veracity", {**o.to_dict(), "classifier_sha256": ckpt.sha256, "corpus_fingerprint": data.fingerprint(),
                                         "clips": [u.relpath for u in chosen]})
    out = folder.out
    record = folder.open({"classifier": str(classifier), "corpus": str(data.root)}, device, {"arch": ckpt.arch})
    for sub in ("wav", "figures"):
        (out / sub).mkdir(exist_ok=True)
    clips = load_clips(ckpt, chosen, device)
    waves = clips.waves(cfg)
    explainer = Explainer(ckpt.model, AttributionSettings(lime_samples=o.lime_samples, seed=o.seed))
    probs = explainer.probabilities
    rng = np.random.default_rng(o.seed)
    n_classes = len(ckpt.classes)
    # A random target other than the predicted class, per clip.
    targets = torch.tensor([(int(p) + 1 + int(rng.integers(0, n_classes - 1))) % n_classes for p in clips.predicted])

    saved = load_npz(out / "attack.npz")
    if saved is None:
        full = _attack_batches(ckpt.model, clips, waves, targets, o, cfg, None)
        masks_partial, partial = _partial(ckpt.model, clips, waves, targets, o, cfg, rng)
        saved = {"adversarial": full.adversarial.numpy(), "success": full.success.numpy(), "snr_db": full.snr_db.numpy(),
                 "partial_adversarial": partial.adversarial.numpy(), "partial_success": partial.success.numpy(),
                 "partial_segments": masks_partial}
        if full.waves is not None:
            saved["waves"] = full.waves.numpy()
        save_npz(out / "attack.npz", **saved)
    adversarial = torch.from_numpy(saved["adversarial"])
    success = saved["success"].astype(bool)
    if "waves" in saved:
        for i in np.flatnonzero(success)[:3]:
            write_wav(out / "wav" / f"adversarial_{i:03d}.wav", finish(torch.from_numpy(saved["waves"][i])[None], cfg.sample_rate)[0].numpy(), cfg.sample_rate)

    rows, per_clip = [], []
    for segmentation in SEGMENTATIONS:
        segments = segment_map(cfg.shape, segmentation, o.segments_time, o.segments_freq)
        counts = {f"lime_top{k}": 0 for k in o.ks} | {f"largest_top{k}": 0 for k in o.ks}
        counts |= {"lime_positive": 0, "largest_positive": 0}
        done = 0
        for i in tqdm(np.flatnonzero(success), desc=f"veracity ({segmentation})", unit="clip", disable=not progress):
            t = int(targets[i])
            w = lime_weights(probs, adversarial[i], t, segments, o.lime_samples, o.seed + int(i))
            lime_rank = np.argsort(-w, kind="stable")
            big_rank = perturbation_ranking(adversarial[i], clips.features[i], segments)
            for k in o.ks:
                counts[f"lime_top{k}"] += flips_back(probs, adversarial[i], clips.features[i], segments, lime_rank[:k], t)
                counts[f"largest_top{k}"] += flips_back(probs, adversarial[i], clips.features[i], segments, big_rank[:k], t)
            positive = int((w > 0).sum())
            counts["lime_positive"] += positive > 0 and flips_back(probs, adversarial[i], clips.features[i], segments, lime_rank[:positive], t)
            counts["largest_positive"] += positive > 0 and flips_back(probs, adversarial[i], clips.features[i], segments, big_rank[:positive], t)
            per_clip.append({"segmentation": segmentation, "source_file": clips.utterances[i].relpath, "target": ckpt.classes[t],
                             "positive_segments": positive, "lime_top": ",".join(map(str, lime_rank[: max(o.ks)])),
                             "largest_top": ",".join(map(str, big_rank[: max(o.ks)]))})
            done += 1
        partial_found = _partial_found(probs, saved, targets, segments, segmentation, o)
        rows.append({"attack": o.attack, "segmentation": segmentation, "adversarial_clips": done,
                     **{k: round(v / done, 6) if done else "" for k, v in counts.items()}, **partial_found})
    cols = list(rows[0])
    write_csv(out / "veracity.csv", cols, [[r[c] for c in cols] for r in rows])
    if per_clip:
        write_csv(out / "per_clip.csv", list(per_clip[0]), [list(r.values()) for r in per_clip])
    attack_rows = [[clips.utterances[i].relpath, ckpt.classes[int(clips.predicted[i])], ckpt.classes[int(targets[i])],
                    bool(success[i]), round(float(saved["snr_db"][i]), 3)] for i in range(len(clips))]
    write_csv(out / "attacks.csv", ["source_file", "pred_a", "target", "success", "snr_db"], attack_rows)
    horses = run_horses(explainer, clips, ckpt, o, out)
    _figure(out / "figures" / "veracity", rows, o.ks)
    rate = float(success.mean())
    folder.finish(record, attack_success=rate, veracity=rows, horses=horses,
                  mean_snr_db=float(np.mean(saved["snr_db"][success])) if success.any() else None,
                  lrp=("supported" if not lrp_unsupported(ckpt.model) else "not supported"),
                  seconds_last_run=round(time.time() - started, 1))
    return VeracitySummary(out, rate, rows, horses, time.time() - started)


def _attack_batches(model, clips, waves, targets, o: VeracityOptions, cfg, region) -> Attack:
    parts = []
    for lo in range(0, len(clips), o.batch_size):
        hi = lo + o.batch_size
        parts.append(attack(model, clips.features[lo:hi], waves[lo:hi], targets[lo:hi], o.attack, cfg, epsilon=o.epsilon,
                            steps=o.steps, lr=o.lr, c=o.c, region=None if region is None else region[lo:hi]))
    return Attack(torch.cat([p.adversarial for p in parts]), None if parts[0].waves is None else torch.cat([p.waves for p in parts]),
                  torch.cat([p.success for p in parts]), torch.cat([p.snr_db for p in parts]))


def _partial(model, clips, waves, targets, o: VeracityOptions, cfg, rng) -> tuple[np.ndarray, Attack]:
    """The spectrogram attack confined to `partial_segments` random time x frequency cells per clip."""
    segments = segment_map(cfg.shape, "time_frequency", o.segments_time, o.segments_freq)
    n_seg = int(segments.max()) + 1
    picked = np.stack([rng.choice(n_seg, size=min(o.partial_segments, n_seg), replace=False) for _ in range(len(clips))])
    region = torch.from_numpy(np.stack([np.isin(segments, p) for p in picked]))
    # Confined to a few cells, the perturbation is bounded by the feature range only (as the seed's partial attacks).
    spec = VeracityOptions(**{**o.__dict__, "attack": "spec", "epsilon": 1.0})
    return picked, _attack_batches(model, clips, waves, targets, spec, cfg, region)


def _partial_found(probs, saved, targets, segments, segmentation, o: VeracityOptions) -> dict:
    """Share of the perturbed cells among LIME's top-k (time x frequency segmentation only)."""
    if segmentation != "time_frequency":
        return {"partial_adversarial_clips": "", "partial_lime_recall": ""}
    ok = np.flatnonzero(saved["partial_success"].astype(bool))
    if not len(ok):
        return {"partial_adversarial_clips": 0, "partial_lime_recall": ""}
    adv = torch.from_numpy(saved["partial_adversarial"])
    recalls = []
    for i in ok:
        true = set(saved["partial_segments"][i].tolist())
        w = lime_weights(probs, adv[i], int(targets[i]), segments, o.lime_samples, o.seed + 7919 + int(i))
        top = set(np.argsort(-w, kind="stable")[: len(true)].tolist())
        recalls.append(len(top & true) / len(true))
    return {"partial_adversarial_clips": int(len(ok)), "partial_lime_recall": round(float(np.mean(recalls)), 6)}


def horse_patterns(shape: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
    """Visible patterns to draw: horizontal stripes (2 bands, middle half of the clip) and squares."""
    frames, mels = shape
    out = []
    h = max(1, mels // 16)
    for f0 in range(0, mels - h + 1, h):
        m = np.zeros(shape, bool)
        m[frames // 4 : 3 * frames // 4, f0 : f0 + h] = True
        out.append((f"stripe mels {f0}-{f0 + h - 1}", m))
    side_t, side_f = max(2, frames // 6), max(2, mels // 6)
    for t0 in range(0, frames - side_t + 1, side_t):
        for f0 in range(0, mels - side_f + 1, side_f):
            m = np.zeros(shape, bool)
            m[t0 : t0 + side_t, f0 : f0 + side_f] = True
            out.append((f"square frames {t0}-{t0 + side_t - 1} mels {f0}-{f0 + side_f - 1}", m))
    return out


def find_horse(probabilities, features: torch.Tensor, label: int) -> tuple[str, np.ndarray, torch.Tensor, int] | None:
    """The first pattern that, drawn at full level (1.0), changes the clip's label: (name, mask, drawn clip, new label)."""
    patterns = horse_patterns(tuple(features.shape))
    masks = torch.from_numpy(np.stack([m for _, m in patterns]))
    drawn = torch.where(masks, torch.ones_like(features), features[None].expand_as(masks.float()))
    labels = probabilities(drawn).argmax(1).cpu()
    for k in range(len(patterns)):
        if int(labels[k]) != label:
            return patterns[k][0], patterns[k][1], drawn[k], int(labels[k])
    return None


def run_horses(explainer: Explainer, clips, ckpt, o: VeracityOptions, out: Path) -> list[dict]:
    """Per method: on clips flipped by a drawn pattern, does the explanation of the new label point at the pattern?"""
    found = []
    for i in range(len(clips)):
        hit = find_horse(explainer.probabilities, clips.features[i], int(clips.predicted[i]))
        if hit is not None:
            found.append((i, *hit))
    table = []
    if found:
        x = torch.stack([f[3] for f in found])
        t = torch.tensor([f[4] for f in found])
        masks = np.stack([f[2] for f in found])
        shown = {}
        for method in o.horse_methods:
            if method == "lrp" and lrp_unsupported(ckpt.model):
                continue
            rel = explainer.attribute(method, x, t).numpy()
            pos = np.clip(rel, 0, None)
            flat, inside = pos.reshape(len(pos), -1), masks.reshape(len(masks), -1)
            peak = flat.max(1, keepdims=True)
            # Cell-based methods (LIME, occlusion) tie over whole cells: any top bin on the pattern counts.
            pointing = ((flat == peak) & inside).any(1) & (peak[:, 0] > 0)
            share = (pos * masks).sum((1, 2)) / np.maximum(pos.sum((1, 2)), 1e-12)
            table.append({"method": method, "horses": len(found), "pointing_game": round(float(pointing.mean()), 6),
                          "relevance_share_on_pattern": round(float(share.mean()), 6),
                          "pattern_area_share": round(float(masks.mean()), 6)})
            shown[method] = rel[0]
        write_csv(out / "horses.csv", list(table[0]), [list(r.values()) for r in table])
        write_csv(out / "horse_clips.csv", ["source_file", "pattern", "pred_before", "pred_after"],
                  [[clips.utterances[i].relpath, name, ckpt.classes[int(clips.predicted[i])], ckpt.classes[lab]] for i, name, _, _, lab in found])
        _horse_figure(out / "figures" / "horse", found[0], clips, shown, ckpt.classes)
    return table


def _horse_figure(stem: Path, horse, clips, shown: dict, classes) -> None:
    pyplot = plt()
    i, name, mask, drawn, label = horse
    fig, axes = pyplot.subplots(1, 2 + len(shown), figsize=(2.3 * (2 + len(shown)), 2.6), squeeze=False)
    axes = axes[0]
    axes[0].imshow(clips.features[i].numpy().T, origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1)
    axes[0].set_title(f"{clips.utterances[i].relpath}\n-> {classes[int(clips.predicted[i])]}", fontsize=6)
    axes[1].imshow(drawn.numpy().T, origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1)
    axes[1].set_title(f"with {name}\n-> {classes[label]}", fontsize=6)
    for ax, (method, rel) in zip(axes[2:], shown.items()):
        lim = float(np.abs(rel).max()) or 1.0
        ax.imshow(rel.T, origin="lower", aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim)
        ax.contour(mask.T.astype(float), levels=[0.5], colors="black", linewidths=0.7, origin="lower")
        ax.set_title(method, fontsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, stem)
    pyplot.close(fig)


def _figure(stem: Path, rows: list[dict], ks) -> None:
    """The seed's flip-count comparison: LIME's top-k vs the k most perturbed segments."""
    pyplot = plt()
    fig, axes = pyplot.subplots(1, len(rows), figsize=(3.4 * len(rows), 3.0), squeeze=False)
    for ax, r in zip(axes[0], rows):
        x = np.arange(len(ks) + 1)
        labels = [f"top {k}" for k in ks] + ["positive"]
        lime = [r[f"lime_top{k}"] or 0 for k in ks] + [r["lime_positive"] or 0]
        big = [r[f"largest_top{k}"] or 0 for k in ks] + [r["largest_positive"] or 0]
        ax.bar(x - 0.2, lime, 0.4, label="LIME's segments")
        ax.bar(x + 0.2, big, 0.4, label="largest perturbation")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"{r['attack']} attack, {r['segmentation']} segments (n={r['adversarial_clips']})", fontsize=8)
        ax.set_ylabel("share of labels flipped back", fontsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, stem)
    pyplot.close(fig)
