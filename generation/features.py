"""Log-mel features shared by training, maximization and vocoding.

One `FeatureConfig` travels inside every checkpoint, so a model is never fed
features computed differently from those it was trained on. The torch
implementation is batched and differentiable and runs on CPU or CUDA; a librosa
reference (`librosa_features`) exists to check it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio

from hearsay.errors import HearsayError


@dataclass(frozen=True)
class FeatureConfig:
    """Defaults are the paper preset (SEED_FACTS.md): 90 frames x 80 mels in [0, 1]."""

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    f_min: float = 125.0
    f_max: float = 7600.0
    ref_level_db: float = 20.0
    min_level_db: float = -100.0
    amp_floor: float = 1e-5
    n_frames: int = 90
    clip_seconds: float = 1.0
    peak: float = 0.999

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_frames, self.n_mels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise HearsayError(f"unknown feature settings: {', '.join(sorted(unknown))}")
        return cls(**data)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


PAPER = FeatureConfig()


def read_wave(path: str | Path | BinaryIO) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate (from a path or an open file); unreadable input is a HearsayError."""
    source = path if hasattr(path, "read") else str(path)
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for corrupt input
        raise HearsayError(f"cannot read audio file {path}: {str(exc).splitlines()[0]}") from None
    if data.shape[0] == 0:
        raise HearsayError(f"audio file {path} is empty")
    if not np.isfinite(data).all():
        raise HearsayError(f"audio file {path} is corrupt: it holds NaN or infinite samples")
    return data.mean(axis=1), int(rate)


def fit_clip(wave: np.ndarray, rate: int, cfg: FeatureConfig) -> np.ndarray:
    """Pad with silence (or cut) to exactly `clip_seconds` at the source rate."""
    n = int(round(cfg.clip_seconds * rate))
    out = np.zeros(n, dtype=np.float32)
    m = min(n, len(wave))
    out[:m] = wave[:m]
    return out


class LogMel(torch.nn.Module):
    """Waveforms at `sample_rate` [B, T] -> features [B, n_frames, n_mels] in [0, 1]."""

    def __init__(self, cfg: FeatureConfig = PAPER):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.win_length, periodic=True), persistent=False)
        fb = torchaudio.functional.melscale_fbanks(
            cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate, norm="slaney", mel_scale="slaney"
        )
        self.register_buffer("mel_basis", fb, persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        spec = torch.stft(
            wave,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        ).abs()
        mel = torch.matmul(spec.transpose(1, 2), self.mel_basis)
        return fit_frames(amp_to_unit(mel, cfg), cfg)


def amp_to_unit(mel: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    db = 20.0 * torch.log10(torch.clamp(mel, min=cfg.amp_floor)) - cfg.ref_level_db
    return torch.clamp((db - cfg.min_level_db) / -cfg.min_level_db, 0.0, 1.0)


def unit_to_amp(feat: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Inverse of `amp_to_unit` (up to the clipping): features back to mel magnitudes."""
    db = feat.clamp(0.0, 1.0) * -cfg.min_level_db + cfg.min_level_db + cfg.ref_level_db
    return torch.pow(10.0, db / 20.0)


def fit_frames(feat: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Pad with zero rows (the -100 dB floor) or cut to exactly `n_frames`."""
    frames = feat.shape[-2]
    if frames >= cfg.n_frames:
        return feat[..., : cfg.n_frames, :]
    pad = feat.new_zeros(*feat.shape[:-2], cfg.n_frames - frames, feat.shape[-1])
    return torch.cat([feat, pad], dim=-2)


def prepare_waves(waves: Sequence[np.ndarray], rate: int, cfg: FeatureConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """Source-rate clips -> peak-normalized [B, clip_samples] tensor at the feature rate."""
    batch = torch.from_numpy(np.stack([fit_clip(w, rate, cfg) for w in waves])).to(device)
    if rate != cfg.sample_rate:
        batch = torchaudio.functional.resample(batch, rate, cfg.sample_rate)
    batch = batch[:, : cfg.clip_samples]
    if batch.shape[1] < cfg.clip_samples:
        batch = torch.nn.functional.pad(batch, (0, cfg.clip_samples - batch.shape[1]))
    peak = batch.abs().amax(dim=1, keepdim=True).clamp(min=1e-8)
    return batch / peak * cfg.peak


def extract_files(
    paths: Sequence[str | Path],
    cfg: FeatureConfig = PAPER,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Features for many files, batched by source sample rate: [N, n_frames, n_mels] float32."""
    from tqdm import tqdm

    out = np.zeros((len(paths), cfg.n_frames, cfg.n_mels), dtype=np.float32)
    logmel = LogMel(cfg).to(device)
    starts = range(0, len(paths), batch_size)
    for start in tqdm(starts, desc="features", unit="batch", disable=not progress):
        chunk = paths[start : start + batch_size]
        by_rate: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i, p in enumerate(chunk):
            wave, rate = read_wave(p)
            by_rate.setdefault(rate, []).append((start + i, wave))
        for rate, items in by_rate.items():
            with torch.no_grad():
                feats = logmel(prepare_waves([w for _, w in items], rate, cfg, device))
            out[[i for i, _ in items]] = feats.cpu().numpy()
    return out


def librosa_features(path: str | Path, cfg: FeatureConfig = PAPER) -> np.ndarray:
    """Per-clip reference implementation with librosa (slow; for checks and benchmarks)."""
    import librosa

    wave, rate = read_wave(path)
    wave = fit_clip(wave, rate, cfg)
    if rate != cfg.sample_rate:
        wave = librosa.resample(wave, orig_sr=rate, target_sr=cfg.sample_rate)
    wave = wave / max(np.abs(wave).max(), 1e-8) * cfg.peak
    spec = np.abs(librosa.stft(wave, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, center=True, pad_mode="constant"))
    basis = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max)
    mel = (basis @ spec).T
    db = 20.0 * np.log10(np.maximum(cfg.amp_floor, mel)) - cfg.ref_level_db
    feat = np.clip((db - cfg.min_level_db) / -cfg.min_level_db, 0.0, 1.0).astype(np.float32)
    framed = np.zeros((cfg.n_frames, cfg.n_mels), dtype=np.float32)
    n = min(cfg.n_frames, feat.shape[0])
    framed[:n] = feat[:n]
    return framed
