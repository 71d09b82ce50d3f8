"""Machine listeners answer through the survey's own Response path, as listener kind 'machine'."""
from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from evaluation.export import long_table
from evaluation.models import Participant, Response, Stimulus
from generation import checkpoint
from generation.features import FeatureConfig
from generation.nets import PaperClassifier
from tests.helpers.survey import make_experiment


@pytest.fixture
def classifier_b(tmp_path):
    import torch

    torch.manual_seed(0)
    words = ["down", "go", "left", "yes", "bed"]
    path = tmp_path / "B.pt"
    checkpoint.save(
        path,
        checkpoint.Checkpoint(
            kind="classifier", arch="paper", arch_kwargs={"n_classes": len(words)}, model=PaperClassifier(len(words)),
            feature_config=FeatureConfig(), classes=words,
        ),
    )
    return path


@pytest.mark.django_db
def test_evaluator_answers_every_test_and_gold_clip_once_without_using_up_human_slots(media, classifier_b):
    experiment = make_experiment()
    clips = experiment.stimuli.filter(kind__in=[Stimulus.Kind.TEST, Stimulus.Kind.GOLD])
    call_command("listen", experiment="demo", machine="evaluator", checkpoint=str(classifier_b), verbosity=0)
    machine = Participant.objects.get(kind="machine")
    assert machine.source == "machine" and machine.finished_at is not None and machine.pay_ok is False
    answers = Response.objects.filter(participant=machine)
    assert answers.count() == clips.count()
    assert set(answers.values_list("answer", flat=True)) <= set(experiment.words)
    assert all(r.play_count == 1 and r.listened_to_end for r in answers)
    assert set(experiment.stimuli.values_list("answer_count", flat=True)) == {0}
    table = long_table("demo")
    assert set(table["listener_kind"]) == {"machine"} and table["listener"].iloc[0].startswith("machine:evaluator:")

    call_command("listen", experiment="demo", machine="evaluator", checkpoint=str(classifier_b), verbosity=0)
    assert Response.objects.filter(participant=machine).count() == clips.count()


@pytest.mark.django_db
def test_pocketsphinx_listener_names_the_clean_gold_words(media):
    experiment = make_experiment()
    call_command("listen", experiment="demo", machine="asr", verbosity=0)
    answers = Response.objects.filter(participant__worker_id="machine:asr:pocketsphinx")
    assert answers.count() == experiment.stimuli.filter(kind__in=["test", "gold"]).count()
    gold = answers.filter(stimulus__kind="gold")
    assert sum(r.answer == r.stimulus.word for r in gold) >= gold.count() // 2
    assert set(answers.values_list("answer", flat=True)) <= set(experiment.words) | {"none"}


@pytest.mark.django_db
def test_bad_listener_requests_are_one_line_errors(media, tmp_path):
    make_experiment()
    with pytest.raises(CommandError, match="no experiment named 'nope'"):
        call_command("listen", experiment="nope", machine="asr")
    with pytest.raises(CommandError, match="needs --checkpoint"):
        call_command("listen", experiment="demo", machine="evaluator")
    with pytest.raises(CommandError, match="checkpoint not found"):
        call_command("listen", experiment="demo", machine="evaluator", checkpoint=str(tmp_path / "missing.pt"))
    assert not Response.objects.exists()


@pytest.mark.django_db
def test_pocketsphinx_ahead_in_a_worker_gives_every_clip_the_answer_it_gets_here(media):
    from evaluation.machine import recognize_ahead
    from generation import workers

    experiment = make_experiment()
    call_command("listen", experiment="demo", machine="asr", verbosity=0)
    here = dict(Response.objects.values_list("stimulus__stimulus_id", "answer"))
    Response.objects.all().delete()
    Participant.objects.filter(kind="machine").delete()
    with workers.pool(1) as pool:
        store = recognize_ahead(experiment, pool)
        report = store()
    assert dict(Response.objects.values_list("stimulus__stimulus_id", "answer")) == here and report.answered == len(here) >= 4
    assert report.summary().startswith(f"machine:asr:pocketsphinx: {len(here)} answers saved; accuracy ")


@pytest.mark.django_db
def test_an_interrupted_listener_keeps_the_chunks_it_stored_and_goes_on(media, monkeypatch):
    from evaluation import machine

    experiment = make_experiment()
    clips = experiment.stimuli.filter(kind__in=[Stimulus.Kind.TEST, Stimulus.Kind.GOLD]).count()
    monkeypatch.setattr(machine, "STORE_EVERY", 2)
    heard = []

    def judge(wave, rate, stimulus):
        if len(heard) == 5:
            raise KeyboardInterrupt
        heard.append(stimulus.stimulus_id)
        return stimulus.word, None

    with pytest.raises(KeyboardInterrupt):
        machine.listen(experiment, "machine:test", judge, progress=False)
    assert Response.objects.count() == 4  # two chunks of two; the fifth clip's chunk was never stored
    heard.clear()
    report = machine.listen(experiment, "machine:test", lambda w, r, s: (s.word, None), progress=False)
    assert (report.skipped, report.answered, Response.objects.count()) == (4, clips - 4, clips)
