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
