"""Prolific: the study URL to paste and the completion code listeners bring back."""
import io

import pytest
from django.core.management import CommandError, call_command

from evaluation.models import Experiment


@pytest.mark.django_db
def test_prolific_url_prints_the_study_link_with_placeholders_and_the_code():
    Experiment.objects.create(slug="study1", completion_code="C0DE-1")
    out = io.StringIO()
    call_command("prolific_url", experiment="study1", base_url="https://survey.example.org/", stdout=out)
    text = out.getvalue()
    assert "https://survey.example.org/s/study1/?PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}" in text
    assert "Completion code: C0DE-1" in text


@pytest.mark.django_db
def test_prolific_url_refuses_what_prolific_would_not_accept():
    Experiment.objects.create(slug="nocode")
    with pytest.raises(CommandError, match="completion code"):
        call_command("prolific_url", experiment="nocode", base_url="https://survey.example.org")
    Experiment.objects.create(slug="study1", completion_code="C1")
    with pytest.raises(CommandError, match="https://"):
        call_command("prolific_url", experiment="study1", base_url="http://survey.example.org")
    with pytest.raises(CommandError, match="no experiment named 'x'"):
        call_command("prolific_url", experiment="x", base_url="https://survey.example.org")
