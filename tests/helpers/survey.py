"""The survey seen from a listener's side: the fixture stimulus set as a live experiment, and a listener with cookies."""
from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from pathlib import Path

from django.core.management import call_command
from django.test import Client

from evaluation.models import Assignment, Experiment, Participant, Stimulus
from evaluation.stimuli import load_manifest

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "stimuli" / "manifest.csv"


def media_files(root) -> list[Path]:
    """Every file under the media root: a refused load must leave none behind."""
    return [p for p in Path(root).rglob("*") if p.is_file()] if Path(root).exists() else []


def make_experiment(slug: str = "demo", task: str = "identification", **fields) -> Experiment:
    """The fixture stimulus set (12 test, 4 gold, traps, practice) as a live experiment."""
    load_manifest(FIXTURE, slug, create=True, task=task)
    fields = {"status": "live", "trials_per_listener": 4, "gold_per_listener": 1, "traps_per_listener": 1, "practice_trials": 1, **fields}
    Experiment.objects.filter(slug=slug).update(**fields)
    return Experiment.objects.get(slug=slug)


def exported_batch(slug: str, out: Path, base_url: str = "https://survey.example.org") -> dict[str, str]:
    """The fixture set as a live identification experiment, exported as an MTurk batch into `out`; stimulus id ->
    the clip's URL on the workers' pages."""
    load_manifest(FIXTURE, slug, create=True, task="identification")
    Experiment.objects.filter(slug=slug).update(status="live")
    call_command("mturk", "export-batch", "--experiment", slug, "--out", str(out), "--base-url", base_url,
                 stdout=io.StringIO())
    with (out / "batch_key.csv").open(newline="") as handle:
        return {r["stimulus_id"]: f"{base_url}/batch-audio/{r['audio_name']}" for r in csv.DictReader(handle)}


def right_answer(stimulus: Stimulus, task: str) -> dict:
    if task == "identification":
        return {"answer": stimulus.expected_answer or stimulus.word}
    return {"rating": stimulus.expected_answer if stimulus.expected_answer.isdigit() else "3"}


def let_clip_play(trial: Assignment) -> None:
    """The clip's duration passes, as if the listener heard it (the server refuses answers sooner); the test does not wait."""
    served = Assignment.objects.get(pk=trial.pk)
    if served.first_played_at is not None:
        earlier = served.first_played_at - timedelta(milliseconds=served.clip_ms or 0)
        Assignment.objects.filter(pk=trial.pk).update(first_played_at=earlier)


class Listener:
    """One person with their own cookies."""

    def __init__(self, slug: str, client: Client | None = None, **params):
        self.slug = slug
        self.client = client or Client()
        self.entry = self.client.get(f"/s/{slug}/", params)

    @property
    def participant(self) -> Participant:
        return Participant.objects.get(token=self.client.session[f"hearsay:{self.slug}"])

    def start(self) -> None:
        assert self.client.post(f"/s/{self.slug}/consent", {"agree": "yes"}).status_code == 303
        assert self.client.post(f"/s/{self.slug}/instructions").status_code == 303
        if self.participant.step == "headphones":
            self.client.get(f"/s/{self.slug}/headphones")
            key = self.participant.headphone_key
            self.client.post(f"/s/{self.slug}/headphones", {f"t{i}": k + 1 for i, k in enumerate(key)})

    def current(self):
        """The trial the page shows (None on any other page), read from the page itself.

        Recomputing it here instead would race with other listeners: a clip can fill up
        between the page and the lookup, and the helper would stop before the server ends the study.
        """
        page = self.client.get(f"/s/{self.slug}/trial")
        shown = re.search(rb'name="token" value="([^"]+)"', page.content) if page.status_code == 200 else None
        if shown is None:
            return None
        return Assignment.objects.select_related("stimulus__experiment").get(token=shown.group(1).decode())

    def answer(self, trial, **fields):
        self.client.get(f"/a/{trial.token}")
        let_clip_play(trial)
        data = fields or right_answer(trial.stimulus, trial.stimulus.experiment.task)
        return self.client.post(f"/s/{self.slug}/answer", {"token": trial.token, "ended": "on", "response_ms": 800, **data})

    def finish(self) -> int:
        answered = 0
        while (trial := self.current()) is not None:
            assert self.answer(trial).status_code == 303
            answered += 1
        return answered
