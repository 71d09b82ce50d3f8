"""Audio of time-frequency regions, by the seed's two strategies (seed 002).

* identification: keep only the region's log-mel bins (the rest at the -100 dB
  floor) and vocode them: what the network's input holds there, nothing else;
* reconstruction: keep the clip's own STFT bins that fall in the regions' frames
  and mel bands (with their original phase) and invert the STFT: the real sound
  of those regions.

Both are loudness-matched by `vocoder.finish`, so loudness never tells a region
from its random control.
"""
from __future__ import annotations

import numpy as np
import torch
import torchaudio

from ..features import FeatureConfig
from ..vocoder import Vocoder, finish

STRATEGIES = ("identification", "reconstruction")


def identification(vocoder: Vocoder, features: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """[B, T, M] features, [B, T, M] boolean masks -> waves [B, samples] at the vocoder's rate."""
    return vocoder(features * masks.bool().to(features.dtype))


def mel_band_edges(cfg: FeatureConfig) -> torch.Tensor:
    """[n_freq, n_mels] bool: which linear STFT bins each mel band draws on (its filter's support)."""
    fb = torchaudio.functional.melscale_fbanks(
        cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate, norm="slaney", mel_scale="slaney"
    )
    return fb > 0


def reconstruction(waves: torch.Tensor, masks: torch.Tensor, cfg: FeatureConfig, target_rms_db: float = -23.0,
                   fade_ms: float = 10.0) -> np.ndarray:
    """Prepared waves [B, clip_samples] at cfg.sample_rate, masks [B, T, M] -> the waves' regions only [B, samples]."""
    window = torch.hann_window(cfg.win_length, periodic=True, device=waves.device)
    spec = torch.stft(waves, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, window=window,
                      center=True, pad_mode="constant", return_complex=True)  # [B, F, frames]
    support = mel_band_edges(cfg).to(waves.device).float()  # [F, M]
    frames = spec.shape[-1]
    m = masks.bool().float().to(waves.device)[:, :frames]  # [B, T', M]
    if m.shape[1] < frames:
        m = torch.nn.functional.pad(m, (0, 0, 0, frames - m.shape[1]))
    keep = (m @ support.T > 0).transpose(1, 2)  # [B, F, frames]
    wave = torch.istft(spec * keep, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, window=window,
                       center=True, length=waves.shape[1])
    return finish(wave, cfg.sample_rate, target_rms_db, fade_ms).cpu().numpy()
