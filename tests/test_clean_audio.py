"""Clips reach listeners clean and indistinguishable: bare PCM wav, one rate, checks as long as test clips."""
from __future__ import annotations

import csv
import io
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from evaluation import clean_audio
from evaluation.models import Experiment, Stimulus
from evaluation.stimuli import load_manifest
from hearsay.errors import HearsayError
from tests.helpers.survey import Listener

WORDS = ("down", "up")
TEST_RATE, TEST_SECONDS = 22_050, 1.03  # what the vocoder makes
CORPUS_RATE = 16_000  # Speech Commands: 16 kHz, 1.00 s


def word_like(seconds: float, rate: int, seed: int) -> np.ndarray:
    """A voiced burst in faint noise: enough like a recorded word for format and length checks."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    envelope = np.exp(-(((t - seconds / 2) / (seconds / 6)) ** 2))
    return (0.5 * envelope * np.sin(2 * np.pi * (140 + 20 * seed) * t) + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def write_tagged(path: Path, samples: np.ndarray, rate: int, tag: str, subtype: str = "PCM_16", channels: int = 1) -> None:
    """A wav as editors and generation scripts write them: LIST/INFO tags naming what the clip is."""
    data = samples if channels == 1 else np.stack([samples] * channels, axis=1)
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=channels, format="WAV", subtype=subtype) as handle:
        handle.title = tag
        handle.comment = tag
        handle.write(data)
    assert b"LIST" in path.read_bytes()


def tagged_manifest(root: Path) -> tuple[Path, list[str]]:
    """Test clips (22.05 kHz, 1.03 s, some float and stereo) whose tags name word, condition and file."""
    (root / "wav").mkdir(parents=True)
    rows, tags = [], []
    for i, (word, stage) in enumerate((w, s) for w in WORDS for s in ("before", "after")):
        name = f"wav/{word}-{stage}-{i}.wav"
        tag = f"word={word} condition=decoder-test-{stage} source={name}"
        tags.append(tag)
        subtype, channels = ("FLOAT", 2) if i % 2 else ("PCM_24", 1)
        write_tagged(root / name, word_like(TEST_SECONDS, TEST_RATE, i), TEST_RATE, tag, subtype, channels)
        rows.append({"stimulus_id": f"s{i}", "file": name, "word": word, "method": "decoder", "init": "test", "stage": stage, "pair_id": f"p{word}"})
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest, tags


def speech_commands(root: Path) -> Path:
    """A Speech Commands-layout folder: 16 kHz, exactly 1.00 s, tagged with the speaker and word."""
    for w, word in enumerate(WORDS):
        (root / word).mkdir(parents=True)
        for k in range(2):
            write_tagged(root / word / f"spk{k}_nohash_0.wav", word_like(1.0, CORPUS_RATE, 10 + w + k), CORPUS_RATE, f"corpus word={word}")
    (root / "testing_list.txt").write_text("".join(f"{word}/spk0_nohash_0.wav\n" for word in WORDS))
    return root


def fmt_of(data: bytes) -> tuple[int, int, int, int]:
    """(format tag, channels, rate, bits) from the fmt chunk, which bare wav puts first."""
    assert data[12:16] == b"fmt "
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[20:36])
    return tag, channels, rate, bits


@pytest.fixture
def loaded(media, tmp_path):
    manifest, tags = tagged_manifest(tmp_path / "set")
    load_manifest(manifest, "demo", create=True, gold_from_corpus=speech_commands(tmp_path / "corpus"), gold_per_word=2)
    Experiment.objects.filter(slug="demo").update(
        status="live", trials_per_listener=2, gold_per_listener=1, traps_per_listener=1, practice_trials=1
    )
    return tags


@pytest.mark.django_db
def test_served_clips_carry_no_tags_naming_word_condition_or_source(loaded):
    listener = Listener("demo")
    listener.start()
    served = 0
    while (trial := listener.current()) is not None:
        got = listener.client.get(f"/a/{trial.token}")
        assert got.status_code == 200
        data = b"".join(got.streaming_content) if got.streaming else got.content
        assert clean_audio.chunk_ids(data) == ["fmt ", "data"], trial.stimulus.kind
        assert b"LIST" not in data and b"INFO" not in data
        for tag in loaded:
            for part in tag.split():
                assert part.encode() not in data
        assert b"corpus word=" not in data and b"nohash" not in data
        assert listener.answer(trial).status_code == 303
        served += 1
    assert served >= 4


@pytest.mark.django_db
def test_gold_trap_practice_and_test_clips_share_rate_format_and_lengths(loaded):
    shape: dict[str, set] = {}
    lengths: dict[str, list[float]] = {}
    for stim in Stimulus.objects.all():
        data = stim.audio.open("rb").read()
        assert clean_audio.chunk_ids(data) == ["fmt ", "data"]
        info = sf.info(io.BytesIO(data))
        shape.setdefault(stim.kind, set()).add(fmt_of(data))
        lengths.setdefault(stim.kind, []).append(info.duration)
    assert set(shape) == {"test", "gold", "trap", "practice"}
    assert all(s == {(1, 1, TEST_RATE, 16)} for s in shape.values()), shape  # PCM, mono, 22.05 kHz, 16-bit
    assert {round(d * TEST_RATE) for d in lengths["test"]} == {round(TEST_SECONDS * TEST_RATE)}  # traps spoken to fit: tests unpadded
    test_low, test_high = min(lengths["test"]), max(lengths["test"])
    for kind in ("gold", "trap", "practice"):
        assert all(test_low <= d <= test_high for d in lengths[kind]), (kind, lengths[kind], test_low, test_high)


@pytest.mark.django_db
def test_rating_anchors_are_stored_like_the_test_clips(media, tmp_path):
    from django.core.files.storage import default_storage

    manifest, _ = tagged_manifest(tmp_path / "set")
    load_manifest(manifest, "rate", create=True, task="rating")
    experiment = Experiment.objects.get(slug="rate")
    assert len(experiment.anchors) == 5
    for entry in experiment.anchors:
        data = default_storage.open(entry["audio"], "rb").read()
        assert clean_audio.chunk_ids(data) == ["fmt ", "data"] and fmt_of(data) == (1, 1, TEST_RATE, 16)


def test_bare_wav_is_riff_fmt_data_and_reads_back():
    samples = np.linspace(-1, 1, 101)
    data = clean_audio.bare_wav(samples, 22_050)
    assert clean_audio.chunk_ids(data) == ["fmt ", "data"]
    assert len(data) == 44 + 2 * 101
    back, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 22_050 and back[0] == -32767 and back[-1] == 32767


def test_stereo_float_tagged_input_becomes_mono_16_bit(tmp_path):
    path = tmp_path / "x.wav"
    write_tagged(path, word_like(0.5, 44_100, 1), 44_100, "word=yes", "FLOAT", 2)
    out = clean_audio.conform([clean_audio.Source("x", "test", *clean_audio.decode(path.read_bytes()))])["x"]
    assert clean_audio.chunk_ids(out) == ["fmt ", "data"] and fmt_of(out) == (1, 1, 44_100, 16)
    assert b"word=yes" not in out


def test_check_lengths_come_from_test_lengths_and_long_checks_pad_the_tests():
    plain = clean_audio.target_lengths({"t1": ("test", 100), "t2": ("test", 120), "g": ("gold", 90), "p": ("practice", 110)})
    assert plain["t1"] == 100 and plain["t2"] == 120  # test clips untouched when every check fits
    assert plain["g"] in (100, 120) and plain["p"] == 120
    long_trap = clean_audio.target_lengths({"t1": ("test", 100), "t2": ("test", 120), "trap": ("trap", 150)})
    assert long_trap == {"t1": 150, "t2": 150, "trap": 150}
    again = clean_audio.target_lengths({"t1": ("test", 100), "t2": ("test", 120), "g": ("gold", 90), "p": ("practice", 110)})
    assert again == plain  # a reload stores the same bytes


def test_padding_is_dither_not_digital_silence():
    out = clean_audio.conform([
        clean_audio.Source("t", "test", word_like(1.0, 16_000, 0), 16_000),
        clean_audio.Source("g", "gold", word_like(0.5, 16_000, 1), 16_000),
    ])
    gold, _ = sf.read(io.BytesIO(out["g"]), dtype="int16")
    tail = gold[8_000:]
    assert gold.size == 16_000 and np.abs(tail).max() <= 1 and np.count_nonzero(tail) > tail.size // 4


def test_the_experiment_rate_is_the_test_clips_rate():
    sources = [clean_audio.Source(f"t{i}", "test", np.zeros(10), 22_050) for i in range(2)]
    sources += [clean_audio.Source(f"g{i}", "gold", np.zeros(10), 16_000) for i in range(5)]
    assert clean_audio.experiment_rate(sources) == 22_050


def test_unreadable_audio_is_one_clear_error():
    with pytest.raises(HearsayError, match="s9: not a readable audio file"):
        clean_audio.decode(b"RIFF\0\0\0\0WAVEjunk", "s9")
