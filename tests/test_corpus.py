"""The Speech Commands V2 reader and the built-in espeak corpus writer."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from django.core.management import CommandError, call_command

from generation.corpus import CorpusSettings, build_corpus, draw_speakers, read_corpus
from hearsay.errors import HearsayError


def _wav(path: Path, seconds: float = 0.1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(16000 * seconds), dtype=np.float32), 16000, subtype="PCM_16")


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """3 words x 3 speakers; speaker c is test, b validation, plus background noise to ignore."""
    root = tmp_path / "sc"
    for word in ("yes", "no", "up"):
        for speaker in ("aaaa0001", "bbbb0002", "cccc0003"):
            _wav(root / word / f"{speaker}_nohash_0.wav")
    _wav(root / "_background_noise_" / "white_noise.wav")
    (root / "validation_list.txt").write_text("no/bbbb0002_nohash_0.wav\nup/bbbb0002_nohash_0.wav\nyes/bbbb0002_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("no/cccc0003_nohash_0.wav\nup/cccc0003_nohash_0.wav\nyes/cccc0003_nohash_0.wav\n")
    return root


def test_reader_splits_speakers_and_sorted_classes(tiny):
    corpus = read_corpus(tiny)
    assert corpus.classes == ["no", "up", "yes"]
    assert len(corpus.utterances) == 9
    assert [str(u.path.relative_to(tiny)) for u in corpus.utterances] == sorted(str(u.path.relative_to(tiny)) for u in corpus.utterances)
    assert {u.speaker for u in corpus.split("train")} == {"aaaa0001"}
    assert {u.speaker for u in corpus.split("validation")} == {"bbbb0002"}
    assert {u.speaker for u in corpus.split("test")} == {"cccc0003"}
    assert corpus.labels(corpus.split("test")) == [0, 1, 2]
    assert all(u.path.is_absolute() and "_background_noise_" not in str(u.path) for u in corpus.utterances)


def test_fingerprint_tracks_files_and_splits(tiny):
    before = read_corpus(tiny).fingerprint()
    assert read_corpus(tiny).fingerprint() == before
    _wav(tiny / "yes" / "aaaa0001_nohash_0.wav", seconds=0.2)
    changed = read_corpus(tiny).fingerprint()
    assert changed != before
    (tiny / "validation_list.txt").write_text("no/bbbb0002_nohash_0.wav\n")
    assert read_corpus(tiny).fingerprint() != changed


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda r: r.rename(r.parent / "elsewhere"), "does not exist"),
        (lambda r: [p.unlink() for p in r.glob("*/*.wav")], "no .wav files"),
        (lambda r: (r / "empty").mkdir(), "holds no .wav files"),
        (lambda r: (r / "testing_list.txt").write_text("yes/nobody_nohash_0.wav\n"), "names a file that does not exist"),
        (lambda r: (r / "testing_list.txt").unlink(), "no test utterances"),
        (lambda r: (r / "validation_list.txt").write_text("".join(f"{w}/aaaa0001_nohash_0.wav\n" for w in ("yes", "no", "up"))
                                                          + "".join(f"{w}/bbbb0002_nohash_0.wav\n" for w in ("yes", "no", "up"))), "no training utterances"),
        (lambda r: (r / "validation_list.txt").write_text("yes/cccc0003_nohash_0.wav\n"), "listed in both"),
    ],
)
def test_reader_rejects_bad_layouts_with_one_line(tiny, breakage, message):
    breakage(tiny)
    with pytest.raises(HearsayError, match=message) as info:
        read_corpus(tiny)
    assert "\n" not in str(info.value)


def test_reader_rejects_a_file_and_a_folder_without_word_folders(tmp_path):
    (tmp_path / "file.wav").write_bytes(b"")
    with pytest.raises(HearsayError, match="not a folder"):
        read_corpus(tmp_path / "file.wav")
    with pytest.raises(HearsayError, match="no word folders"):
        read_corpus(tmp_path)


SMALL = CorpusSettings(words=("yes", "no", "up"), speakers=6, seed=3)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built") / "corpus"
    report = build_corpus(out, SMALL, progress=False)
    assert report.written == 18 and report.skipped == 0
    return out


def test_built_corpus_is_speech_commands_layout(built):
    corpus = read_corpus(built)
    assert corpus.classes == ["no", "up", "yes"]
    assert len(corpus.utterances) == 18
    for utt in corpus.utterances:
        info = sf.info(str(utt.path))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")
        assert len(utt.speaker) == 8 and int(utt.speaker, 16) >= 0
        assert utt.path.name == f"{utt.speaker}_nohash_0.wav"
    splits = {name: corpus.speakers(name) for name in ("train", "validation", "test")}
    assert all(splits.values())
    assert not (splits["train"] & splits["test"] or splits["train"] & splits["validation"] or splits["test"] & splits["validation"])
    manifest = json.loads((built / "corpus.json").read_text())
    assert manifest["settings"]["seed"] == 3 and manifest["espeak_version"]
    assert {s["id"] for s in manifest["speakers"]} == set().union(*splits.values())
    assert not (built / ".make_corpus.json").exists()


def test_words_are_voiced_well_above_the_noise(built):
    for utt in read_corpus(built).utterances:
        wave, _ = sf.read(utt.path, dtype="float32")
        frames = wave[: len(wave) // 160 * 160].reshape(-1, 160)
        rms = np.sqrt((frames ** 2).mean(axis=1))
        assert 20 * np.log10(rms.max() / np.percentile(rms, 5)) > 15, utt.path


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(built, tmp_path):
    again = tmp_path / "again"
    build_corpus(again, SMALL, progress=False)
    assert _files(again) == _files(built)
    assert read_corpus(again).fingerprint() == read_corpus(built).fingerprint()
    other = tmp_path / "other"
    build_corpus(other, CorpusSettings(words=("yes",), speakers=3, seed=4), progress=False)
    assert not {p.name for p in (other / "yes").iterdir()} & {p.name for p in (built / "yes").iterdir()}


def test_interrupted_run_resumes_to_the_same_bytes(built, tmp_path, monkeypatch):
    import generation.corpus as corpus_module

    real, calls = corpus_module.render_clip, []

    def interrupt_after_four(*args, **kwargs):
        calls.append(1)
        if len(calls) > 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "resumed"
    monkeypatch.setattr(corpus_module, "render_clip", interrupt_after_four)
    with pytest.raises(KeyboardInterrupt):
        build_corpus(out, SMALL, progress=False)
    monkeypatch.setattr(corpus_module, "render_clip", real)
    assert len(list(out.glob("*/*.wav"))) == 4
    assert not list(out.rglob("*.part")) and not (out / "corpus.json").exists()
    report = build_corpus(out, SMALL, progress=False)
    assert (report.written, report.skipped) == (14, 4)
    assert _files(out) == _files(built)

    next(iter(sorted(out.glob("up/*.wav")))).unlink()
    report = build_corpus(out, SMALL, progress=False)
    assert (report.written, report.skipped) == (1, 17)
    assert _files(out) == _files(built)


def test_speakers_are_distinct_voices():
    speakers = draw_speakers(60, seed=0)
    assert len({s.id for s in speakers}) == 60
    assert len({s.voice for s in speakers}) == 60
    assert [s.split for s in speakers].count("test") == 6 and [s.split for s in speakers].count("validation") == 6
    assert draw_speakers(10, seed=0)[0] == speakers[0]


def test_make_corpus_command_refuses_foreign_or_other_settings(built, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CommandError, match="not empty and is not a corpus"):
        call_command("make_corpus", "--out", str(tmp_path), "--words", "yes,no,up", "--speakers", "6", verbosity=0)
    with pytest.raises(CommandError, match="other settings"):
        call_command("make_corpus", "--out", str(built), "--words", "yes,no,up", "--speakers", "6", "--seed", "9", verbosity=0)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    older = tmp_path / "older"
    older.mkdir()
    (older / "corpus.json").write_text(json.dumps({"format": "hearsay-espeak-corpus/1"}))
    with pytest.raises(CommandError, match="another make_corpus version"):
        call_command("make_corpus", "--out", str(older), verbosity=0)


def test_fingerprint_of_a_built_corpus_covers_its_manifest(built, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    before = read_corpus(copy).fingerprint()
    manifest = json.loads((copy / "corpus.json").read_text())
    manifest["settings"]["seed"] = 99
    (copy / "corpus.json").write_text(json.dumps(manifest))
    assert read_corpus(copy).fingerprint() != before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--words", ""], "no words given"),
        (["--words", "yes,no,42"], "cannot use '42'"),
        (["--words", "yes,yes"], "more than once"),
        (["--speakers", "2"], "at least 3 speakers"),
        (["--noise-db", "loud"], "--noise-db expects"),
        (["--noise-db", "40,20"], "0 <= low <= high"),
    ],
)
def test_make_corpus_command_bad_options_are_one_line(tmp_path, args, message):
    with pytest.raises(CommandError, match=message) as info:
        call_command("make_corpus", "--out", str(tmp_path / "c"), *args, verbosity=0)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "c").exists()


def test_make_corpus_command_writes_and_reports(tmp_path, capsys):
    call_command("make_corpus", "--out", str(tmp_path / "c"), "--words", "go,stop", "--speakers", "3", "--noise-db", "none", verbosity=0)
    assert "6 clips written" in capsys.readouterr().out
    corpus = read_corpus(tmp_path / "c")
    assert corpus.classes == ["go", "stop"] and len(corpus.split("test")) == 2


def test_reader_errors_surface_as_one_line_command_errors(tiny, tmp_path):
    (tiny / "empty").mkdir()
    with pytest.raises(CommandError, match="holds no .wav files") as info:
        call_command("train_classifier", "--data", str(tiny), "--out", str(tmp_path / "A.pt"), "--epochs", "1", verbosity=0)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "A.pt").exists()
