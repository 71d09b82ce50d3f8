"""Manifests a researcher made by hand, with the audio their own tools wrote, loaded by `load_stimuli`.

Valid input loads; bad input is one line, exit status 1, and nothing loaded. What a listener can fetch
is bare 16-bit mono wav whatever the source file was, so no tag or format tells the word.
"""
from __future__ import annotations

import csv
import re
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from django.core.management import call_command
from django.core.management.base import CommandError

from evaluation.clean_audio import chunk_ids
from evaluation.models import Experiment, Stimulus
from evaluation.stimuli import load_manifest
from hearsay.errors import HearsayError
from tests.helpers.survey import media_files

WORDS = ("down", "no", "up", "yes")


def _tone(rate: int, seconds: float = 0.6, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _tagged(path: Path, samples: np.ndarray, rate: int, word: str, **kw) -> None:
    """An audio file whose metadata names its word, as editors and recorders write it."""
    with sf.SoundFile(path, "w", samplerate=rate, channels=1 if samples.ndim == 1 else samples.shape[1], **kw) as fh:
        fh.title = f"{word} take 3"
        fh.comment = f"word={word}"
        fh.write(samples)


def hand_made_set(folder: Path, files: dict[str, dict]) -> Path:
    """A manifest with one row per file: `files` maps the manifest's `file` text to how it is written."""
    rows = []
    for i, (text, spec) in enumerate(files.items()):
        word = WORDS[i % len(WORDS)]
        target = folder.joinpath(*text.replace("\\", "/").split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        _tagged(target, spec.get("samples", _tone(spec.get("rate", 16000))), spec.get("rate", 16000), word,
                **{k: v for k, v in spec.items() if k in ("format", "subtype")})
        rows.append({"stimulus_id": f"s{i:02d}", "file": text, "word": word, "method": "tts", "init": "none",
                     "stage": "after", "pair_id": "", "notes": "from the lab's recorder"})
    with (folder / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "manifest.csv"


def _stored(experiment: str) -> list[bytes]:
    return [s.audio.open("rb").read() for s in Stimulus.objects.filter(experiment__slug=experiment)]


@pytest.mark.django_db
def test_wav_variants_and_other_formats_load_and_are_served_as_bare_wav(media, tmp_path):
    """24-bit or multi-channel wavs from sox, ffmpeg or a DAW are WAVE_FORMAT_EXTENSIBLE ("WAVEX"), long
    recordings RF64; a researcher may also hand in FLAC, Ogg or AIFF, or a FLAC named .wav. All were refused
    ("... is WAVEX, not a wav file") although every clip is decoded and stored again anyway."""
    manifest = hand_made_set(tmp_path / "set", {
        "wav/a.wav": {"rate": 48000, "format": "WAVEX", "subtype": "PCM_24"},
        "wav/b.wav": {"rate": 44100, "format": "RF64"},
        "wav/c.wav": {"rate": 44100, "format": "FLAC"},
        "wav/d.flac": {"rate": 16000},
        "wav/e.ogg": {"rate": 22050},
        "wav/f.aiff": {"rate": 16000},
        "wav/g.wav": {"rate": 48000, "samples": np.stack([_tone(48000)] * 2, axis=1), "subtype": "FLOAT"},
        "wav/h.wav": {"rate": 8000, "subtype": "PCM_U8"},
    })
    assert b"take 3" in (manifest.parent / "wav" / "a.wav").read_bytes()  # the tags are really there
    call_command("load_stimuli", str(manifest), "--experiment", "lab", "--create")
    tests = Stimulus.objects.filter(experiment__slug="lab", kind="test")
    assert tests.count() == 8
    assert tests.get(stimulus_id="s00").provenance["notes"] == "from the lab's recorder"
    formats = set()
    for data in _stored("lab"):
        assert chunk_ids(data) == ["fmt ", "data"]
        assert b"take 3" not in data and b"word=" not in data
        info = sf.info(io.BytesIO(data))
        formats.add((info.format, info.samplerate, info.channels, info.subtype))
    assert formats == {("WAV", 48000, 1, "PCM_16")}  # one rate for all: the most common test rate, the highest on a tie


@pytest.mark.django_db
def test_a_manifest_made_on_windows_names_files_with_backslashes(media, tmp_path):
    """"wav\\sub folder\\a.wav" (Excel on Windows, a PowerShell export) named no file on Linux."""
    manifest = hand_made_set(tmp_path / "set", {f"wav\\sub folder\\{w}.wav": {} for w in WORDS} | {"./wav/x.wav": {}})
    call_command("load_stimuli", str(manifest), "--experiment", "win", "--create")
    assert Stimulus.objects.filter(experiment__slug="win", kind="test").count() == 5
    assert Stimulus.objects.get(stimulus_id="s00").provenance["manifest_file"] == "wav\\sub folder\\down.wav"


def _excel(manifest: Path, delimiter: str = ",", blank_columns: int = 0) -> None:
    """Save the manifest as a spreadsheet does: UTF-8 BOM, CRLF, the chosen separator, touched blank columns."""
    with manifest.open(newline="", encoding="utf-8") as fh:
        table = [row + [""] * blank_columns for row in csv.reader(fh)]
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerows(table)
    manifest.write_bytes(b"\xef\xbb\xbf" + out.getvalue().encode())


@pytest.mark.django_db
def test_a_spreadsheet_saving_blank_columns_past_the_last_one_loads(media, tmp_path):
    """Excel writes ",," past the last column once any cell there was touched: the header then had two nameless
    columns and the load failed with "a column name appears twice"."""
    manifest = hand_made_set(tmp_path / "set", {f"{w}.wav": {} for w in WORDS})
    _excel(manifest, blank_columns=2)
    call_command("load_stimuli", str(manifest), "--experiment", "xl", "--create")
    stim = Stimulus.objects.get(experiment__slug="xl", stimulus_id="s00")
    assert "" not in stim.provenance and stim.provenance["notes"] == "from the lab's recorder"


@pytest.mark.django_db
def test_a_value_under_a_nameless_column_is_refused_with_its_line(media, tmp_path):
    manifest = hand_made_set(tmp_path / "set", {f"{w}.wav": {} for w in WORDS})
    with manifest.open(newline="", encoding="utf-8") as fh:
        table = [row + ["", ""] for row in csv.reader(fh)]
    table[3][-1] = "ask Maria"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(table)
    with pytest.raises(CommandError, match=r"manifest.csv:4: column 10 has no name in the header but holds 'ask Maria'"):
        call_command("load_stimuli", str(manifest), "--experiment", "xl", "--create")
    assert not Experiment.objects.exists() and media_files(media) == []


@pytest.mark.parametrize("delimiter, encoding", [(";", "utf-8-sig"), ("\t", "utf-8-sig"), ("\t", "utf-16")])
@pytest.mark.django_db
def test_a_manifest_saved_with_semicolons_tabs_or_as_unicode_text_loads(media, tmp_path, delimiter, encoding):
    """Excel in most European locales saves "CSV" with ";" (the decimal mark being ","), and "Unicode text" is
    UTF-16 with tabs. The load said the manifest "lacks required column(s): stimulus_id, file, word, ..."
    (or could not decode it) although every column is there; MTurk results files in these forms already load."""
    manifest = hand_made_set(tmp_path / "set", {f"{w}.wav": {} for w in WORDS})
    with manifest.open(newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    table[1][-1] = "0,93; a note"  # a cell holding the separator is quoted, as spreadsheets do
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerows(table)
    manifest.write_bytes(out.getvalue().encode(encoding))
    call_command("load_stimuli", str(manifest), "--experiment", "eu", "--create", stdout=io.StringIO())
    assert Stimulus.objects.filter(kind="test").count() == 4
    assert Stimulus.objects.get(stimulus_id="s00").provenance["notes"] == "0,93; a note"
    assert sorted(Experiment.objects.get().words) == sorted(WORDS)


@pytest.mark.parametrize("text", ["C:\\stimuli\\a.wav", "D:a.wav", "\\\\labserver\\share\\a.wav"])
@pytest.mark.django_db
def test_a_windows_absolute_path_is_refused_as_outside_the_folder(media, tmp_path, text):
    manifest = hand_made_set(tmp_path / "set", {f"{w}.wav": {} for w in WORDS})
    manifest.write_text(manifest.read_text().replace("down.wav", text, 1))
    with pytest.raises(CommandError, match="must be a path inside the manifest's folder"):
        call_command("load_stimuli", str(manifest), "--experiment", "abs", "--create")
    assert not Experiment.objects.exists() and media_files(media) == []


@pytest.mark.django_db
def test_gold_clips_with_long_file_names_get_distinct_ids(media, tmp_path):
    """Ids were "corpus:<word>/<file>" cut to 64 characters: two recordings of one session differing only at
    the end of a long name got the same id and the load failed with "two clips of one load share a key"."""
    root = tmp_path / "corpus"
    for word in WORDS:
        (root / word).mkdir(parents=True)
        for take in range(3):
            sf.write(root / word / f"participant_0042_session_2023-05-17_microphone_b_take_{take:04d}.wav", _tone(16000, 0.5), 16000)
    (root / "testing_list.txt").write_text("".join(f"{w}/participant_0042_session_2023-05-17_microphone_b_take_0000.wav\n" for w in WORDS))
    manifest = hand_made_set(tmp_path / "set", {f"{w}.wav": {} for w in WORDS})
    load_manifest(manifest, "gold", create=True, gold_from_corpus=root, gold_per_word=2)
    gold = Stimulus.objects.filter(condition="gold-corpus")
    assert gold.count() == 8 and len({s.stimulus_id for s in gold}) == 8
    assert all(len(s.stimulus_id) <= 64 for s in gold)
    assert load_manifest(manifest, "gold", gold_from_corpus=root, gold_per_word=2).added == {}  # a reload is a no-op


@pytest.mark.django_db
def test_gold_from_a_corpus_lacking_a_manifest_word_is_refused_not_silently_skipped(media, tmp_path):
    """A corpus whose folder is "Yes" (or that lacks "up") gave no gold clip of that word, silently: listeners
    were then never checked on it, and the researcher learned it only from the admin's counts."""
    root = tmp_path / "corpus"
    for word in ("down", "no", "Yes"):
        (root / word).mkdir(parents=True)
        sf.write(root / word / "spk0_nohash_0.wav", _tone(16000, 0.5), 16000)
    (root / "testing_list.txt").write_text("down/spk0_nohash_0.wav\n")
    manifest = hand_made_set(tmp_path / "set", {f"{w}.wav": {} for w in WORDS})
    with pytest.raises(CommandError, match=r"no gold clips of manifest word\(s\) 'up', 'yes': the corpus at .* "
                                           r"has no such word folder \(its words: Yes, down, no\)") as caught:
        call_command("load_stimuli", str(manifest), "--experiment", "g", "--create", "--gold-from-corpus", str(root))
    assert caught.value.returncode == 1 and "\n" not in str(caught.value)
    assert not Experiment.objects.exists() and media_files(media) == []


@pytest.mark.django_db
def test_gold_matches_a_word_spelled_in_another_unicode_form(media, tmp_path):
    """A manifest written from macOS file names holds "schön" decomposed; the corpus folder is composed
    (or the other way round). The two look the same, yet the word got no gold clip, silently."""
    import unicodedata

    root = tmp_path / "corpus"
    for word in ("schön", "up"):
        (root / word).mkdir(parents=True)
        sf.write(root / word / "spk0_nohash_0.wav", _tone(16000, 0.5), 16000)
    (root / "testing_list.txt").write_text("up/spk0_nohash_0.wav\n")
    manifest = hand_made_set(tmp_path / "set", {"a.wav": {}, "b.wav": {}})
    manifest.write_text(manifest.read_text().replace("down", unicodedata.normalize("NFD", "schön")).replace(",no,", ",up,"))
    load_manifest(manifest, "umlaut", create=True, gold_from_corpus=root)
    gold = Stimulus.objects.filter(condition="gold-corpus")
    assert sorted(unicodedata.normalize("NFC", s.word) for s in gold) == ["schön", "up"]
    assert set(gold.values_list("word", flat=True)) <= set(Experiment.objects.get(slug="umlaut").words)


@pytest.mark.parametrize("link", ["wav/a.wav", "wav"])
@pytest.mark.django_db
def test_a_link_out_of_the_set_folder_is_refused_like_a_path_out_of_it(media, tmp_path, link):
    """"../private.wav" is refused, but a link in the set (one unpacked from a collaborator's zip) reached any
    recording on the researcher's disk and put it on the survey, served to anyone who takes it."""
    private = tmp_path / "home" / "private"
    private.mkdir(parents=True)
    sf.write(private / "a.wav", _tone(16000), 16000)
    manifest = hand_made_set(tmp_path / "set", {"wav/a.wav": {}, "wav/b.wav": {}, "c.wav": {}})
    target = manifest.parent / link
    for p in sorted(target.rglob("*"), reverse=True) if target.is_dir() else []:
        p.unlink()
    target.rmdir() if target.is_dir() else target.unlink()
    target.symlink_to(private / "a.wav" if link.endswith(".wav") else private, target_is_directory=not link.endswith(".wav"))
    if link == "wav":
        sf.write(private / "b.wav", _tone(16000), 16000)
    with pytest.raises(CommandError, match=r"manifest.csv:2: file 'wav/a.wav' is a link to .*private/a.wav, outside the manifest's folder"):
        call_command("load_stimuli", str(manifest), "--experiment", "ln", "--create")
    assert not Experiment.objects.exists() and media_files(media) == []


@pytest.mark.django_db
def test_links_inside_the_set_folder_and_a_linked_set_folder_load(media, tmp_path):
    manifest = hand_made_set(tmp_path / "real" / "set", {"wav/a.wav": {}, "wav/b.wav": {}})
    (manifest.parent / "alias").mkdir()
    (manifest.parent / "alias" / "c.wav").symlink_to(manifest.parent / "wav" / "a.wav")
    manifest.write_text(manifest.read_text() + "s02,alias/c.wav,up,tts,none,after,,\n")
    (tmp_path / "linked").symlink_to(manifest.parent, target_is_directory=True)
    call_command("load_stimuli", str(tmp_path / "linked" / "manifest.csv"), "--experiment", "ok", "--create")
    assert Stimulus.objects.filter(kind="test").count() == 3


def _results(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A minimal requester-website results file: (worker, audio URL, answer) per assignment."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["HITId", "AssignmentId", "WorkerId", "AssignmentStatus", "Input.audio_url", "Answer.heard-word.label"])
        for n, (worker, url, answer) in enumerate(rows):
            writer.writerow([f"H{n}", f"A{n}", worker, "Submitted", url, answer])
    return path


@pytest.mark.django_db
def test_the_same_file_name_in_two_condition_folders_loads_and_joins_by_its_folder(media, tmp_path):
    """cond1/clip01.wav beside cond2/clip01.wav (a common hand-made layout) was refused: 'file name already used'."""
    from analysis.table import read_mturk

    files = {f"{cond}/clip0{n}.wav": {"samples": _tone(16000, freq=300 + 100 * n + 7 * len(cond))}
             for cond in ("cond1", "cond2") for n in (1, 2)}
    manifest = hand_made_set(tmp_path / "set", files)
    call_command("load_stimuli", str(manifest), "--experiment", "conds", "--create")
    assert Stimulus.objects.filter(experiment__slug="conds", kind="test").count() == 4
    base = "https://files.example.org/study"
    table, info = read_mturk(_results(tmp_path / "r.csv", [("W1", f"{base}/cond2/clip01.wav", "up"),
                                                            ("W1", f"{base}/cond1/clip01.wav", "down")]), manifest)
    assert info["invalid_rows"] == []
    assert dict(zip(table["stimulus"], table["answer"])) == {"s02": "up", "s00": "down"}
    with pytest.raises(HearsayError, match="fits several files of manifest .*cond1/clip01.wav, cond2/clip01.wav"):
        read_mturk(_results(tmp_path / "flat.csv", [("W1", f"{base}/clip01.wav", "up")]), manifest)


@pytest.mark.parametrize("word", ["unknown", "None", "?", "can't tell"])
@pytest.mark.django_db
def test_a_word_that_means_cant_tell_in_answers_is_refused(media, tmp_path, word):
    """Before: a class named 'unknown' loaded, and every listener's answer 'unknown' was stored as can't tell."""
    manifest = hand_made_set(tmp_path / "set", {f"{w}.wav": {} for w in WORDS})
    manifest.write_text(manifest.read_text(encoding="utf-8").replace(",down,", f",\"{word}\",", 1), encoding="utf-8")
    with pytest.raises(CommandError, match=re.escape(f"word {word!r} is how answers say can't tell")):
        call_command("load_stimuli", str(manifest), "--experiment", "reserved", "--create")
    assert not Experiment.objects.exists() and media_files(media) == []
