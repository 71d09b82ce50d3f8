"""Query budgets of the survey's hot path (trial page, clip, answer), so that a slower survey cannot creep back unseen.

bench/load.py measures the survey against the bare-view ceiling; these tests hold the
number of SQL statements each request of an answer cycle runs, counted on the test
database (SQLite: BEGIN/COMMIT are not statements there; PostgreSQL runs the same ones).
"""
from __future__ import annotations

import io

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from evaluation.audio import file_response, parse_range
from tests.helpers.survey import Listener, let_clip_play, make_experiment, right_answer

TRIAL_PAGE_QUERIES = 3  # session, participant with experiment, trials with stimuli
CLIP_QUERIES = 4  # trial with participant/experiment/stimulus, session, locked trial, its update
ANSWER_QUERIES = 9  # session, participant, trial; write lock, trial + stimulus locked, trial, holds, response, count


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
    listener.current()  # the first visit hands out the trials (once per listener, not per cycle)
    for _ in range(3):  # practice and test trials alike
        page, n_page = _count(lambda: listener.client.get("/s/demo/trial"))
        assert page.status_code == 200 and n_page <= TRIAL_PAGE_QUERIES, n_page
        trial = listener.current()
        clip, n_clip = _count(lambda: listener.client.get(f"/a/{trial.token}", HTTP_RANGE="bytes=0-"))
        assert clip.status_code == 206 and n_clip <= CLIP_QUERIES, n_clip
        let_clip_play(trial)
        data = right_answer(trial.stimulus, trial.stimulus.experiment.task)
        post = lambda: listener.client.post("/s/demo/answer", {"token": trial.token, "ended": "on", "response_ms": 800, **data})  # noqa: E731
        answered, n_answer = _count(post)
        assert answered.status_code == 303 and n_answer <= ANSWER_QUERIES, n_answer


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
