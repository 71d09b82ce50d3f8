"""Speech Commands V2 copies as researchers really have them: the reader must take what a real copy holds.

Each test builds the corpus folder the way a real copy arrives (a subset of the 35 words with the
original split lists, a copy that went through a Mac, lists edited on Windows) and reads it with the
real reader and, where it matters, the real trainer.
"""
from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from django.core.management import CommandError, call_command

from generation.checkpoint import load
from generation.corpus import read_corpus
from hearsay.errors import HearsayError

RATE = 16000
WORDS = {"no": 600.0, "up": 900.0, "yes": 300.0}


def _tone(freq: float, seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def speech_commands_copy(root: Path, words=WORDS, speakers: int = 4) -> Path:
    """ROOT/<word>/<speaker>_nohash_<n>.wav, the last speaker testing, the one before validating, plus the
    files a real copy has at its root (LICENSE, README.md, _background_noise_/ with a long recording)."""
    lists = {"validation_list.txt": [], "testing_list.txt": []}
    for word, freq in words.items():
        (root / word).mkdir(parents=True, exist_ok=True)
        for s in range(speakers):
            name = f"{s:04x}beef_nohash_0.wav"
            sf.write(root / word / name, _tone(freq + 20 * s, 0.8), RATE, subtype="PCM_16")
            if s == speakers - 1:
                lists["testing_list.txt"].append(f"{word}/{name}")
            elif s == speakers - 2:
                lists["validation_list.txt"].append(f"{word}/{name}")
    (root / "_background_noise_").mkdir(exist_ok=True)
    sf.write(root / "_background_noise_" / "running_tap.wav", np.zeros(RATE * 20, dtype=np.float32), RATE, subtype="PCM_16")
    (root / "LICENSE").write_text("Creative Commons BY 4.0\n")
    (root / "README.md").write_text("Speech Commands\n")
    for name, entries in lists.items():
        (root / name).write_text("".join(f"{e}\n" for e in entries))
    return root


def test_a_copy_keeping_some_words_reads_with_the_original_split_lists(tmp_path):
    """Speech Commands V2's lists name all 35 words; a copy of three word folders was refused because of
    the other 32 ("names a file that does not exist"), so a user had to rewrite both lists by hand."""
    root = speech_commands_copy(tmp_path / "sc")
    for name in ("validation_list.txt", "testing_list.txt"):
        with (root / name).open("a") as fh:
            fh.write("backward/0165e0e8_nohash_0.wav\nmarvin/0a7c2a8d_nohash_1.wav\nzero/ffd2ba2f_nohash_4.wav\n")
    corpus = read_corpus(root)
    assert corpus.classes == ["no", "up", "yes"]
    assert [len(corpus.split(s)) for s in ("train", "validation", "test")] == [6, 3, 3]
    assert corpus.speakers("test") == {"0003beef"} and not corpus.speakers("test") & corpus.speakers("train")


def test_a_list_entry_of_a_word_here_must_still_exist_and_letter_case_must_match(tmp_path):
    """Skipping the words a copy leaves out must not hide a mistake about the words it keeps."""
    root = speech_commands_copy(tmp_path / "sc")
    (root / "testing_list.txt").write_text("yes/0003beef_nohash_9.wav\n")
    with pytest.raises(HearsayError, match="names a file that does not exist in a word folder: yes/0003beef_nohash_9.wav"):
        read_corpus(root)
    (root / "testing_list.txt").write_text("Yes/0003beef_nohash_0.wav\n")
    with pytest.raises(HearsayError, match="names Yes/0003beef_nohash_0.wav, but the word folder is 'yes'") as info:
        read_corpus(root)
    assert "\n" not in str(info.value)


def test_macos_resource_forks_and_finder_files_are_not_clips(tmp_path):
    """A copy that passed through a Mac (a tar made there, an exFAT stick) holds "._<name>.wav" AppleDouble files
    beside every clip. They end in .wav but are not audio: training stopped at the first one ("cannot read
    audio file .../._0000beef_nohash_0.wav: Format not recognised")."""
    root = speech_commands_copy(tmp_path / "sc")
    for wav in list(root.glob("*/*.wav")):
        (wav.parent / f"._{wav.name}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 4000)
    (root / "yes" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    corpus = read_corpus(root)
    assert len(corpus.utterances) == 12 and not any(u.path.name.startswith(".") for u in corpus.utterances)
    out = tmp_path / "A.pt"
    call_command("train_classifier", "--data", str(root), "--out", str(out), "--epochs", "1", "--batch-size", "4", "--device", "cpu", verbosity=0)
    assert load(out).classes == ["no", "up", "yes"]


def test_a_word_folder_named_in_decomposed_unicode_matches_its_composed_list_entries(tmp_path):
    """macOS stores "schön" decomposed (o + combining diaeresis); the lists, written by any script, hold it
    composed. The reader refused the copy: "validation_list.txt names a file that does not exist"."""
    root = speech_commands_copy(tmp_path / "sc", words={"schön": 300.0, "up": 900.0})
    (root / "schön").rename(root / unicodedata.normalize("NFD", "schön"))
    corpus = read_corpus(root)
    assert corpus.classes == ["schön", "up"]  # one spelling, whatever the disk keeps
    assert [len(corpus.split(s)) for s in ("train", "validation", "test")] == [4, 2, 2]
    assert all(u.path.is_file() for u in corpus.utterances)


def test_split_lists_written_on_windows_name_the_same_files(tmp_path):
    """A list saved by a Windows tool ("yes\\0003beef_nohash_0.wav", CRLF) or by `find .` ("./yes/...")."""
    root = speech_commands_copy(tmp_path / "sc")
    test = (root / "testing_list.txt").read_text().split()
    (root / "testing_list.txt").write_bytes("".join(e.replace("/", "\\") + "\r\n" for e in test).encode())
    validation = (root / "validation_list.txt").read_text().split()
    (root / "validation_list.txt").write_text("".join(f"./{e}\n" for e in validation))
    corpus = read_corpus(root)
    assert sorted(u.relpath for u in corpus.split("test")) == sorted(test)
    assert sorted(u.relpath for u in corpus.split("validation")) == sorted(validation)


def test_wavs_of_every_common_format_train_together(tmp_path):
    """Clips at 8, 16, 44.1 and 48 kHz, stereo, 8/16/24-bit and float, shorter and longer than 1 s, one train;
    features of one sound agree across rates (resampled to the feature rate, not read as if 22,050 Hz)."""
    from generation.features import PAPER, extract_files

    root = speech_commands_copy(tmp_path / "sc")
    formats = [(48000, "PCM_16", 2, 0.8), (8000, "PCM_16", 1, 0.3), (44100, "PCM_24", 1, 1.6), (16000, "FLOAT", 2, 0.8),
               (16000, "PCM_U8", 1, 0.8), (22050, "PCM_16", 1, 0.8)]
    for i, wav in enumerate(sorted(root.glob("[!_]*/*.wav"))):
        rate, subtype, channels, seconds = formats[i % len(formats)]
        clip = _tone(WORDS[wav.parent.name], seconds, rate)
        sf.write(wav, np.stack([clip, 0.5 * clip], axis=1) if channels == 2 else clip, rate, subtype=subtype)
    (root / "yes" / "0000beef_nohash_0.wav").rename(root / "yes" / "0000beef_nohash_0.WAV")
    out = tmp_path / "A.pt"
    call_command("train_classifier", "--data", str(root), "--out", str(out), "--epochs", "1", "--batch-size", "4", "--device", "cpu", verbosity=0)
    assert load(out).classes == ["no", "up", "yes"]
    same = tmp_path / "same"
    same.mkdir()
    for rate in (22050, 8000, 16000, 44100, 48000):
        sf.write(same / f"{rate}.wav", _tone(500.0, 0.7, rate), rate)
    feats = extract_files([same / f"{rate}.wav" for rate in (22050, 8000, 16000, 44100, 48000)], PAPER)
    assert np.abs(feats[1:] - feats[0]).mean() < 0.01


@pytest.mark.parametrize("content, message", [
    (b"", "cannot read audio file"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "cannot read audio file"),
])
def test_an_unreadable_clip_stops_training_with_one_line_naming_it(tmp_path, content, message):
    root = speech_commands_copy(tmp_path / "sc")
    (root / "up" / "0000beef_nohash_0.wav").write_bytes(content)
    with pytest.raises(CommandError, match=message) as info:
        call_command("train_classifier", "--data", str(root), "--out", str(tmp_path / "A.pt"), "--epochs", "1", "--device", "cpu", verbosity=0)
    assert "up/0000beef_nohash_0.wav" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "A.pt").exists()


def test_test_speakers_heard_in_training_are_named_beside_the_accuracy(tmp_path):
    """Lists a user made by file, not by speaker, put test speakers in training too: the run still reported
    its accuracy on "held-out clips" with no word of it (only metrics.json said so)."""
    import io

    root = speech_commands_copy(tmp_path / "sc")
    with (root / "testing_list.txt").open("a") as fh:
        fh.write("yes/0000beef_nohash_0.wav\n")
    out, err = io.StringIO(), io.StringIO()
    call_command("train_classifier", "--data", str(root), "--out", str(tmp_path / "A.pt"), "--epochs", "1", "--device", "cpu",
                 verbosity=0, stdout=out, stderr=err)
    assert "test accuracy" in out.getvalue()
    assert err.getvalue().count("\n") == 1
    assert "warning: 1 of the 2 test speakers" in err.getvalue() and "'0000beef'" in err.getvalue()
    assert "not on unseen speakers" in err.getvalue()
    assert load(tmp_path / "A.pt").metrics["test_speakers_unseen_in_training"] is False
    clean = io.StringIO()
    call_command("train_classifier", "--data", str(speech_commands_copy(tmp_path / "sc2")), "--out", str(tmp_path / "B.pt"),
                 "--epochs", "1", "--device", "cpu", verbosity=0, stdout=io.StringIO(), stderr=clean)
    assert clean.getvalue() == ""
