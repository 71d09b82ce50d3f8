"""The README's main job, end to end at a tiny size: corpus -> models -> stimuli -> survey -> listeners -> report."""
from __future__ import annotations

import csv
import io

import pytest
from django.core.management import call_command

from evaluation.models import Experiment, Participant, Response


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_demo_runs_the_whole_study_and_skips_finished_steps_when_rerun(tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    out = tmp_path / "demo"
    args = dict(
        out=str(out), words="yes,no,up", speakers=10, epochs=2, ae_epochs=1, per_class=1, objective_n=4, no_serve=True,
    )
    log = io.StringIO()
    call_command("demo", stdout=log, **args)

    for path in ["corpus/testing_list.txt", "models/A.pt", "models/B.pt", "models/AE.pt", "stimuli/manifest.csv",
                 "stimuli/run.json", "objective/summary.csv", "report/report.html", "report/run.json"]:
        assert (out / path).exists(), path
    with open(out / "stimuli" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["condition"] for r in rows} >= {"1-classifier-noise", "2-classifier-test", "3-decoder-noise", "4-decoder-test"}

    experiment = Experiment.objects.get(slug="demo")
    assert experiment.status == "live" and experiment.task == "identification"
    machines = set(Participant.objects.filter(kind="machine").values_list("worker_id", flat=True))
    assert {m.split(":")[1] for m in machines} == {"evaluator", "asr"}
    answered = Response.objects.filter(participant__kind="machine").count()
    assert answered == 2 * experiment.stimuli.filter(kind__in=["test", "gold"]).count()
    assert "machine" in (out / "report" / "report.html").read_text()
    assert "Researcher login: researcher / " in log.getvalue()

    again = io.StringIO()
    call_command("demo", stdout=again, **args)
    assert again.getvalue().count("already done, skipped") >= 7
    assert Response.objects.filter(participant__kind="machine").count() == answered


@pytest.mark.django_db
def test_demo_refuses_fewer_than_one_job_in_one_line(tmp_path):
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="--jobs must be at least 1, got 0"):
        call_command("demo", out=str(tmp_path / "demo"), jobs=0, no_serve=True)
    assert not (tmp_path / "demo" / "corpus").exists()
