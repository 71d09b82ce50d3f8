"""Tiny Speech Commands V2-layout corpora and untrained checkpoints, made in seconds for the generation and training tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from generation import checkpoint
from generation.checkpoint import Checkpoint
from generation.features import FeatureConfig
from generation.nets import Autoencoder, PaperClassifier

RATE = 16000
TINY_CORPUS_WORDS = ("chirp", "noise", "tone")


def _clip(word: str, speaker: int, take: int, rng: np.random.Generator) -> np.ndarray:
    """0.4 s of a class-typical sound, pitched per speaker, at a random offset in 1 s."""
    t = np.arange(int(0.4 * RATE)) / RATE
    base = 300.0 * (1 + 0.15 * speaker)
    if word == "tone":
        sound = np.sin(2 * np.pi * base * t)
    elif word == "chirp":
        sound = np.sin(2 * np.pi * (base * t + 4 * base * t**2))
    else:
        sound = rng.standard_normal(len(t)) * np.hanning(len(t))
    out = 0.003 * rng.standard_normal(RATE)
    start = int(rng.integers(0, RATE - len(t)))
    out[start : start + len(t)] += 0.5 * sound
    return out.astype(np.float32)


def make_tiny_corpus(root: Path, speakers: int = 6, takes: int = 2, seed: int = 0) -> Path:
    """Words x speakers x takes; the last speaker is the test split, the one before it validation."""
    rng = np.random.default_rng(seed)
    lists: dict[str, list[str]] = {"validation_list.txt": [], "testing_list.txt": []}
    for word in TINY_CORPUS_WORDS:
        (root / word).mkdir(parents=True, exist_ok=True)
        for s in range(speakers):
            for n in range(takes):
                name = f"spk{s:02d}_nohash_{n}.wav"
                sf.write(root / word / name, _clip(word, s, n, rng), RATE, subtype="PCM_16")
                if s == speakers - 1:
                    lists["testing_list.txt"].append(f"{word}/{name}")
                elif s == speakers - 2:
                    lists["validation_list.txt"].append(f"{word}/{name}")
    for name, entries in lists.items():
        (root / name).write_text("\n".join(entries) + "\n")
    return root


TONE_CORPUS_WORDS = ["bed", "go", "yes"]


def _tone(word_index: int, speaker: int) -> np.ndarray:
    sr = 16000
    t = np.arange(int(0.6 * sr)) / sr
    f = 200 + 250 * word_index + 15 * speaker
    env = np.exp(-((t - 0.3) / 0.12) ** 2)
    return (0.5 * env * np.sin(2 * np.pi * f * t)).astype(np.float32)


def make_corpus(root: Path, words=TONE_CORPUS_WORDS) -> Path:
    test, val = [], []
    for wi, word in enumerate(words):
        (root / word).mkdir(parents=True)
        for s in range(6):
            name = f"{s:08x}_nohash_0.wav"
            sf.write(str(root / word / name), _tone(wi, s), 16000, subtype="PCM_16")
            (test if s >= 4 else val if s == 3 else []).append(f"{word}/{name}")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    return root


def save_classifier(path: Path, seed: int, classes=TONE_CORPUS_WORDS, cfg=FeatureConfig()) -> Path:
    torch.manual_seed(seed)
    checkpoint.save(path, Checkpoint(kind="classifier", arch="paper", arch_kwargs={"n_classes": len(classes)},
                                     model=PaperClassifier(len(classes)), feature_config=cfg, classes=list(classes)))
    return path


def save_autoencoder(path: Path, cfg=FeatureConfig()) -> Path:
    torch.manual_seed(3)
    checkpoint.save(path, Checkpoint(kind="autoencoder", arch="paper-ae", arch_kwargs={"latent": 16},
                                     model=Autoencoder(latent=16), feature_config=cfg, classes=list(TONE_CORPUS_WORDS)))
    return path
