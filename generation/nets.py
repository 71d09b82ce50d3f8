"""The networks: speech-command classifiers and the autoencoder whose decoder is the prior.

Every net takes features shaped [B, n_frames, n_mels] in [0, 1]. Classifiers return
logits; layers are named so objectives can reach any of them by name.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hearsay.errors import HearsayError


class PaperClassifier(nn.Module):
    """Soomro et al.: three [conv 2x2 -> max-pool 2x2 -> dropout 0.2] blocks, dense 512-256-128."""

    def __init__(self, n_classes: int, input_shape: tuple[int, int] = (90, 80), dropout: float = 0.2):
        super().__init__()
        blocks: list[nn.Module] = []
        channels = 1
        for width in (8, 16, 32):
            blocks += [
                nn.Conv2d(channels, width, kernel_size=2),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Dropout(dropout),
            ]
            channels = width
        self.features = nn.Sequential(*blocks)
        flat = _flat_size(self.features, input_shape)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 512), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(512, 256), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(256, 128), nn.ReLU(), nn.Dropout(dropout),
        )
        self.logits = nn.Linear(128, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.head(self.features(x.unsqueeze(1))))


class _TemporalBlock(nn.Module):
    """Residual pair of 9-frame convolutions; the first one strides to halve the time axis."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(cin, cout, 9, stride=stride, padding=4, bias=False), nn.BatchNorm1d(cout), nn.ReLU(),
            nn.Conv1d(cout, cout, 9, padding=4, bias=False), nn.BatchNorm1d(cout),
        )
        self.skip = nn.Sequential(nn.Conv1d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm1d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ConvClassifier(nn.Module):
    """Hearsay's default: temporal residual convolutions over the mel bands as channels.

    Each layer sees the whole spectrum of a short window and the stack covers the
    whole clip before global pooling over time, so words are recognised wherever
    they start. On the built-in corpus it beats the paper's 2x2-kernel net on
    held-out speakers by a wide margin and trains in seconds per epoch on a CPU.
    """

    def __init__(self, n_classes: int, input_shape: tuple[int, int] = (90, 80), width: int = 64, dropout: float = 0.2):
        super().__init__()
        wide = width + width // 2
        self.features = nn.Sequential(
            nn.Conv1d(input_shape[1], width, 3, padding=1, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
            _TemporalBlock(width, width, 2),
            _TemporalBlock(width, wide, 2),
            _TemporalBlock(wide, 2 * width, 2),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Dropout(dropout))
        self.logits = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.head(self.features(x.transpose(1, 2))))


class Autoencoder(nn.Module):
    """The paper's autoencoder: conv encoder, linear bottleneck, mirrored decoder, sigmoid output.

    Pools (3,2),(3,2),(2,2) take 90x80 to 5x10x128 = 6400 values; `decode(z)` is the
    learned prior x = decoder(z), its output always in [0, 1].
    """

    def __init__(self, latent: int = 256, input_shape: tuple[int, int] = (90, 80)):
        super().__init__()
        if input_shape[0] % 18 or input_shape[1] % 8:
            raise HearsayError(f"the autoencoder needs frames divisible by 18 and mels by 8, got {input_shape}")
        self.latent = latent
        self.inner = (128, input_shape[0] // 18, input_shape[1] // 8)

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]

        self.encoder = nn.Sequential(
            *conv(1, 16), nn.MaxPool2d((3, 2)),
            *conv(16, 32), nn.MaxPool2d((3, 2)),
            *conv(32, 64), nn.MaxPool2d((2, 2)),
            *conv(64, 128),
            nn.Flatten(),
            nn.Linear(128 * self.inner[1] * self.inner[2], latent),
        )
        self.expand = nn.Linear(latent, 128 * self.inner[1] * self.inner[2])
        self.decoder = nn.Sequential(
            *conv(128, 128), nn.Upsample(scale_factor=(2, 2)),
            *conv(128, 64), nn.Upsample(scale_factor=(3, 2)),
            *conv(64, 32), nn.Upsample(scale_factor=(3, 2)),
            *conv(32, 16),
            nn.Conv2d(16, 1, 3, padding=1),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.unsqueeze(1))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        h = self.expand(z).view(-1, *self.inner)
        return self.decoder(h).squeeze(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


CLASSIFIERS: dict[str, type[nn.Module]] = {"conv": ConvClassifier, "paper": PaperClassifier}


def build(kind: str, arch: str, arch_kwargs: dict[str, Any]) -> nn.Module:
    """Construct a net from what a checkpoint records about it."""
    if kind == "classifier":
        if arch not in CLASSIFIERS:
            raise HearsayError(f"unknown classifier architecture {arch!r}; choose from {', '.join(CLASSIFIERS)}")
        return CLASSIFIERS[arch](**arch_kwargs)
    if kind == "autoencoder":
        return Autoencoder(**arch_kwargs)
    raise HearsayError(f"unknown model kind {kind!r}")


def _flat_size(module: nn.Module, input_shape: tuple[int, int]) -> int:
    with torch.no_grad():
        return int(module(torch.zeros(1, 1, *input_shape)).numel())
