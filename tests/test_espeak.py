"""Offline espeak synthesis: real, voiced, deterministic words whose voices differ."""
import numpy as np
import pytest

from generation import espeak
from hearsay.errors import HearsayError


def test_word_is_voiced_audio_at_16k():
    wave = espeak.synthesize("seven", espeak.Voice("en-us", "m3"))
    assert wave.dtype == np.float32 and 0.2 < len(wave) / espeak.SAMPLE_RATE < 2.0
    assert np.abs(wave).max() > 0.1
    voiced = np.abs(wave) > 0.05 * np.abs(wave).max()
    assert voiced.mean() > 0.2


def test_same_word_and_voice_is_identical_regardless_of_history():
    voice = espeak.Voice("en-gb-x-rp", "f2", pitch=60, pitch_range=40, rate=160)
    first = espeak.synthesize("house", voice)
    espeak.synthesize("marvin", espeak.Voice("en-029", "klatt"))
    assert np.array_equal(first, espeak.synthesize("house", voice))


def test_voices_of_the_same_word_differ():
    a = espeak.synthesize("yes", espeak.Voice("en-us", "m1", pitch=30))
    b = espeak.synthesize("yes", espeak.Voice("en-gb-scotland", "f3", pitch=70))
    c = espeak.synthesize("yes", espeak.Voice("en-us", "m1", pitch=30, rate=220))
    assert len(a) != len(b) or not np.allclose(a, b)
    assert len(c) < len(a)


@pytest.mark.parametrize(
    "voice, message",
    [
        (espeak.Voice("fr"), "unknown espeak voice"),
        (espeak.Voice("en", "robosoft"), "unknown espeak variant"),
        (espeak.Voice("en", pitch=101), "pitch 101 is outside"),
        (espeak.Voice("en", rate=10), "rate 10 is outside"),
    ],
)
def test_bad_voices_are_refused(voice, message):
    with pytest.raises(HearsayError, match=message):
        espeak.synthesize("yes", voice)


def test_empty_word_is_refused():
    with pytest.raises(HearsayError, match="empty word"):
        espeak.synthesize("  ", espeak.Voice())


def test_version_is_reported():
    assert espeak.version()[0].isdigit()
