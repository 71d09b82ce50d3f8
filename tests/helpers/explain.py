"""Tiny corpora with known answers for the explanation tests: a word is a tone in one mel band.

Every clip holds the same loud low hum and faint noise; clips of "beep" add a quiet tone (too quiet
to change the peak normalization) whose
frequency falls in one mel band (BAND), clips of "hush" do not. A classifier trained
on them can only tell the words apart by that band, so every explanation of "beep"
must point at it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from generation import checkpoint
from generation.checkpoint import Checkpoint
from generation.features import FeatureConfig, extract_files
from generation.nets import ConvClassifier, PaperClassifier

CFG = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=64, win_length=256, n_mels=16, f_min=50.0, f_max=3800.0,
                    n_frames=36, clip_seconds=0.3)
WORDS = ["beep", "hush"]
RATE = 8000
TONE_HZ = 1500.0


def band_of(hz: float, cfg: FeatureConfig = CFG) -> int:
    """The mel band whose filter responds most to a tone at `hz`."""
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate,
                                               norm="slaney", mel_scale="slaney")
    k = int(round(hz / (cfg.sample_rate / 2) * (cfg.n_fft // 2)))
    return int(fb[k].argmax())


BAND = band_of(TONE_HZ)


def clip(word: str, rng: np.random.Generator) -> np.ndarray:
    n = int(CFG.clip_seconds * RATE)
    t = np.arange(n) / RATE
    wave = 0.5 * np.sin(2 * np.pi * 200.0 * t) + 0.003 * rng.standard_normal(n)
    if word == "beep":
        start = rng.integers(0, n // 2)
        env = np.zeros(n)
        env[start : start + n // 3] = 1.0
        wave = wave + 0.03 * env * np.sin(2 * np.pi * TONE_HZ * t + rng.uniform(0, 6.28))
    return wave.astype(np.float32)


def make_corpus(root: Path, per_word: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    test, val = [], []
    for word in WORDS:
        (root / word).mkdir(parents=True)
        for s in range(per_word):
            name = f"{s:08x}_nohash_0.wav"
            sf.write(str(root / word / name), clip(word, rng), RATE, subtype="PCM_16")
            (test if s % 4 == 0 else val if s % 4 == 1 else []).append(f"{word}/{name}")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    return root


def train_classifier(path: Path, corpus: Path, arch: str = "paper", steps: int = 150, seed: int = 0) -> Path:
    """A classifier of the corpus' two words, trained for a few seconds on all its clips."""
    from generation.corpus import read_corpus

    data = read_corpus(corpus)
    x = torch.from_numpy(extract_files([u.path for u in data.utterances], CFG))
    y = torch.tensor(data.labels(data.utterances))
    torch.manual_seed(seed)
    kwargs = {"n_classes": len(WORDS), "input_shape": CFG.shape}
    if arch == "conv":
        kwargs["width"] = 16
    model = (ConvClassifier if arch == "conv" else PaperClassifier)(**kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    checkpoint.save(path, Checkpoint(kind="classifier", arch=arch, arch_kwargs=kwargs, model=model, feature_config=CFG,
                                     classes=list(WORDS)))
    return path
