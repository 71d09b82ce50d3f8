"""Features back to audio, so listeners hear what the network saw.

The paper used a WaveNet trained on LJSpeech, which cannot be rebuilt offline.
The built-in `GriffinLimVocoder` needs no training: mel magnitudes are mapped
back to a linear spectrogram by non-negative least squares against the same
filterbank the features use, and Griffin-Lim finds a phase. Anything with the
`Vocoder` call signature (a neural vocoder, say) can replace it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import soundfile as sf
import torch
import torchaudio

from hearsay import atomic
from hearsay.errors import HearsayError
from .features import PAPER, FeatureConfig, unit_to_amp


@runtime_checkable
class Vocoder(Protocol):
    sample_rate: int

    def __call__(self, features: torch.Tensor) -> np.ndarray:
        """[B, n_frames, n_mels] in [0, 1] -> float32 waves [B, samples], loudness-normalized and faded."""
        ...


class GriffinLimVocoder:
    """Inverse mel by NNLS, then Griffin-Lim (power 1: the features are magnitude mels).

    Phase starts at zero rather than at random, so the same features always give
    the same audio, alone or in any batch.
    """

    def __init__(
        self,
        cfg: FeatureConfig = PAPER,
        n_iter: int = 60,
        device: str | torch.device = "cpu",
        target_rms_db: float = -23.0,
        fade_ms: float = 10.0,
        momentum: float = 0.99,
        nnls_iter: int = 30,
        batch_size: int = 64,
    ):
        if n_iter < 1 or nnls_iter < 0 or batch_size < 1:
            raise HearsayError("vocoder iterations and batch size must be positive")
        self.cfg = cfg
        self.sample_rate = cfg.sample_rate
        self.n_iter = n_iter
        self.momentum = momentum
        self.nnls_iter = nnls_iter
        self.batch_size = batch_size
        self.target_rms_db = target_rms_db
        self.fade_ms = fade_ms
        self.device = torch.device(device)
        fb = torchaudio.functional.melscale_fbanks(
            cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate, norm="slaney", mel_scale="slaney"
        )
        self.fb = fb.to(self.device)  # [freq, mels]: mel = spec @ fb
        self.fb_pinv = torch.linalg.pinv(fb).to(self.device)  # [mels, freq]
        self.gram = (fb @ fb.T).to(self.device)  # [freq, freq]
        self.window = torch.hann_window(cfg.win_length, periodic=True, device=self.device)

    def config(self) -> dict:
        """What produced the audio, for run records."""
        return {
            "vocoder": "griffin-lim",
            "sample_rate": self.sample_rate,
            "n_iter": self.n_iter,
            "momentum": self.momentum,
            "nnls_iter": self.nnls_iter,
            "target_rms_db": self.target_rms_db,
            "fade_ms": self.fade_ms,
            "phase_init": "zero",
        }

    def linear_spectrogram(self, features: torch.Tensor) -> torch.Tensor:
        """[B, T, M] features -> [B, freq, T] non-negative magnitudes whose mel projection fits the features."""
        features = features.to(self.device, torch.float32)
        # 0 means "at or below the floor": make it true silence, or loudness normalization would amplify the floor.
        mel = unit_to_amp(features, self.cfg) * (features > 0)  # [B, T, M]
        spec = (mel @ self.fb_pinv).clamp(min=0.0)  # [B, T, F]
        # Multiplicative NNLS updates keep spec >= 0 and lower ||spec @ fb - mel||^2 monotonically.
        numer = mel @ self.fb.T
        for _ in range(self.nnls_iter):
            spec = spec * numer / (spec @ self.gram).clamp(min=1e-12)
        return spec.transpose(1, 2)

    def __call__(self, features: torch.Tensor) -> np.ndarray:
        if features.dim() != 3 or tuple(features.shape[1:]) != self.cfg.shape:
            raise HearsayError(f"vocoder expects features [B, {self.cfg.n_frames}, {self.cfg.n_mels}], got {list(features.shape)}")
        if not torch.isfinite(features).all():
            raise HearsayError("refusing to vocode features that contain NaN or infinity")
        cfg = self.cfg
        length = (cfg.n_frames - 1) * cfg.hop_length
        out = np.zeros((features.shape[0], length), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, features.shape[0], self.batch_size):
                spec = self.linear_spectrogram(features[start : start + self.batch_size])
                wave = torchaudio.functional.griffinlim(
                    spec, self.window, cfg.n_fft, cfg.hop_length, cfg.win_length,
                    power=1.0, n_iter=self.n_iter, momentum=self.momentum, length=length, rand_init=False,
                )
                out[start : start + len(wave)] = finish(wave, self.sample_rate, self.target_rms_db, self.fade_ms).cpu().numpy()
        return out


def finish(wave: torch.Tensor, sample_rate: int, target_rms_db: float = -23.0, fade_ms: float = 10.0, peak: float = 0.99) -> torch.Tensor:
    """Same loudness for every stimulus (RMS to target, never clipping), and fades so no clip starts with a click.

    Loudness must not be a cue to the condition in a listening test; silence stays silence.
    """
    wave = wave.to(torch.float32)
    n_fade = min(int(round(fade_ms / 1000.0 * sample_rate)), wave.shape[-1] // 2)
    if n_fade > 0:
        ramp = torch.linspace(0.0, 1.0, n_fade, device=wave.device)
        wave = wave.clone()
        wave[..., :n_fade] *= ramp
        wave[..., -n_fade:] *= ramp.flip(0)
    rms = wave.pow(2).mean(dim=-1, keepdim=True).sqrt()
    gain = torch.where(rms > 1e-6, 10.0 ** (target_rms_db / 20.0) / rms.clamp(min=1e-6), torch.ones_like(rms))
    wave = wave * gain
    top = wave.abs().amax(dim=-1, keepdim=True)
    return wave * torch.where(top > peak, peak / top.clamp(min=1e-12), torch.ones_like(top))


def write_wav(path: str | Path, wave: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM, written to a temporary file and renamed so no half-written clip is ever left."""
    path = Path(path)
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or not np.isfinite(wave).all():
        raise HearsayError(f"refusing to write {path.name}: audio must be one finite channel")
    with atomic.replacing(path) as tmp:
        sf.write(tmp, np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")


def real_time_factor(vocoder: Vocoder, features: torch.Tensor) -> float:
    """Seconds of audio produced per second of compute (above 1 is faster than real time)."""
    import time

    start = time.perf_counter()
    waves = vocoder(features)  # a numpy result: any device work has finished
    elapsed = time.perf_counter() - start
    return waves.shape[0] * waves.shape[1] / vocoder.sample_rate / max(elapsed, 1e-9)


def round_trip(classifier_ckpt: str | Path, corpus_root: str | Path, n: int | None = None, device: str | torch.device = "cpu",
               vocoder: Vocoder | None = None, seed: int = 0, progress: bool = False) -> dict:
    """Classifier A's accuracy on vocoded-then-re-extracted test utterances vs on the originals.

    If the two are close (and `agreement`, the share of unchanged predictions, is
    high), the audio carries what the network used; `n` draws a seeded random
    subset of the test split.
    """
    from tqdm import tqdm

    from . import checkpoint
    from .corpus import read_corpus
    from .features import LogMel, extract_files, prepare_waves

    ckpt = checkpoint.load(classifier_ckpt, device=device, kind="classifier")
    corpus = read_corpus(corpus_root)
    if corpus.classes != ckpt.classes:
        raise HearsayError(f"the corpus at {corpus.root} has other words than {Path(ckpt.path).name} was trained on")
    test = corpus.split("test")
    if n is not None:
        if n < 1:
            raise HearsayError("n must be at least 1")
        order = np.random.default_rng(seed).permutation(len(test))[: min(n, len(test))]
        test = [test[i] for i in sorted(order)]
    cfg = ckpt.feature_config
    vocoder = vocoder or GriffinLimVocoder(cfg, device=device)
    labels = torch.tensor(corpus.labels(test))
    feats = torch.from_numpy(extract_files([u.path for u in test], cfg, device=device, progress=progress))
    logmel = LogMel(cfg).to(device)
    hits_orig = hits_voc = same = 0
    diff = 0.0
    batch = 128
    with torch.no_grad():
        for start in tqdm(range(0, len(test), batch), desc="round trip", unit="batch", disable=not progress):
            f = feats[start : start + batch].to(device)
            y = labels[start : start + batch].to(device)
            waves = vocoder(f)
            again = logmel(prepare_waves(list(waves), vocoder.sample_rate, cfg, device))
            pred, pred_voc = ckpt.model(f).argmax(1), ckpt.model(again).argmax(1)
            hits_orig += int((pred == y).sum())
            hits_voc += int((pred_voc == y).sum())
            same += int((pred == pred_voc).sum())
            diff += float((again - f).abs().mean(dim=(1, 2)).sum())
    return {
        "n": len(test),
        "original_accuracy": hits_orig / len(test),
        "vocoded_accuracy": hits_voc / len(test),
        "agreement": same / len(test),
        "mean_abs_feature_difference": diff / len(test),
        "classifier_sha256": ckpt.sha256,
    }
