"""Torch log-mel features against the librosa reference, differentiability, and the disk cache."""
from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from generation import cache
from generation.corpus import read_corpus
from generation.features import PAPER, FeatureConfig, LogMel, extract_files, librosa_features, prepare_waves
from hearsay.errors import HearsayError
from tests.helpers.corpora import make_tiny_corpus


def _wave(rate: int, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: harmonic sweep with an envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.8 * rate)) / rate
    f0 = 140 + 60 * t
    sig = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / rate) / k for k in range(1, 12)) * np.hanning(len(t))
    return (0.4 * sig + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture
def wavs(tmp_path):
    paths = {}
    for rate in (16000, 22050):
        paths[rate] = [tmp_path / f"clip{rate}_{i}.wav" for i in range(3)]
        for i, p in enumerate(paths[rate]):
            sf.write(p, _wave(rate, i), rate, subtype="FLOAT")
    return paths


def test_torch_features_match_librosa_at_16khz(wavs):
    """Resampling differs (torchaudio sinc vs soxr): max abs < 0.05, mean < 0.003 on [0, 1] (seen: 0.031, 0.0008)."""
    ours = extract_files(wavs[16000])
    ref = np.stack([librosa_features(p) for p in wavs[16000]])
    diff = np.abs(ours - ref)
    assert diff.max() < 0.05 and diff.mean() < 0.003


def test_torch_features_match_librosa_exactly_without_resampling(wavs):
    ours = extract_files(wavs[22050])
    ref = np.stack([librosa_features(p) for p in wavs[22050]])
    assert np.abs(ours - ref).max() < 1e-4, "same STFT and mel basis: only float rounding may differ"


def test_shape_and_range(wavs):
    feats = extract_files(wavs[16000] + wavs[22050])
    assert feats.shape == (6, 90, 80) and feats.dtype == np.float32
    assert feats.min() >= 0.0 and feats.max() <= 1.0
    assert feats.max() > 0.8, "peak-normalised speech must reach near 0 dB"


def test_features_are_differentiable_with_respect_to_the_waveform():
    wave = prepare_waves([_wave(16000)], 16000, PAPER).requires_grad_(True)
    LogMel(PAPER)(wave).sum().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0


@pytest.fixture
def corpus(tmp_path):
    return read_corpus(make_tiny_corpus(tmp_path / "corpus", speakers=3, takes=1))


def _counting(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = cache.extract_files

    def counted(paths, *args, **kwargs):
        calls.append(len(paths))
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(cache, "extract_files", counted)
    return calls


def test_cache_hit_avoids_recomputation_and_matches(corpus, tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    utts = corpus.utterances
    first = cache.features_for(utts, PAPER, "cpu", tmp_path / "c", progress=False)
    assert sum(calls) == len(utts)
    second = cache.features_for(utts, PAPER, "cpu", tmp_path / "c", progress=False)
    assert sum(calls) == len(utts), "a warm cache must not extract again"
    assert np.array_equal(first, second)
    assert np.abs(first - extract_files([u.path for u in utts])).max() <= 2.5e-4, "float16 storage error"


def test_cache_recomputes_changed_file_and_changed_config(corpus, tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    utts = corpus.utterances
    before = cache.features_for(utts, PAPER, "cpu", tmp_path / "c", progress=False)
    calls.clear()
    changed = corpus.split("train")[0]
    i = utts.index(changed)
    sf.write(changed.path, np.zeros(16000, dtype=np.float32) + 0.1 * np.sin(np.arange(16000) * 0.3).astype(np.float32), 16000)
    os.utime(changed.path, ns=(1, 1))
    after = cache.features_for(utts, PAPER, "cpu", tmp_path / "c", progress=False)
    assert 0 < sum(calls) < len(utts), "only the changed file's chunk is recomputed"
    assert not np.array_equal(before[i], after[i])
    keep = [j for j, u in enumerate(utts) if u.word != changed.word]
    assert np.array_equal(before[keep], after[keep])
    calls.clear()
    cache.features_for(utts, FeatureConfig(n_mels=64), "cpu", tmp_path / "c", progress=False)
    assert sum(calls) == len(utts)


def test_cache_defaults_to_env_then_corpus_folder(corpus, tmp_path, monkeypatch):
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    assert cache.default_cache_dir(corpus.root) == corpus.root / ".hearsay-cache"
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "elsewhere"))
    cache.features_for(corpus.split("test"), PAPER, "cpu", progress=False)
    assert list((tmp_path / "elsewhere").glob("*/*.npy"))


def test_corrupt_cache_entry_is_recomputed(corpus, tmp_path, monkeypatch):
    utts = corpus.split("test")
    good = cache.features_for(utts, PAPER, "cpu", tmp_path / "c", progress=False)
    for f in (tmp_path / "c").glob("*/*.npy"):
        f.write_bytes(b"truncated")
    assert np.array_equal(cache.features_for(utts, PAPER, "cpu", tmp_path / "c", progress=False), good)


@pytest.fixture
def read_only_corpus(corpus, tmp_path):
    """The corpus on a read-only mount (a shared dataset); skipped where this machine may not mount."""
    import subprocess

    mount = tmp_path / "shared"
    mount.mkdir()
    if subprocess.run(["mount", "--bind", str(corpus.root), str(mount)], capture_output=True).returncode != 0:
        pytest.skip("needs a bind mount (root with CAP_SYS_ADMIN)")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], capture_output=True).returncode != 0:
            pytest.skip("needs a read-only remount")
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_read_only_corpus_keeps_its_features_in_the_users_cache(read_only_corpus, tmp_path, monkeypatch):
    """Training on a shared read-only copy stopped at 'cannot write the feature cache ... Read-only file system'."""
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    utts = read_corpus(read_only_corpus).split("test")
    with pytest.raises(OSError):
        (read_only_corpus / ".probe").write_text("x")  # the mount is truly read-only, for root too
    first = cache.features_for(utts, PAPER, "cpu", progress=False)
    stored = list(cache.user_cache_dir(read_only_corpus).glob("*/*.npy"))
    assert stored and not (read_only_corpus / ".hearsay-cache").exists()
    assert np.array_equal(cache.features_for(utts, PAPER, "cpu", progress=False), first)
    monkeypatch.setenv(cache.ENV_VAR, str(read_only_corpus / "cache"))  # a folder the user chose is never swapped
    with pytest.raises(HearsayError, match="cannot write the feature cache at .*Read-only file system"):
        cache.features_for(utts, FeatureConfig(n_mels=64), "cpu", progress=False)
