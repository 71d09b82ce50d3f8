"""load_stimuli: validates everything first, loads idempotently, and an error loads nothing."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from django.core.management import call_command
from django.db.models import Count
from django.core.management.base import CommandError

from evaluation.models import Experiment, Stimulus
from evaluation.stimuli import load_manifest
from hearsay.errors import HearsayError
from tests.helpers.survey import FIXTURE, media_files


@pytest.fixture
def copy(tmp_path) -> Path:
    """A writable copy of the fixture stimulus set."""
    target = tmp_path / "set"
    shutil.copytree(FIXTURE.parent, target)
    return target / "manifest.csv"


def rewrite(manifest: Path, change) -> None:
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames), list(reader)
    fields, rows = change(fields, rows)
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.django_db
def test_loading_creates_test_gold_trap_and_practice_clips_under_opaque_names(media):
    call_command("load_stimuli", str(FIXTURE), "--experiment", "e1", "--create", "--ratings-per-stimulus", "5")
    experiment = Experiment.objects.get(slug="e1")
    assert experiment.words == ["down", "no", "up", "yes"] and experiment.ratings_per_stimulus == 5
    kinds = dict(Stimulus.objects.values_list("kind").annotate(n=Count("id")))
    assert kinds == {"test": 12, "gold": 4, "trap": 4, "practice": 2}
    for stim in Stimulus.objects.all():
        name = Path(stim.audio.name).name
        assert stim.word not in name and stim.stimulus_id not in name and len(name) == 36
    traps = Stimulus.objects.filter(kind="trap")
    assert {t.expected_answer for t in traps} >= {"none"}
    assert all(t.provenance["text"].startswith("please select") for t in traps)
    original = Stimulus.objects.filter(kind="gold").first()
    assert original.stage == "original" and original.condition == "original" and original.expected_answer == original.word
    assert "status" in Stimulus.objects.filter(kind="test").first().provenance


@pytest.mark.django_db
def test_loading_the_same_manifest_twice_changes_nothing(media):
    load_manifest(FIXTURE, "e1", create=True)
    before = sorted(Stimulus.objects.values_list("stimulus_id", "audio", "sha256"))
    files = sorted(media_files(media))
    report = load_manifest(FIXTURE, "e1", create=True)
    assert report.added == {} and report.unchanged == 16
    assert sorted(Stimulus.objects.values_list("stimulus_id", "audio", "sha256")) == before
    assert sorted(media_files(media)) == files


@pytest.mark.django_db
def test_a_changed_file_for_a_known_stimulus_is_an_error(media, copy):
    load_manifest(copy, "e1", create=True)
    first = next(csv.DictReader(copy.open()))
    sf.write(copy.parent / first["file"], np.zeros(1600), 16000)
    with pytest.raises(HearsayError, match="different audio"):
        load_manifest(copy, "e1")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f, r: ([c for c in f if c != "stage"], [{k: v for k, v in x.items() if k != "stage"} for x in r]), "lacks required column"),
        (lambda f, r: (f, r[:1] + [dict(r[1], stimulus_id=r[0]["stimulus_id"])] + r[2:]), "duplicate stimulus_id"),
        (lambda f, r: (f, r[:-1] + [dict(r[-1], file="wav/missing.wav")]), "does not exist"),
        (lambda f, r: (f, r[:-1] + [dict(r[-1], file="../outside.wav")]), "inside the manifest"),
        (lambda f, r: (f, r[:-1] + [dict(r[-1], stage="later")]), "stage 'later'"),
        (lambda f, r: (f, r[:-1] + [dict(r[-1], init="random")]), "init 'random'"),
        (lambda f, r: (f, r[:-1] + [dict(r[-1], file="manifest.csv")]), "not a readable audio file"),
    ],
)
@pytest.mark.django_db
def test_a_bad_manifest_loads_nothing(media, copy, change, message):
    rewrite(copy, change)
    with pytest.raises(CommandError, match=message):
        call_command("load_stimuli", str(copy), "--experiment", "e1", "--create")
    assert not Experiment.objects.exists() and not Stimulus.objects.exists()
    assert media_files(media) == []


@pytest.mark.django_db
def test_a_clip_holding_nan_samples_loads_nothing(media, copy):
    """A float wav with NaN samples once loaded as garbage audio, with only a numpy warning."""
    with copy.open(newline="", encoding="utf-8") as handle:
        last = list(csv.DictReader(handle))[-1]
    samples = np.zeros(8000, dtype=np.float32)
    samples[100] = np.nan
    sf.write(copy.parent / last["file"], samples, 16000, subtype="FLOAT")
    with pytest.raises(CommandError, match="NaN or infinite samples"):
        call_command("load_stimuli", str(copy), "--experiment", "e1", "--create")
    assert not Experiment.objects.exists() and not Stimulus.objects.exists()
    assert media_files(media) == []


@pytest.mark.django_db
def test_words_must_belong_to_the_experiments_word_list(media, copy):
    with pytest.raises(CommandError, match="not in the experiment's word list: up, yes"):
        call_command("load_stimuli", str(copy), "--experiment", "e1", "--create", "--words", "down", "no")
    assert not Experiment.objects.exists()
    call_command("load_stimuli", str(copy), "--experiment", "e1", "--create", "--words", "yes", "no", "up", "down", "left")
    assert Experiment.objects.get().words == ["yes", "no", "up", "down", "left"]


@pytest.mark.django_db
def test_an_unknown_experiment_needs_create(media):
    with pytest.raises(CommandError, match="no experiment named 'e9'; pass --create"):
        call_command("load_stimuli", str(FIXTURE), "--experiment", "e9")


@pytest.mark.django_db
def test_a_database_failure_midway_leaves_no_files_behind(media, monkeypatch):
    real_create = Stimulus.objects.create
    calls = {"n": 0}

    def flaky(**kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk full")
        return real_create(**kwargs)

    monkeypatch.setattr(Stimulus.objects, "create", flaky)
    with pytest.raises(RuntimeError):
        load_manifest(FIXTURE, "e1", create=True)
    assert not Stimulus.objects.exists() and not Experiment.objects.exists()
    assert media_files(media) == []


@pytest.mark.django_db
def test_gold_clips_can_come_from_a_speech_commands_folder(media, tmp_path):
    root = tmp_path / "sc"
    for word in ("down", "no", "up", "yes", "left"):
        (root / word).mkdir(parents=True)
        for n in range(2):
            sf.write(root / word / f"spk{n}_nohash_0.wav", 0.1 * np.sin(np.arange(1600) / (3 + n)), 16000)
    (root / "testing_list.txt").write_text("yes/spk1_nohash_0.wav\n")
    load_manifest(FIXTURE, "e1", create=True, gold_from_corpus=root)
    gold = Stimulus.objects.filter(kind="gold", condition="gold-corpus")
    assert sorted(gold.values_list("word", flat=True)) == ["down", "no", "up", "yes"]
    assert gold.get(word="yes").provenance["source_file"] == "yes/spk1_nohash_0.wav"  # test split first
