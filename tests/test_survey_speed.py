"""Query budgets of the survey's hot path (trial page, clip, answer), so that a slower survey cannot creep back unseen.

bench/load.py measures the survey against the bare-view ceiling; these tests hold the
number of SQL statements each request of an answer cycle runs, counted on the test
database (transaction control left out: SAVEPOINT here, BEGIN/COMMIT on PostgreSQL). The
listener follows the pages' own links, which carry the participant (flow.carry_token), as
every browser does, so no request needs the session.
"""
from __future__ import annotations

import html
import io
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from evaluation.audio import file_response, parse_range
from evaluation.models import Assignment, Response
from tests.helpers.survey import Listener, let_clip_play, make_experiment, right_answer

TRIAL_PAGE_QUERIES = 2  # the participant with its experiment; its trials with their stimuli
FIRST_TRIAL_PAGE_QUERIES = 5  # those, the experiment's lock, every clip's load, the trials inserted
CLIP_QUERIES = 2  # the clip and whose trial it is; the trial's conditional update
ANSWER_QUERIES = 4  # the trial with participant, experiment, stimulus; trial marked answered (holds extended); the answer; the count
TOKEN_RE = re.compile(r'name="token" value="([^"]+)"')
AUDIO_RE = re.compile(r'<audio id="clip"[^>]* data-src="([^"]+)"')
ACTION_RE = re.compile(r'<form method="post" action="([^"]+)" id="trial"')


@pytest.fixture
def listener(media):
    make_experiment()
    person = Listener("demo")
    person.start()
    return person


def _count(call) -> tuple[object, int]:
    """The response and the SQL statements it ran, less transaction control (SAVEPOINT here, BEGIN/COMMIT on PostgreSQL)."""
    with CaptureQueriesContext(connection) as ctx:
        result = call()
    return result, sum(1 for q in ctx.captured_queries if "SAVEPOINT" not in q["sql"])


@pytest.mark.django_db
def test_one_answer_cycle_stays_within_its_query_budget(listener):
    trial_url = listener.client.post("/s/demo/instructions")["Location"]  # where the flow sends them, with the carried token
    assert "?p=" in trial_url
    first, n_first = _count(lambda: listener.client.get(trial_url))
    assert first.status_code == 200 and n_first <= FIRST_TRIAL_PAGE_QUERIES, n_first  # trials handed out (once per listener)
    for _ in range(4):  # practice and test trials alike
        page, n_page = _count(lambda: listener.client.get(trial_url))
        assert page.status_code == 200 and n_page <= TRIAL_PAGE_QUERIES, n_page
        text = page.content.decode()
        trial = Assignment.objects.select_related("stimulus__experiment").get(token=TOKEN_RE.search(text).group(1))
        audio_url, answer_url = (html.unescape(r.search(text).group(1)) for r in (AUDIO_RE, ACTION_RE))
        clip, n_clip = _count(lambda: listener.client.get(audio_url, HTTP_RANGE="bytes=0-"))
        assert clip.status_code == 206 and n_clip <= CLIP_QUERIES, n_clip
        let_clip_play(trial)
        data = right_answer(trial.stimulus, trial.stimulus.experiment.task)
        post = lambda: listener.client.post(answer_url, {"token": trial.token, "ended": "on", "response_ms": 800, **data})  # noqa: E731
        answered, n_answer = _count(post)
        assert answered.status_code == 303 and n_answer <= ANSWER_QUERIES, n_answer
        assert Response.objects.filter(assignment=trial, play_count=1, listened_to_end=True).exists()
        trial_url = answered["Location"]


class _ReadLog(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.sizes: list[int] = []

    def read(self, size=-1):
        self.sizes.append(size)
        return super().read(size)


def test_a_range_reads_only_its_bytes_from_the_file():
    data = bytes(range(256)) * 4096  # 1 MiB
    handle = _ReadLog(data)
    response = file_response(handle, len(data), parse_range("bytes=1000-1999", len(data)))
    assert response.status_code == 206 and response.content == data[1000:2000]
    assert handle.sizes == [1000]
    whole = file_response(_ReadLog(data), len(data), None)
    assert whole.status_code == 200 and whole.content == data
