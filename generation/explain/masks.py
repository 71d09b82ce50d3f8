"""`manage.py importance_masks`: the sparsest binary mask that keeps a clip's decision, and what it sounds like (seed 001).

For each clip X the mask M = sigmoid(w) is optimized (Adam, all clips at once) to
keep the classifier's top class on M * X (cross-entropy) while keeping as few
bins as possible (penalty `sparsity` * mean(M)); masked bins go to the -100 dB
floor. The mask is then binarized at 0.5 and checked; if the decision changed,
the threshold is lowered step by step (0.4, 0.3, ... 0: the whole clip) and the
first binary mask that keeps the decision is the result, so every reported mask
is verified after binarization.

Sound: the masked clip (vocoded), and the clip itself with the time windows
muted whose mean of the optimized (relaxed) mask falls below 0.1, 0.2, 0.3 (the
seed's muting figure), each
with a random control of equal size (the mask or the muted frames circularly
shifted), and the classifier's verdict on every muted clip.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hearsay.errors import HearsayError
from ..stimuli import stimulus_id
from ..vocoder import GriffinLimVocoder, Vocoder, finish, write_wav
from .common import RunFolder, render, write_gif, load_clips, load_classifier, load_npz, pick, plt, predict, read_split, save_figure, save_npz, write_csv
from .pipeline import pair_of, write_manifest, write_originals
from .regions import random_control

THRESHOLDS = (0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0)
MUTE_LEVELS = (0.1, 0.2, 0.3)


@dataclass(frozen=True)
class MaskSettings:
    steps: int = 300
    lr: float = 0.1
    sparsity: float = 2.0
    init: float = 3.0  # sigmoid(3) = 0.95: start from (almost) the whole clip
    snapshots: int = 30  # mask frames kept for the animation

    def validate(self) -> None:
        if self.steps < 1 or not 0 < self.lr < math.inf or not 0 <= self.sparsity < math.inf or self.snapshots < 1:
            raise HearsayError("mask settings: steps >= 1, lr > 0, sparsity >= 0")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class MaskResult:
    soft: torch.Tensor  # [B, T, M] final continuous mask
    binary: torch.Tensor  # [B, T, M] bool, verified
    threshold: torch.Tensor  # [B] threshold that gave `binary`
    keeps_decision: torch.Tensor  # [B] bool: the masked clip's top class is the clip's (always, since 0 keeps all)
    history: torch.Tensor  # [B, snapshots, T, M]


def optimize_masks(model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor, settings: MaskSettings) -> MaskResult:
    """Sparsest verified binary masks for a batch of clips [B, T, M] whose decision is `classes` [B]."""
    settings.validate()
    device = next(model.parameters()).device
    x, classes = x.to(device), classes.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    w = torch.full_like(x, settings.init, requires_grad=True)
    opt = torch.optim.Adam([w], lr=settings.lr)
    every = max(1, settings.steps // settings.snapshots)
    history = []
    for step in range(settings.steps):
        m = torch.sigmoid(w)
        loss = torch.nn.functional.cross_entropy(model(m * x), classes, reduction="sum") + settings.sparsity * m.flatten(1).mean(1).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0 and len(history) < settings.snapshots:
            history.append(torch.sigmoid(w).detach().cpu())
    soft = torch.sigmoid(w).detach()
    binary = torch.ones_like(x, dtype=torch.bool)
    chosen = torch.zeros(len(x), device=device)
    open_ = torch.ones(len(x), dtype=torch.bool, device=device)
    with torch.no_grad():
        for thr in THRESHOLDS:
            candidate = soft > thr if thr > 0 else torch.ones_like(binary)
            ok = (model(candidate.float() * x).argmax(1) == classes) & open_
            binary[ok] = candidate[ok]
            chosen[ok] = thr
            open_ &= ~ok
        keeps = model(binary.float() * x).argmax(1) == classes
    return MaskResult(soft.cpu(), binary.cpu(), chosen.cpu(), keeps.cpu(), torch.stack(history, dim=1) if history else soft[:, None].cpu())


def frame_samples(n_frames: int, hop: int, n_samples: int) -> np.ndarray:
    """The frame each sample belongs to (centered STFT: frame t is centred on sample t * hop)."""
    return np.minimum(np.round(np.arange(n_samples) / hop).astype(int), n_frames - 1)


def muted(wave: np.ndarray, frames_off: np.ndarray, hop: int) -> np.ndarray:
    """`wave` with the samples of the frames in `frames_off` (bool [T]) set to silence."""
    owner = frame_samples(len(frames_off), hop, len(wave))
    out = wave.copy()
    out[frames_off[owner]] = 0.0
    return out


@dataclass
class MasksSummary:
    out: Path
    clips: int
    mean_kept_share: float
    verified: int
    seconds: float


def run_importance_masks(classifier, corpus, out, *, n: int = 50, split: str = "test", settings: MaskSettings = MaskSettings(),
                         seed: int = 0, batch_size: int = 32, device: torch.device = torch.device("cpu"),
                         vocoder: Vocoder | None = None, animations: int = 3, progress: bool = False) -> MasksSummary:
    """Masks for `n` clips of `corpus` (words taking turns), with audio, figures, manifest and run.json; resumable per batch."""
    from tqdm import tqdm

    settings.validate()
    if n < 1 or batch_size < 1:
        raise HearsayError("n and batch_size must be at least 1")
    started = time.time()
    ckpt = load_classifier(classifier, device)
    data, pool = read_split(corpus, ckpt, split)
    chosen = pick(pool, n, seed)
    if not chosen:
        raise HearsayError(f"the corpus at {data.root} has no {split} clips")
    cfg = ckpt.feature_config
    vocoder = vocoder or GriffinLimVocoder(cfg, device=device)
    voc = vocoder.config() if hasattr(vocoder, "config") else {"vocoder": type(vocoder).__name__}
    folder = RunFolder(out, "importance_masks", {
        "n": n, "split": split, "settings": settings.to_dict(), "seed": seed, "classifier_sha256": ckpt.sha256,
        "corpus_fingerprint": data.fingerprint(), "clips": [u.relpath for u in chosen], "vocoder": voc, "batch_size": batch_size,
    })
    out = folder.out
    record = folder.open({"classifier": str(classifier), "corpus": str(data.root)}, device, {"arch": ckpt.arch})
    for sub in ("masks", "wav", "figures"):
        (out / sub).mkdir(exist_ok=True)
    clips = load_clips(ckpt, chosen, device)
    waves = clips.waves(cfg).numpy()
    avoid = list(ckpt.classes) + ["natural", "random", "region", "original", "mask", "muted"]
    rows = write_originals(out, clips, folder.key, avoid, ckpt, vocoder)
    per_clip = []
    rng = np.random.default_rng(seed)
    shown: list[np.ndarray] = []  # binary masks of the clips in the muting figure
    for lo in tqdm(range(0, len(clips), batch_size), desc="masks", unit="batch", disable=not progress):
        hi = min(lo + batch_size, len(clips))
        path = out / "masks" / f"batch_{lo:06d}.npz"
        saved = load_npz(path)
        if saved is None:
            res = optimize_masks(ckpt.model, clips.features[lo:hi], clips.predicted[lo:hi], settings)
            saved = {"soft": res.soft.numpy(), "binary": res.binary.numpy(), "threshold": res.threshold.numpy(),
                     "keeps": res.keeps_decision.numpy(), "history": res.history[: min(animations, hi - lo)].numpy()}
            save_npz(path, **saved)
        for j in range(hi - lo):
            i = lo + j
            r, pc = _sound_clip(out, i, clips, waves, saved["binary"][j], saved["soft"][j], ckpt, cfg, vocoder, folder.key, avoid, rng, device)
            rows += r
            per_clip.append({**pc, "threshold": float(saved["threshold"][j]), "verified": bool(saved["keeps"][j])})
            if len(shown) < 3:
                shown.append(saved["soft"][j])
            if i < animations:
                _animate(out / "figures" / f"mask_{i:03d}.gif", saved["history"][j], clips.features[i].numpy(), clips.utterances[i].relpath)
    write_manifest(out / "manifest.csv", rows)
    cols = list(per_clip[0])
    write_csv(out / "masks.csv", cols, [[r[c] for c in cols] for r in per_clip])
    _waveform_figure(out / "figures" / "muting", clips, waves, shown, per_clip, cfg)
    share = float(np.mean([r["kept_share"] for r in per_clip]))
    verified = sum(r["verified"] for r in per_clip)
    folder.finish(record, clips=len(clips), mean_kept_share=share, verified=verified, seconds_last_run=round(time.time() - started, 1))
    return MasksSummary(out, len(clips), share, verified, time.time() - started)


def _sound_clip(out, i, clips, waves, mask: np.ndarray, soft: np.ndarray, ckpt, cfg, vocoder, key, avoid, rng, device):
    """Masked and muted audio of one clip plus equal-size random controls; returns manifest rows and a CSV row."""
    u = clips.utterances[i]
    control = random_control(mask, rng)
    feats = clips.features[i]
    waves_out = vocoder(torch.stack([feats * torch.from_numpy(mask), feats * torch.from_numpy(control)]))
    items = [("masked", "region", waves_out[0], vocoder.sample_rate, int(mask.sum())),
             ("masked", "random", waves_out[1], vocoder.sample_rate, int(control.sum()))]
    frame_mean = soft.mean(axis=1)  # the seed muted by the optimized (relaxed) mask's mean per time window
    verdicts = {}
    muted_feats = []
    for level in MUTE_LEVELS:
        off = frame_mean < level
        shift = int(rng.integers(1, len(off))) if 0 < off.sum() < len(off) else 0
        for control_name, frames_off in (("region", off), ("random", np.roll(off, shift))):
            wave = muted(waves[i], frames_off, cfg.hop_length)
            items.append((f"muted-{level:g}", control_name, finish(torch.from_numpy(wave)[None], cfg.sample_rate)[0].numpy(),
                          cfg.sample_rate, int(frames_off.sum())))
            if control_name == "region":
                muted_feats.append(wave)
    # The classifier's verdict on the muted audio itself (features recomputed from the waveform, as the seed re-ran inference).
    from ..features import LogMel

    with torch.no_grad():
        feats_muted = LogMel(cfg).to(device)(torch.from_numpy(np.stack(muted_feats)).to(device))
    probs = predict(ckpt.model, feats_muted, device)
    for level, p in zip(MUTE_LEVELS, probs):
        verdicts[f"pred_muted_{level:g}"] = ckpt.classes[int(p.argmax())]
    rows = []
    silent = {strategy for strategy, control_name, wave, _, _ in items if control_name == "region" and not np.abs(wave).max() > 0}
    for strategy, control_name, wave, rate, size in items:
        if strategy in silent:  # an empty mask, or every window muted: nothing to listen to, nor its control
            continue
        sid = stimulus_id(key, u.relpath, "importance_mask", strategy, control_name, avoid=avoid)
        write_wav(out / "wav" / f"{sid}.wav", wave, rate)
        rows.append({
            "stimulus_id": sid, "file": f"wav/{sid}.wav", "word": u.word, "method": "importance_mask", "init": "test", "stage": "after",
            "pair_id": pair_of(key, u.relpath, avoid), "condition": f"importance_mask-{strategy}-{control_name}", "control": control_name,
            "strategy": strategy, "source_file": u.relpath, "speaker": u.speaker, "target_word": ckpt.classes[int(clips.predicted[i])],
            "pred_a": ckpt.classes[int(clips.predicted[i])], "prob_a": round(float(clips.probs[i].max()), 6),
            "region_area": size, "n_regions": "", "drop": "", "classifier_sha256": ckpt.sha256,
        })
    csv_row = {"source_file": u.relpath, "word": u.word, "pred_a": ckpt.classes[int(clips.predicted[i])],
               "kept_share": round(float(mask.mean()), 6), **verdicts,
               **{f"muted_share_{lvl:g}": round(float((frame_mean < lvl).mean()), 6) for lvl in MUTE_LEVELS}}
    return rows, csv_row


def _animate(path: Path, history: np.ndarray, feats: np.ndarray, title: str) -> None:
    """GIF of the mask (top) and the masked input (bottom) over the optimization steps."""
    pyplot = plt()
    fig, (a, b) = pyplot.subplots(2, 1, figsize=(4, 4.4))
    im_a = a.imshow(history[0].T, origin="lower", aspect="auto", cmap="gray", vmin=0, vmax=1)
    im_b = b.imshow((history[0] * feats).T, origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1)
    a.set_title(f"importance mask: {title}", fontsize=8)
    b.set_title("mask x input", fontsize=8)
    frames = []
    for k in range(len(history)):
        im_a.set_data(history[k].T)
        im_b.set_data((history[k] * feats).T)
        frames.append(render(fig))
    pyplot.close(fig)
    write_gif(path, frames)


def _waveform_figure(stem: Path, clips, waves, masks: list[np.ndarray], per_clip, cfg) -> None:
    """The seed's muting figure: each clip, then the clip with low-mask windows muted at each level (`masks`: relaxed)."""
    pyplot = plt()
    count = len(masks)
    fig, axes = pyplot.subplots(len(MUTE_LEVELS) + 1, count, figsize=(3.2 * count, 1.3 * (len(MUTE_LEVELS) + 1)),
                                 squeeze=False, sharey="col")
    for col, mask in enumerate(masks):
        axes[0][col].plot(waves[col], linewidth=0.4)
        axes[0][col].set_title(f"{clips.utterances[col].relpath}: no mask", fontsize=7)
        for row, level in enumerate(MUTE_LEVELS, start=1):
            off = mask.mean(axis=1) < level
            axes[row][col].plot(muted(waves[col], off, cfg.hop_length), linewidth=0.4)
            axes[row][col].set_title(f"mask mean < {level:g} muted -> {per_clip[col][f'pred_muted_{level:g}']}", fontsize=7)
        for row in range(len(MUTE_LEVELS) + 1):
            axes[row][col].set_xticks([])
            axes[row][col].tick_params(labelsize=6)
    fig.tight_layout()
    save_figure(fig, stem)
    pyplot.close(fig)
