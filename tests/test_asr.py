"""The pocketsphinx machine listener: a real, independent recognizer restricted to the words."""
import numpy as np
import pytest

from generation.asr import NONE, Recognizer
from hearsay.errors import HearsayError
from generation.espeak import Voice, synthesize

WORDS = ["yes", "no", "up", "down", "left", "right", "stop", "go"]


def _clip(word: str, voice: Voice) -> np.ndarray:
    wave = synthesize(word, voice)[:14000]
    clip = np.zeros(16000, dtype=np.float32)
    clip[1000 : 1000 + len(wave)] = wave
    return clip


def test_recognizes_clearly_spoken_words_well_above_chance():
    recognizer = Recognizer(WORDS)
    voices = [Voice("en-us"), Voice("en-gb-x-rp", pitch=40), Voice("en-us", pitch=70, rate=150)]
    answers = [(w, recognizer.recognize(_clip(w, v), 16000)) for v in voices for w in WORDS]
    accuracy = np.mean([w == got for w, got in answers])
    assert accuracy >= 0.6, answers
    assert all(got in WORDS + [NONE] for _, got in answers)


def test_resamples_other_rates_and_survives_digital_silence():
    recognizer = Recognizer(WORDS)
    assert recognizer.recognize(np.zeros(22050, dtype=np.float32), 22050) in WORDS + [NONE]


def test_word_without_pronunciation_is_a_clear_error():
    with pytest.raises(HearsayError, match="no pronunciation for: qzxjv"):
        Recognizer(["yes", "qzxjv"])
