"""Synthesized quality-control clips: traps, practice words and rating anchors.

Traps ask for a given answer out loud ("please select the word left"), so a
listener who answers without listening is caught. Practice clips and rating
anchors are clean espeak words (anchors degraded with noise to one level per
rating option), so no generated stimulus is spent on them. Trap sentences are spoken
briskly so they last about as long as a single test word; `clean_audio` then stores
every one of these clips at the test clips' rate and within their lengths.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from hearsay.answers import RATING_LABELS
from hearsay.errors import HearsayError

RATE = 16_000  # espeak.synthesize's rate; clean_audio resamples to the experiment's
WORD_RATE = 175  # words per minute for single words (practice, anchors)
SENTENCE_RATES = (230, 260, 290, 320)  # trap sentences, words per minute: the slowest that fits a test clip's length
# Anchor speech-to-noise ratios (dB) per rating value 0..4; None = no speech at all.
ANCHOR_SNR = (None, -12.0, -3.0, 8.0, 40.0)


@dataclass(frozen=True)
class Clip:
    kind: str  # trap | practice
    stimulus_id: str
    word: str
    expected_answer: str
    text: str
    samples: np.ndarray


def _speak(text: str, seed: int, words_per_minute: int = WORD_RATE) -> np.ndarray:
    try:
        from generation import espeak
    except ImportError as exc:  # pragma: no cover - the corpus engineer ships generation/espeak.py
        raise HearsayError(f"speech synthesis is unavailable: {exc}") from None
    samples = espeak.synthesize(text, espeak.Voice(language="en-us", rate=words_per_minute), seed=seed)
    if samples.size == 0:
        raise HearsayError(f"espeak produced no audio for {text!r}")
    peak = float(np.max(np.abs(samples))) or 1.0
    return (0.9 * samples / peak).astype(np.float32)


def _speak_within(text: str, seed: int, max_seconds: float | None) -> np.ndarray:
    """The sentence at the slowest rate that lasts at most `max_seconds` (the fastest rate when none does)."""
    for words_per_minute in SENTENCE_RATES:
        samples = _speak(text, seed, words_per_minute)
        if max_seconds is None or samples.size <= max_seconds * RATE:
            break
    return samples


def trap_clips(task: str, words: list[str], seed: int = 0, count: int = 3, max_seconds: float | None = None) -> list[Clip]:
    """Identification: "select the word X" for `count` words plus one "select none"; rating: "select bad/excellent".

    `max_seconds` (the longest test clip) makes each sentence brisk enough to last no longer, when it can.
    """
    rng = random.Random(seed)
    clips = []
    if task == "identification":
        for word in rng.sample(sorted(words), min(count, len(words))):
            text = f"please select the word {word}"
            clips.append(Clip("trap", f"trap-{word}", word, word, text, _speak_within(text, seed, max_seconds)))
        text = "please select none of these"
        clips.append(Clip("trap", "trap-none", "none", "none", text, _speak_within(text, seed, max_seconds)))
    else:
        for value in (0, 4):
            label = RATING_LABELS[value]
            word = rng.choice(sorted(words))
            text = f"please answer {label.lower()}"
            clips.append(Clip("trap", f"trap-{label.lower()}", word, str(value), text, _speak_within(text, seed, max_seconds)))
    return clips


def practice_clips(task: str, words: list[str], count: int, seed: int = 0) -> list[Clip]:
    """Clean synthetic words: the correct practice answer is the word (or Excellent when rating)."""
    rng = random.Random(seed + 1)
    chosen = rng.sample(sorted(words), min(count, len(words)))
    return [
        Clip("practice", f"practice-{word}", word, word if task == "identification" else "4", word, _speak(word, seed))
        for word in chosen
    ]


def anchor_clips(word: str, seed: int = 0) -> list[tuple[int, np.ndarray]]:
    """One example per rating value: the same word under more and more noise (Bad = noise only)."""
    speech = _speak(word, seed)
    rng = np.random.default_rng(seed)
    pad = np.zeros(RATE // 4, dtype=np.float32)
    speech = np.concatenate([pad, speech, pad])
    power = float(np.mean(speech**2)) or 1e-6
    anchors = []
    for value, snr in enumerate(ANCHOR_SNR):
        noise = rng.standard_normal(speech.size).astype(np.float32)
        if snr is None:
            mix = noise * np.sqrt(power)
        else:
            mix = speech + noise * np.sqrt(power / 10 ** (snr / 10))
        anchors.append((value, (0.9 * mix / (np.max(np.abs(mix)) or 1.0)).astype(np.float32)))
    return anchors
