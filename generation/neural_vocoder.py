"""A neural vocoder trained here, so listeners hear the features without Griffin-Lim's phasey buzz.

Nothing can be downloaded at run time, so the network is trained by Hearsay on
the corpus at hand. The generator is Vocos-style: a stack of ConvNeXt blocks
over the log-mel frames predicts, per frame, the log magnitude and the phase of
an STFT with the features' own n_fft and hop, and an inverse STFT makes the
wave. Everything runs at the frame rate, so it is cheap on a CPU and exactly
aligned with the features (frame t is centred on sample t * hop).

Training (GAN, hinge loss): a multi-period discriminator on the waveform and a
multi-resolution discriminator on STFT magnitudes, feature matching, and an L1
loss on log-mel spectrograms plus a multi-resolution STFT loss. The adversarial
terms start after `adversarial_after` epochs and fade in: on a 2-core CPU the
reconstruction losses alone give a usable voice within minutes, and the
discriminators then remove the remaining metallic smear when time allows. Every
epoch is judged on the validation clips, and the generator of the best one is
what is saved. Training resumes from `OUT.partial` after an interruption, and
stops early at a time budget; the checkpoint records the FeatureConfig, training
configuration, data fingerprint and held-out metrics.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from hearsay.errors import HearsayError
from hearsay.provenance import library_versions

from . import checkpoint
from .checkpoint import Checkpoint
from .features import PAPER, FeatureConfig, LogMel, prepare_waves, read_wave, unit_to_amp
from .vocoder import GriffinLimVocoder, Vocoder, finish

KIND = "vocoder"
ARCH = "vocos"
EpochCallback = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------- generator


class ConvNeXtBlock(nn.Module):
    """Depthwise 7-tap conv, LayerNorm, pointwise MLP, scaled residual (channels-first input)."""

    def __init__(self, dim: int, hidden: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).transpose(1, 2)
        h = self.down(F.gelu(self.up(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class VocosGenerator(nn.Module):
    """Features [B, T, n_mels] in [0, 1] -> waves [B, (T - 1) * hop] (peak-normalized scale, like the corpus).

    With `magnitude_prior` the head predicts a correction to the log magnitude of
    the features' pseudo-inverse mel filterbank (its magnitude half starts at
    zero), so the spectral envelope is right from the first step and a short CPU
    run spends its steps on phase and fine structure.
    """

    def __init__(self, feature_config: dict | None = None, dim: int = 128, hidden: int = 384, layers: int = 6, magnitude_prior: bool = True):
        super().__init__()
        import torchaudio

        cfg = FeatureConfig.from_dict(feature_config) if feature_config else PAPER
        self.cfg = cfg
        self.n_fft, self.hop_length = cfg.n_fft, cfg.hop_length
        self.embed = nn.Conv1d(cfg.n_mels, dim, 7, padding=3)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, hidden, 1.0 / layers) for _ in range(layers))
        self.final_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, cfg.n_fft + 2)
        self.magnitude_prior = magnitude_prior
        if magnitude_prior:
            with torch.no_grad():
                self.head.weight[: cfg.n_fft // 2 + 1].zero_()
                self.head.bias[: cfg.n_fft // 2 + 1].zero_()
        fb = torchaudio.functional.melscale_fbanks(cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate, norm="slaney", mel_scale="slaney")
        self.register_buffer("mel_pinv", torch.linalg.pinv(fb), persistent=False)  # [mels, freq]
        self.register_buffer("window", torch.hann_window(cfg.n_fft, periodic=True), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        frames = features.shape[1]
        x = self.embed(features.transpose(1, 2))
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        h = self.head(self.final_norm(x.transpose(1, 2))).transpose(1, 2)  # [B, n_fft + 2, T]
        log_mag, phase = h.chunk(2, dim=1)
        if self.magnitude_prior:
            mel = unit_to_amp(features, self.cfg) * (features > 0)
            log_mag = log_mag + torch.log((mel @ self.mel_pinv).clamp(min=self.cfg.amp_floor)).transpose(1, 2)
        mag = torch.exp(log_mag).clamp(max=100.0)  # the clamp keeps early training from exploding
        spec = torch.polar(mag, phase)
        return torch.istft(spec, self.n_fft, self.hop_length, self.n_fft, self.window, center=True, length=(frames - 1) * self.hop_length)


# --------------------------------------------------------------------------- discriminators


def _judge(x: torch.Tensor, convs: nn.ModuleList, out: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A discriminator's conv stack: (scores [B, n], every layer's feature map for feature matching)."""
    maps = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        maps.append(x)
    x = out(x)
    maps.append(x)
    return x.flatten(1), maps


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN's period discriminator: the wave folded into [T / p, p] columns, 2-D convs along time."""

    def __init__(self, period: int, channels: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.period = period
        layers, cin = [], 1
        for cout in channels:
            layers.append(weight_norm(nn.Conv2d(cin, cout, (5, 1), (3, 1), padding=(2, 0))))
            cin = cout
        layers.append(weight_norm(nn.Conv2d(cin, cin, (5, 1), 1, padding=(2, 0))))
        self.convs = nn.ModuleList(layers)
        self.out = weight_norm(nn.Conv2d(cin, 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, t = wave.shape
        pad = (-t) % self.period
        x = F.pad(wave, (0, pad), mode="reflect" if pad < t else "constant").view(b, 1, -1, self.period)
        return _judge(x, self.convs, self.out)


class ResolutionDiscriminator(nn.Module):
    """Vocos/UnivNet-style: 2-D convs over one STFT's log magnitude."""

    def __init__(self, n_fft: int, hop: int, channels: int = 16):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(1, channels, (7, 5), (2, 2), padding=(3, 2))),
            weight_norm(nn.Conv2d(channels, channels, (5, 3), (2, 1), padding=(2, 1))),
            weight_norm(nn.Conv2d(channels, channels, (5, 3), (2, 1), padding=(2, 1))),
            weight_norm(nn.Conv2d(channels, channels, 3, 1, padding=1)),
        ])
        self.out = weight_norm(nn.Conv2d(channels, 1, 3, 1, padding=1))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = torch.stft(wave, self.n_fft, self.hop, window=self.window, center=True, return_complex=True).abs()
        x = torch.log(spec.clamp(min=1e-5)).unsqueeze(1)
        return _judge(x, self.convs, self.out)


class Discriminators(nn.Module):
    """Multi-period (2, 3, 5, 7, 11) plus multi-resolution (512, 1024, 2048) discriminators."""

    def __init__(self, periods: tuple[int, ...] = (2, 3, 5, 7, 11), resolutions: tuple[int, ...] = (512, 1024, 2048)):
        super().__init__()
        self.parts = nn.ModuleList([PeriodDiscriminator(p) for p in periods] + [ResolutionDiscriminator(n, n // 4) for n in resolutions])

    def forward(self, wave: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        return [d(wave) for d in self.parts]


# --------------------------------------------------------------------------- losses


class SpectralLosses(nn.Module):
    """L1 between log-mel spectrograms on the features' own scale, plus a multi-resolution STFT loss.

    The mel term uses the features' filterbank (f_min..f_max), STFT padding and
    clipping range (the -100 dB floor, the 0 dB top), so it bounds the feature L1
    of the crop times ln 10 * 100 / 20 = 11.5 from above, equal to it wherever the
    generator is not below the floor: what is optimized is what the classifiers and
    the MCD see. The STFT term (spectral convergence + log magnitude, full band)
    keeps the rest of the spectrum honest.
    """

    def __init__(self, cfg: FeatureConfig, resolutions: tuple[int, ...] = (512, 1024, 2048)):
        super().__init__()
        import torchaudio

        self.mel = torchaudio.transforms.MelSpectrogram(
            cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length, n_mels=cfg.n_mels,
            f_min=cfg.f_min, f_max=cfg.f_max, power=1.0, norm="slaney", mel_scale="slaney", center=True, pad_mode="constant",
        )
        self.floor = max(cfg.amp_floor, 10.0 ** ((cfg.min_level_db + cfg.ref_level_db) / 20.0))
        self.top = 10.0 ** (cfg.ref_level_db / 20.0)
        self.resolutions = resolutions
        for n in resolutions:
            self.register_buffer(f"window_{n}", torch.hann_window(n), persistent=False)

    def mel_l1(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Where the real band is at the floor, only rising above it costs; elsewhere the full log distance, so a
        band the generator left below the floor still gets a gradient (a clamp on both sides would give none)."""
        low, high = math.log(self.floor), math.log(self.top)
        target = torch.log(self.mel(real).clamp(self.floor, self.top))
        guess = torch.log(self.mel(fake).clamp(min=1e-7)).clamp(max=high)
        return torch.where(target > low, (guess - target).abs(), F.relu(guess - low)).mean()

    def stft(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        total = fake.new_zeros(())
        for n in self.resolutions:
            window = getattr(self, f"window_{n}")
            sf_ = torch.stft(fake, n, n // 4, window=window, return_complex=True).abs().clamp(min=1e-7)
            sr_ = torch.stft(real, n, n // 4, window=window, return_complex=True).abs().clamp(min=1e-7)
            convergence = torch.linalg.norm(sr_ - sf_) / torch.linalg.norm(sr_).clamp(min=1e-7)
            total = total + convergence + (sf_.log() - sr_.log()).abs().mean()
        return total / len(self.resolutions)


def discriminator_loss(real: list, fake: list) -> torch.Tensor:
    return sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for (r, _), (f, _) in zip(real, fake)) / len(real)


def generator_adversarial_loss(fake: list) -> torch.Tensor:
    return sum(F.relu(1 - f).mean() for f, _ in fake) / len(fake)


def feature_matching_loss(real: list, fake: list) -> torch.Tensor:
    total, count = 0.0, 0
    for (_, maps_r), (_, maps_f) in zip(real, fake):
        for r, f in zip(maps_r, maps_f):
            total = total + (r.detach() - f).abs().mean()
            count += 1
    return total / count


# --------------------------------------------------------------------------- metrics


def mel_cepstral_distortion(reference: torch.Tensor, test: torch.Tensor, cfg: FeatureConfig = PAPER, n_coeffs: int = 13) -> torch.Tensor:
    """Per-clip MCD in dB between two feature batches [B, T, M], over frames where the reference is not silent.

    The features are log-mel on a dB scale; cepstra are the orthonormal DCT-II of the
    natural-log mel amplitudes, c0 (overall level) excluded, as is usual for MCD.
    """
    span = -cfg.min_level_db

    def cepstra(feat: torch.Tensor) -> torch.Tensor:
        ln_amp = (feat * span - span) / 20.0 * math.log(10.0)
        m = feat.shape[-1]
        k = torch.arange(n_coeffs, dtype=feat.dtype, device=feat.device).unsqueeze(1)
        n = torch.arange(m, dtype=feat.dtype, device=feat.device).unsqueeze(0)
        basis = torch.cos(math.pi / m * (n + 0.5) * k) * math.sqrt(2.0 / m)
        return ln_amp @ basis.T

    diff = (cepstra(reference) - cepstra(test))[..., 1:]
    per_frame = (10.0 / math.log(10.0)) * torch.sqrt(2.0 * diff.pow(2).sum(dim=-1))
    voiced = (reference.amax(dim=-1) > 0).to(per_frame.dtype)
    return (per_frame * voiced).sum(dim=1) / voiced.sum(dim=1).clamp(min=1.0)


# --------------------------------------------------------------------------- the Vocoder


class NeuralVocoder:
    """A trained generator behind the `Vocoder` interface: features -> loudness-normalized, faded waves."""

    def __init__(self, ckpt: Checkpoint, device: str | torch.device = "cpu", batch_size: int = 64,
                 target_rms_db: float = -23.0, fade_ms: float = 10.0):
        if batch_size < 1:
            raise HearsayError("vocoder batch size must be positive")
        self.ckpt = ckpt
        self.cfg = ckpt.feature_config
        self.sample_rate = self.cfg.sample_rate
        self.device = torch.device(device)
        self.model = ckpt.model.to(self.device).eval()
        self.batch_size = batch_size
        self.target_rms_db = target_rms_db
        self.fade_ms = fade_ms

    def config(self) -> dict:
        """What produced the audio, for run records."""
        return {
            "vocoder": "neural", "arch": self.ckpt.arch, "checkpoint_sha256": self.ckpt.sha256, "sample_rate": self.sample_rate,
            "target_rms_db": self.target_rms_db, "fade_ms": self.fade_ms,
        }

    def raw(self, features: torch.Tensor) -> torch.Tensor:
        """The generator's waves before loudness normalization (on the corpus' peak-normalized scale)."""
        out = torch.zeros(features.shape[0], (features.shape[1] - 1) * self.cfg.hop_length, device=self.device)
        with torch.no_grad():
            for s in range(0, features.shape[0], self.batch_size):
                out[s : s + self.batch_size] = self.model(features[s : s + self.batch_size].to(self.device, torch.float32))
        return out

    def __call__(self, features: torch.Tensor) -> np.ndarray:
        if features.dim() != 3 or tuple(features.shape[1:]) != self.cfg.shape:
            raise HearsayError(f"vocoder expects features [B, {self.cfg.n_frames}, {self.cfg.n_mels}], got {list(features.shape)}")
        if not torch.isfinite(features).all():
            raise HearsayError("refusing to vocode features that contain NaN or infinity")
        waves = self.raw(features.clamp(0.0, 1.0))
        return finish(waves, self.sample_rate, self.target_rms_db, self.fade_ms).cpu().numpy()


def build(kind: str, arch: str, arch_kwargs: dict[str, Any]) -> nn.Module:
    """Model builder for `checkpoint.load` (which knows only classifiers and autoencoders)."""
    if kind != KIND or arch != ARCH:
        raise HearsayError(f"not a neural vocoder checkpoint ({kind}/{arch})")
    return VocosGenerator(**arch_kwargs)


def load(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    return checkpoint.load(path, device=device, kind=KIND, build=build)


VOCODER_CHOICES = "griffin-lim or the path of a vocoder checkpoint (manage.py train_vocoder)"


def load_vocoder(spec: str | None, device: str | torch.device = "cpu", cfg: FeatureConfig | None = None) -> Vocoder:
    """`griffin-lim` (or None) or a trained vocoder checkpoint; refuses one trained on other features than `cfg`."""
    if spec is None or spec == "griffin-lim":
        return GriffinLimVocoder(cfg or PAPER, device=device)
    if not Path(spec).is_file():
        raise HearsayError(f"vocoder {spec}: no such file; use {VOCODER_CHOICES}")
    ckpt = load(spec, device)
    if cfg is not None and ckpt.feature_config != cfg:
        raise HearsayError(f"vocoder {spec} was trained on other features (FeatureConfig {ckpt.feature_config.fingerprint()} vs {cfg.fingerprint()})")
    return NeuralVocoder(ckpt, device=device)


def vocoder_for(spec: str | None, classifier: str | Path, device: str = "auto") -> Vocoder | None:
    """What a command's `--vocoder` asks for, checked against the classifier's features; None means the default Griffin-Lim."""
    if spec is None or spec == "griffin-lim":
        return None
    from .train import resolve_device

    dev = resolve_device(device)
    return load_vocoder(spec, dev, checkpoint.load(classifier, kind="classifier").feature_config)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainSettings:
    """Losses follow HiFi-GAN/Vocos: mel x45 dominates in both phases, feature matching x2, adversarial x1.

    The discriminators learn at `lr_d`, below the generator's rate, and their
    terms fade in over `adversarial_ramp` epochs, so they refine the voice rather
    than drag it away from the spectrogram (an H100 run with equal rates and no
    ramp drifted from 5.8 to 9.1 dB validation MCD). Both rates decay on a cosine
    to `final_lr_ratio` over the run (epochs, or the time budget when that is
    nearer). The saved generator is the epoch with the lowest validation MCD.
    """

    epochs: int = 30
    batch_size: int = 16
    segment_frames: int = 32
    lr: float = 5e-4
    lr_d: float = 2e-4
    final_lr_ratio: float = 0.1
    adversarial_after: int = 10
    adversarial_ramp: int = 5
    mel_weight: float = 45.0
    stft_weight: float = 2.5
    fm_weight: float = 2.0
    adversarial_weight: float = 1.0
    max_seconds: float = 0.0
    seed: int = 1
    dim: int = 128
    hidden: int = 384
    layers: int = 6
    magnitude_prior: bool = True

    def validate(self, cfg: FeatureConfig) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.adversarial_after < 0 or self.adversarial_ramp < 0:
            raise HearsayError("epochs and batch_size must be at least 1, adversarial_after and adversarial_ramp at least 0")
        if not (0 < self.lr < math.inf and 0 < self.lr_d < math.inf and 0 < self.final_lr_ratio <= 1):
            raise HearsayError("learning rates must be positive and finite and final_lr_ratio in (0, 1]")
        weights = (self.mel_weight, self.stft_weight, self.fm_weight, self.adversarial_weight)
        if not all(0 <= w < math.inf for w in weights) or not self.max_seconds >= 0:
            raise HearsayError("loss weights must be finite and, like max_seconds, not negative")
        if not 2 <= self.segment_frames <= cfg.n_frames:
            raise HearsayError(f"segment_frames must be between 2 and {cfg.n_frames}")
        if min(self.dim, self.hidden, self.layers) < 1:
            raise HearsayError("dim, hidden and layers must be at least 1")

    def lr_factor(self, epoch: int, seconds: float) -> float:
        """Cosine from 1 to `final_lr_ratio` over the run's progress: epochs done, or the time budget spent if further along."""
        progress = epoch / self.epochs
        if self.max_seconds:
            progress = max(progress, seconds / self.max_seconds)
        return self.final_lr_ratio + (1.0 - self.final_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    def adversarial_share(self, epoch: int) -> float:
        """Weight of the adversarial and feature-matching terms in (0-based) `epoch`: 0, then rising to 1 over the ramp."""
        if epoch < self.adversarial_after:
            return 0.0
        return min(1.0, (epoch - self.adversarial_after + 1) / self.adversarial_ramp) if self.adversarial_ramp else 1.0


def load_waves(utterances, cfg: FeatureConfig) -> torch.Tensor:
    """Clips at the feature rate, peak-normalized exactly as for the features: [N, clip_samples]."""
    by_rate: dict[int, list[tuple[int, np.ndarray]]] = {}
    for i, u in enumerate(utterances):
        wave, rate = read_wave(u.path)
        by_rate.setdefault(rate, []).append((i, wave))
    out = torch.zeros(len(utterances), cfg.clip_samples)
    for rate, items in by_rate.items():
        out[[i for i, _ in items]] = prepare_waves([w for _, w in items], rate, cfg)
    return out


def _features(waves: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    logmel = LogMel(cfg)
    with torch.no_grad():
        return torch.cat([logmel(waves[s : s + 256]) for s in range(0, len(waves), 256)]) if len(waves) else torch.zeros(0, *cfg.shape)


def _segments(waves: torch.Tensor, feats: torch.Tensor, frames: int, hop: int, gen: torch.Generator, cfg: FeatureConfig):
    """Aligned random crops: feature frames [s, s + frames) and samples [s * hop, (s + frames - 1) * hop)."""
    voiced_frames = 1 + cfg.clip_samples // hop  # frames that see audio (centred STFT); the rest are padding rows
    top = max(1, min(feats.shape[1], voiced_frames) - frames + 1)
    starts = torch.randint(0, top, (len(waves),), generator=gen)
    length = (frames - 1) * hop
    padded = F.pad(waves, (0, max(0, int(starts.max()) * hop + length - waves.shape[1])))
    x = torch.stack([feats[i, s : s + frames] for i, s in enumerate(starts.tolist())])
    y = torch.stack([padded[i, s * hop : s * hop + length] for i, s in enumerate(starts.tolist())])
    return x, y


@torch.no_grad()
def score(waves: torch.Tensor | np.ndarray, feats: torch.Tensor, cfg: FeatureConfig, device: torch.device | str = "cpu"
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A vocoder's finished output judged as the classifiers hear it: (re-extracted features, per-clip L1, per-clip MCD).

    Every vocoder is scored here, on the same clips' features and through the same
    path (peak normalization, feature extraction, frames aligned from sample 0), so
    Griffin-Lim and the neural vocoder are compared on equal terms.
    """
    waves = torch.as_tensor(waves)
    again = LogMel(cfg).to(device)(prepare_waves(list(waves.cpu().numpy()), cfg.sample_rate, cfg, device)).cpu()
    feats = feats.cpu()
    return again, (again - feats).abs().mean(dim=(1, 2)), mel_cepstral_distortion(feats, again, cfg)


@torch.no_grad()
def evaluate(model: nn.Module, feats: torch.Tensor, cfg: FeatureConfig, device: torch.device, batch: int = 32) -> dict[str, float]:
    """Vocode whole clips, finish them as `NeuralVocoder` does, and `score` them against the features they came from."""
    model.eval()
    l1, mcd = [], []
    for s in range(0, len(feats), batch):
        f = feats[s : s + batch]
        _, clip_l1, clip_mcd = score(finish(model(f.to(device)), cfg.sample_rate), f, cfg, device)
        l1.append(clip_l1)
        mcd.append(clip_mcd)
    return {"feature_l1": float(torch.cat(l1).mean()) if l1 else float("nan"), "mcd_db": float(torch.cat(mcd).mean()) if mcd else float("nan")}


class BestEpoch:
    """The generator weights of the epoch with the lowest validation MCD so far; saved and restored with the run."""

    def __init__(self) -> None:
        self.epoch, self.mcd_db, self.weights = 0, math.inf, {}

    def consider(self, epoch: int, mcd_db: float, model: nn.Module) -> None:
        if mcd_db < self.mcd_db:  # NaN never wins
            self.epoch, self.mcd_db = epoch, mcd_db
            self.weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "mcd_db": self.mcd_db, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.mcd_db, self.weights = int(state["epoch"]), float(state["mcd_db"]), dict(state["weights"])


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def train_vocoder(
    corpus_root: str | Path,
    out: str | Path,
    *,
    settings: TrainSettings = TrainSettings(),
    device: str | torch.device = "auto",
    feature_config: FeatureConfig | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
) -> Checkpoint:
    """Train (or resume) a vocoder on the corpus' training split; validation clips choose the epoch kept, test clips are only measured.

    With `settings.max_seconds` training stops after the epoch that reaches that
    many seconds of training (counted across resumes), and is then finished as usual.
    """
    from tqdm import tqdm

    from .train import _prepare, finish_checkpoint, partial_path, resume_partial, save_partial

    corpus, out, dev, cfg = _prepare(corpus_root, out, device, feature_config, KIND)
    settings.validate(cfg)
    fingerprint = corpus.fingerprint()
    arch_kwargs = {"feature_config": cfg.to_dict(), "dim": settings.dim, "hidden": settings.hidden, "layers": settings.layers,
                   "magnitude_prior": settings.magnitude_prior}
    identity = {"kind": KIND, "arch": ARCH, "arch_kwargs": arch_kwargs, **settings.__dict__, "feature_config": cfg.fingerprint(), "data_fingerprint": fingerprint}
    for budget in ("epochs", "max_seconds"):  # a resumed run may be given more of either
        identity.pop(budget)

    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    train_waves = load_waves(corpus.split("train"), cfg)
    train_feats = _features(train_waves, cfg)
    val_feats = _features(load_waves(corpus.split("validation"), cfg), cfg)
    if len(val_feats) == 0:
        raise HearsayError(f"{corpus.root} has no validation utterances (validation_list.txt): the best epoch cannot be chosen")

    model = VocosGenerator(**arch_kwargs).to(dev)
    disc = Discriminators().to(dev)
    losses = SpectralLosses(cfg).to(dev)
    opt_g = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.8, 0.99))
    opt_d = torch.optim.AdamW(disc.parameters(), lr=settings.lr_d, betas=(0.8, 0.99))
    best = BestEpoch()
    state_path = partial_path(out)
    trained = {"generator": model, "discriminators": disc, "opt_g": opt_g, "opt_d": opt_d, "best": best}
    epoch, history, seconds, cpu_seconds = resume_partial(state_path, identity, trained, gen)

    def out_of_time() -> bool:
        return bool(settings.max_seconds) and seconds >= settings.max_seconds

    bar = tqdm(total=settings.epochs, initial=min(epoch, settings.epochs), desc=f"{out.name} (vocoder)", unit="epoch", disable=not progress)
    if epoch:
        bar.write(f"resuming {out.name} after epoch {epoch} from {state_path.name}")
    while epoch < settings.epochs and not out_of_time():
        started, cpu_started = time.perf_counter(), time.process_time()
        share = settings.adversarial_share(epoch)
        factor = settings.lr_factor(epoch, seconds)
        _set_lr(opt_g, settings.lr * factor)
        _set_lr(opt_d, settings.lr_d * factor)
        model.train()
        disc.train()
        sums: dict[str, float] = {}
        order = torch.randperm(len(train_waves), generator=gen)
        steps = 0
        for idx in order.split(settings.batch_size):
            x, y = _segments(train_waves[idx], train_feats[idx], settings.segment_frames, cfg.hop_length, gen, cfg)
            x, y = x.to(dev), y.to(dev)
            fake = model(x)
            parts = {"mel_l1": losses.mel_l1(fake, y), "stft": losses.stft(fake, y)}
            g_loss = settings.mel_weight * parts["mel_l1"] + settings.stft_weight * parts["stft"]
            if share:
                d_loss = discriminator_loss(disc(y), disc(fake.detach()))
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                with torch.no_grad():
                    real_out = disc(y)
                fake_out = disc(fake)
                parts["adversarial"] = generator_adversarial_loss(fake_out)
                parts["feature_matching"] = feature_matching_loss(real_out, fake_out)
                parts["discriminator"] = d_loss.detach()
                g_loss = g_loss + share * (settings.adversarial_weight * parts["adversarial"] + settings.fm_weight * parts["feature_matching"])
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 100.0)
            opt_g.step()
            steps += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        if not all(math.isfinite(v) for v in sums.values()):
            raise HearsayError(f"training diverged in epoch {epoch + 1} (NaN loss); lower the learning rates")
        val = evaluate(model, val_feats, cfg, dev)
        epoch += 1
        best.consider(epoch, val["mcd_db"], model)
        seconds += time.perf_counter() - started
        cpu_seconds += time.process_time() - cpu_started
        record = {"epoch": epoch, "adversarial": bool(share), "adversarial_share": share, "lr": settings.lr * factor, "steps": steps,
                  **{f"train_{k}": v / steps for k, v in sums.items()}, **{f"val_{k}": v for k, v in val.items()},
                  "best_epoch": best.epoch, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1)}
        history.append(record)
        save_partial(state_path, identity, trained, gen, epoch=epoch, history=history, seconds=seconds, cpu_seconds=cpu_seconds)
        bar.set_postfix(mel_l1=f"{record['train_mel_l1']:.3f}", val_l1=f"{record['val_feature_l1']:.4f}", mcd=f"{record['val_mcd_db']:.2f}")
        bar.update(1)
        if on_epoch:
            on_epoch(record)
    bar.close()

    last_epoch = epoch
    if best.weights:
        model.load_state_dict(best.weights)
    test_feats = _features(load_waves(corpus.split("test"), cfg), cfg)
    metrics: dict[str, Any] = {"n_train": len(train_waves), "n_validation": len(val_feats), "n_test": len(test_feats),
                               "best_epoch": best.epoch, "best_val_mcd_db": best.mcd_db if best.weights else None}
    metrics.update({f"test_{k}": v for k, v in evaluate(model, test_feats, cfg, dev).items()})
    _, gl_l1, gl_mcd = score(GriffinLimVocoder(cfg, device=dev)(test_feats), test_feats, cfg, dev)
    metrics["test_griffin_lim_feature_l1"], metrics["test_griffin_lim_mcd_db"] = float(gl_l1.mean()), float(gl_mcd.mean())
    metrics["train_seconds"], metrics["train_cpu_seconds"] = round(seconds, 1), round(cpu_seconds, 1)
    metrics["history"] = history
    stopped = "epochs" if last_epoch >= settings.epochs else f"time budget ({settings.max_seconds:g} s)"
    train_config = {**identity, "epochs": settings.epochs, "max_seconds": settings.max_seconds, "epochs_run": last_epoch, "stopped_by": stopped,
                    "data": str(corpus.root), "device": str(dev), "torch_threads": torch.get_num_threads(),
                    "selected": f"epoch {best.epoch} of {last_epoch} (lowest validation MCD)" if best.weights else "last epoch (no finite validation MCD)"}
    ckpt = Checkpoint(kind=KIND, arch=ARCH, arch_kwargs=arch_kwargs, model=model.eval(), feature_config=cfg, classes=list(corpus.classes),
                      train_config=train_config, metrics=metrics, data_fingerprint=fingerprint, versions=library_versions())
    return finish_checkpoint(out, ckpt, state_path)
