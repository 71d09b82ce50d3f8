"""Features back to audio, so listeners hear what the network saw.

The paper used a WaveNet trained on LJSpeech, which cannot be rebuilt offline.
The built-in `GriffinLimVocoder` needs no training: mel magnitudes are mapped
back to a linear spectrogram by non-negative least squares against the same
filterbank the features use, and Griffin-Lim finds a phase. Anything with the
`Vocoder` call signature (a neural vocoder, say) can replace it.
"""
from __future__ import annotations

import warnings
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
    """What every caller of a vocoder relies on (stimulus generation, the round trip, the benches).

    `sample_rate` of the audio; `device` it computes on; `target_rms_db` and
    `fade_ms`, the loudness and fades of its output (natural clips shown beside
    vocoded ones are finished the same way, so loudness is never a cue);
    `config()`, a JSON-able record of what produced the audio, for provenance;
    and the batch call.
    """

    sample_rate: int
    device: torch.device
    target_rms_db: float
    fade_ms: float

    def config(self) -> dict:
        """What produced the audio (name, settings, sample rate), for run records."""
        ...

    def __call__(self, features: torch.Tensor) -> np.ndarray:
        """[B, n_frames, n_mels] in [0, 1] -> float32 waves [B, samples], loudness-normalized and faded."""
        ...


class MelFilterbank:
    """The features' mel filterbank [freq, mels] applied through its non-zeros only.

    Each frequency bin lies in at most two triangular bands, so both directions
    (spectrum -> mel and mel -> spectrum) are a couple of row gathers or
    scatters over spectra laid out [freq, frames], instead of dense
    [frames, freq] x [freq, mels] products: the mel inversion costs a few
    memory passes per iteration rather than most of the vocoder's time.
    """

    def __init__(self, fb: torch.Tensor):
        self.n_mels = fb.shape[1]
        per_bin = max(int((fb > 0).sum(dim=1).max()), 1)
        weights, bands = fb.topk(per_bin, dim=1)  # [freq, per_bin]: each bin's bands (weight 0 pads)
        self.weights = [weights[:, k : k + 1].contiguous() for k in range(per_bin)]
        self.bands = [bands[:, k].contiguous() for k in range(per_bin)]
        self.transposed = _sparse_csr(fb.T.contiguous())  # [mels, freq]: each band's run of bins

    def to(self, device: torch.device) -> "MelFilterbank":
        self.weights = [w.to(device) for w in self.weights]
        self.bands = [b.to(device) for b in self.bands]
        self.transposed = self.transposed.to(device)
        return self

    def to_mel(self, spec: torch.Tensor) -> torch.Tensor:
        """[freq, R] -> [mels, R] (= fb.T @ spec)."""
        return self.transposed @ spec

    def from_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """[mels, R] -> [freq, R] (= fb @ mel)."""
        out = mel.index_select(0, self.bands[0]).mul_(self.weights[0])
        for w, b in zip(self.weights[1:], self.bands[1:]):
            out.addcmul_(mel.index_select(0, b), w)
        return out


def _sparse_csr(dense: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is long-standing
        warnings.simplefilter("ignore", UserWarning)
        return dense.to_sparse_csr()


class Stft:
    """A batched STFT/iSTFT pair equal to torch.stft/istft (center=True, reflect padding, onesided).

    Window-sum normalisation is precomputed per frame count and overlap-add is
    a few shifted adds, so a Griffin-Lim iteration is two FFTs and some
    elementwise passes, with none of torch.istft's per-call set-up.
    """

    def __init__(self, n_fft: int, hop_length: int, win_length: int, device: torch.device):
        self.n_fft, self.hop = n_fft, hop_length
        window = torch.hann_window(win_length, periodic=True, device=device)
        left = (n_fft - win_length) // 2
        self.window = torch.nn.functional.pad(window, (left, n_fft - win_length - left))
        self._envelopes: dict[int, torch.Tensor] = {}

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, frames, freq] complex."""
        pad = self.n_fft // 2
        padded = torch.nn.functional.pad(wave.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        return torch.fft.rfft(padded.unfold(-1, self.n_fft, self.hop) * self.window, dim=-1)

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, T, n_fft] -> [B, (T-1)*hop + n_fft]."""
        batch, n, width = frames.shape
        if width % self.hop:
            return torch.nn.functional.fold(frames.transpose(1, 2), (1, (n - 1) * self.hop + width), (1, width),
                                            stride=(1, self.hop)).flatten(1)
        r = width // self.hop
        parts = frames.view(batch, n, r, self.hop)
        out = frames.new_zeros(batch, n + r - 1, self.hop)
        for k in range(r):
            out[:, k : k + n] += parts[:, :, k]
        return out.flatten(1)

    def inverse(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """[B, frames, freq] complex -> [B, length] (torch.istft with center=True and `length`)."""
        n = spec.shape[1]
        if n not in self._envelopes:
            self._envelopes[n] = self._overlap_add((self.window**2).expand(1, n, -1).contiguous())[0]
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=-1) * self.window
        start = self.n_fft // 2
        wave = self._overlap_add(frames)[:, start : start + length]
        envelope = self._envelopes[n][start : start + length]
        wave = wave / envelope.clamp(min=1e-11)
        if wave.shape[1] < length:
            wave = torch.nn.functional.pad(wave, (0, length - wave.shape[1]))
        return wave


def griffin_lim(magnitude: torch.Tensor, stft: Stft, n_iter: int, momentum: float, length: int) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013) from zero phase: [B, frames, freq] magnitudes -> [B, length].

    The same iteration as torchaudio.functional.griffinlim(rand_init=False,
    power=1): invert with the current phases, re-analyse, extrapolate by
    momentum / (1 + momentum) (torchaudio's parameterization), keep only the phase.
    """
    alpha = momentum / (1 + momentum)
    # Each pass feeds the next inverse magnitude * phase; with phase = p / (|p| + eps) that is p scaled by a real
    # factor. |p| is computed on the real view: torch's complex abs is several times slower than an FFT here.
    spectrum = magnitude.to(torch.complex64 if magnitude.dtype == torch.float32 else torch.complex128)
    previous = None
    for _ in range(n_iter):
        rebuilt = torch.view_as_real(stft.forward(stft.inverse(spectrum, length)))
        p = rebuilt if previous is None or not alpha else torch.sub(rebuilt, previous, alpha=alpha)
        norm = (p[..., 0] * p[..., 0]).addcmul_(p[..., 1], p[..., 1]).sqrt_().add_(1e-16)
        spectrum = torch.view_as_complex(p) * torch.div(magnitude, norm, out=norm)
        previous = rebuilt
    return stft.inverse(spectrum, length)


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
        self.filterbank = MelFilterbank(fb).to(self.device)
        self.stft = Stft(cfg.n_fft, cfg.hop_length, cfg.win_length, self.device)

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

    def mel_to_linear(self, features: torch.Tensor) -> torch.Tensor:
        """[B, T, M] features -> [B, T, freq] non-negative magnitudes whose mel projection fits the features."""
        features = features.to(self.device, torch.float32)
        # 0 means "at or below the floor": make it true silence, or loudness normalization would amplify the floor.
        mel = unit_to_amp(features, self.cfg) * (features > 0)  # [B, T, M]
        spec = (mel @ self.fb_pinv).clamp(min=0.0).flatten(0, 1).T.contiguous()  # [F, B*T]
        mel = mel.flatten(0, 1).T.contiguous()  # [M, B*T]
        # Multiplicative NNLS updates keep spec >= 0 and lower ||fb.T @ spec - mel||^2 monotonically.
        numer = self.filterbank.from_mel(mel)
        for _ in range(self.nnls_iter):
            spec = spec * numer / self.filterbank.from_mel(self.filterbank.to_mel(spec)).clamp(min=1e-12)
        return spec.T.reshape(*features.shape[:2], -1)

    def linear_spectrogram(self, features: torch.Tensor) -> torch.Tensor:
        """[B, T, M] features -> [B, freq, T] (torchaudio's layout) non-negative magnitudes."""
        return self.mel_to_linear(features).transpose(1, 2)

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
                spec = self.mel_to_linear(features[start : start + self.batch_size])
                wave = griffin_lim(spec, self.stft, self.n_iter, self.momentum, length)
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
