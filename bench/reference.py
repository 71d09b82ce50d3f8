"""Today's reference implementations that the fast paths are checked against (benches and tests).

* `reference_vocode`: the vocoder as it was before the fast Griffin-Lim: dense
  multiplicative NNLS against the full filterbank Gram matrix, then
  torchaudio.functional.griffinlim, then the same loudness finish.
* `word_like_features`: log-mel features of harmonic sweeps shaped like short
  words, so timings and agreement cover realistic spectra.
* `feature_difference`: how far two batches of waves are apart as the network
  hears them (re-extracted log-mel features, [0, 1] units). Griffin-Lim's
  sample values are chaotic in rounding (a 1e-6 relative change of the input
  magnitudes moves today's output samples by percents), so agreement is
  stated in what listeners and the classifier receive, not sample by sample.
"""
from __future__ import annotations

import numpy as np
import torch
import torchaudio

from generation.features import PAPER, FeatureConfig, LogMel, prepare_waves, unit_to_amp
from generation.vocoder import finish


def reference_vocode(features: torch.Tensor, cfg: FeatureConfig = PAPER, n_iter: int = 60, momentum: float = 0.99,
                     nnls_iter: int = 30, target_rms_db: float = -23.0, fade_ms: float = 10.0) -> np.ndarray:
    """[B, T, M] features -> waves [B, samples], exactly as GriffinLimVocoder computed them before the fast path."""
    fb = torchaudio.functional.melscale_fbanks(
        cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate, norm="slaney", mel_scale="slaney"
    )
    features = features.to(torch.float32)
    with torch.no_grad():
        mel = unit_to_amp(features, cfg) * (features > 0)
        spec = (mel @ torch.linalg.pinv(fb)).clamp(min=0.0)
        numer, gram = mel @ fb.T, fb @ fb.T
        for _ in range(nnls_iter):
            spec = spec * numer / (spec @ gram).clamp(min=1e-12)
        length = (cfg.n_frames - 1) * cfg.hop_length
        wave = torchaudio.functional.griffinlim(
            spec.transpose(1, 2), torch.hann_window(cfg.win_length, periodic=True), cfg.n_fft, cfg.hop_length,
            cfg.win_length, power=1.0, n_iter=n_iter, momentum=momentum, length=length, rand_init=False,
        )
        return finish(wave, cfg.sample_rate, target_rms_db, fade_ms).numpy()


def word_like_features(n: int, cfg: FeatureConfig = PAPER, seed: int = 0) -> torch.Tensor:
    """Features of n word-like harmonic sweeps with a noise floor."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(16000) / 16000
    waves = []
    for _ in range(n):
        f0 = 100 + 200 * torch.rand(1, generator=gen)
        env = torch.exp(-((t - 0.5) / (0.1 + 0.2 * torch.rand(1, generator=gen))) ** 2)
        wave = sum(torch.sin(2 * torch.pi * k * (f0 + 60 * t) * t) / k for k in range(1, 8)) * env
        waves.append((wave + 0.01 * torch.randn(len(t), generator=gen)).numpy())
    with torch.no_grad():
        return LogMel(cfg)(prepare_waves(waves, 16000, cfg))


def feature_difference(a: np.ndarray, b: np.ndarray, cfg: FeatureConfig = PAPER) -> float:
    """Mean |difference| of the re-extracted features of two batches of waves (feature units, [0, 1])."""
    with torch.no_grad():
        fa = LogMel(cfg)(prepare_waves(list(a), cfg.sample_rate, cfg))
        fb = LogMel(cfg)(prepare_waves(list(b), cfg.sample_rate, cfg))
    return float((fa - fb).abs().mean())
