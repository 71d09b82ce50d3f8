"""The MTurk study the mturk command tests share: a live experiment, HIT ids, and the MTurk client behind Stubber.

Its fixtures are declared in each test file as one line (`experiment`, `stub`): the names are too generic for conftest.
"""
from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import boto3
from botocore.stub import Stubber

from evaluation import mturk
from evaluation.models import Experiment, MturkHit, Stimulus

SLUG = "pilot"
URL = f"https://survey.example.org/s/{SLUG}/"
WORDS = ["yes", "no", "dog", "bed"]
HIT_A = "3AQN9REUTFGXCRWFZUG9LHQ0J01Y6Z"
HIT_B = "3BQN9REUTFGXCRWFZUG9LHQ0J01Y6Z"
NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def pilot_experiment() -> Experiment:
    """A live identification experiment of WORDS: one test clip per word and one practice clip."""
    exp = Experiment.objects.create(slug=SLUG, task=Experiment.Task.IDENTIFICATION, words=WORDS, status=Experiment.Status.LIVE)
    for i, word in enumerate(WORDS):
        Stimulus.objects.create(
            experiment=exp, stimulus_id=f"{word}-classifier-noise-{i}", audio=f"stimuli/{i:02d}c4f7a91e3.wav",
            word=word, method="classifier", init="noise", stage="after", condition="1-classifier-noise",
        )
    Stimulus.objects.create(experiment=exp, stimulus_id="practice-1", audio="stimuli/ffa0.wav", word="yes", kind=Stimulus.Kind.PRACTICE)
    return exp


def stubbed_mturk(monkeypatch):
    """A real MTurk client (sandbox endpoint, fake keys) behind Stubber; make_client records which marketplace was asked for.

    A generator for a fixture to `yield from`: every stubbed response must have been asked for by the end.
    """
    client = boto3.client(
        "mturk", region_name="us-east-1", endpoint_url=mturk.SANDBOX_ENDPOINT, aws_access_key_id="x", aws_secret_access_key="x"
    )
    stubber = Stubber(client)
    stubber.asked_live = []
    monkeypatch.setattr(mturk, "make_client", lambda live: stubber.asked_live.append(live) or client)
    with stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def hit(hit_id=HIT_A, available=3, pending=0, completed=0, status="Assignable"):
    return {
        "HITId": hit_id, "HITTypeId": "3TYPEQN9REUTFGXCRWFZUG9LHQ0J01", "HITStatus": status, "MaxAssignments": 3,
        "Reward": "0.50", "Expiration": datetime(2026, 1, 12, tzinfo=UTC), "NumberOfAssignmentsAvailable": available,
        "NumberOfAssignmentsPending": pending, "NumberOfAssignmentsCompleted": completed,
    }


def posted(experiment, *hit_ids):
    """The HITs as create-hits records them once MTurk has them."""
    for i, hit_id in enumerate(hit_ids):
        MturkHit.objects.create(
            experiment=experiment, hit_id=hit_id, batch="main", index=i, request_token=mturk.request_token(SLUG, "main", i),
            url=URL, title="t", reward=Decimal("0.50"), max_assignments=3,
        )


def assignment(aid, worker, status="Submitted", hit_id=HIT_A):
    return {"AssignmentId": aid, "WorkerId": worker, "HITId": hit_id, "AssignmentStatus": status,
            "AcceptTime": NOW, "SubmitTime": NOW, "Answer": "<QuestionFormAnswers/>"}
