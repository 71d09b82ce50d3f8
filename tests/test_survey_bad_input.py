"""Bad input gets a 4xx and writes nothing: tampered answers, foreign tokens, replays, CSRF, oversize bodies, closed studies."""
from __future__ import annotations

import pytest
from django.test import Client

from evaluation.models import Assignment, Experiment, Participant, Response
from tests.helpers.survey import Listener, make_experiment


@pytest.fixture
def listener(media):
    make_experiment()
    person = Listener("demo")
    person.start()
    return person


def _rows() -> tuple[int, int]:
    return Response.objects.count(), Assignment.objects.filter(answered=True).count()


@pytest.mark.django_db
@pytest.mark.parametrize("fields", [{"answer": "banana"}, {"answer": ""}, {"answer": "x" * 200}, {"answer": "yes", "response_ms": "-5"}])
def test_tampered_identification_answers_are_refused(listener, fields):
    trial = listener.current()
    listener.client.get(f"/a/{trial.token}")
    response = listener.client.post("/s/demo/answer", {"token": trial.token, "ended": "on", **fields})
    assert response.status_code == 400
    assert _rows() == (0, 0)


@pytest.mark.django_db
@pytest.mark.parametrize("rating", ["5", "-1", "excellent", ""])
def test_out_of_range_ratings_are_refused(media, rating):
    make_experiment("rate", task="rating")
    person = Listener("rate")
    person.start()
    trial = person.current()
    person.client.get(f"/a/{trial.token}")
    assert person.client.post("/s/rate/answer", {"token": trial.token, "rating": rating}).status_code == 400
    assert _rows() == (0, 0)


@pytest.mark.django_db
def test_another_listeners_token_is_not_found_for_audio_or_answers(listener):
    other = Listener("demo")
    other.start()
    theirs = other.current()
    assert listener.client.get(f"/a/{theirs.token}").status_code == 404
    assert listener.client.post("/s/demo/answer", {"token": theirs.token, "answer": "yes"}).status_code == 404
    assert Client().get(f"/a/{theirs.token}").status_code == 404
    assert Assignment.objects.get(pk=theirs.pk).play_count == 0
    assert _rows() == (0, 0)


@pytest.mark.django_db
def test_a_repeated_identical_post_is_acknowledged_once(listener):
    trial = listener.current()
    assert listener.answer(trial, answer="yes").status_code == 303
    assert listener.client.post("/s/demo/answer", {"token": trial.token, "answer": "yes", "ended": "on"}).status_code == 303
    assert _rows() == (1, 1)


@pytest.mark.django_db
def test_a_different_answer_to_an_answered_trial_conflicts(listener):
    trial = listener.current()
    listener.answer(trial, answer="yes")
    response = listener.client.post("/s/demo/answer", {"token": trial.token, "answer": "no", "ended": "on"})
    assert response.status_code == 409
    assert list(Response.objects.values_list("answer", flat=True)) == ["yes"]


@pytest.mark.django_db
def test_an_answer_to_a_clip_never_fetched_is_refused(listener):
    trial = listener.current()
    response = listener.client.post("/s/demo/answer", {"token": trial.token, "answer": "yes", "ended": "on"})
    assert response.status_code == 409
    assert _rows() == (0, 0)


@pytest.mark.django_db
def test_a_post_without_csrf_token_is_forbidden(media):
    make_experiment()
    person = Listener("demo", client=Client(enforce_csrf_checks=True))
    assert person.client.post("/s/demo/consent", {"agree": "yes"}).status_code == 403
    assert Participant.objects.get().consented_at is None


@pytest.mark.django_db
def test_an_oversize_body_is_refused(listener):
    trial = listener.current()
    listener.client.get(f"/a/{trial.token}")
    response = listener.client.post("/s/demo/answer", {"token": trial.token, "answer": "yes", "padding": "x" * (80 * 1024)})
    assert response.status_code in (400, 413)
    assert _rows() == (0, 0)


@pytest.mark.django_db
def test_a_closed_experiment_takes_no_new_listeners_and_no_answers(listener):
    trial = listener.current()
    listener.client.get(f"/a/{trial.token}")
    Experiment.objects.filter(slug="demo").update(status="closed")
    assert listener.client.post("/s/demo/answer", {"token": trial.token, "answer": "yes", "ended": "on"}).status_code == 410
    assert Client().get("/s/demo/").status_code == 410
    assert listener.client.get(f"/a/{trial.token}").status_code == 410
    assert _rows() == (0, 0)
    assert Participant.objects.count() == 1


@pytest.mark.django_db
def test_draft_and_unknown_experiments_are_not_found(media):
    make_experiment(status="draft")
    assert Client().get("/s/demo/").status_code == 404
    assert Client().get("/s/nope/").status_code == 404
    assert Participant.objects.count() == 0


@pytest.mark.django_db
def test_plays_beyond_the_replay_limit_are_refused(listener):
    Experiment.objects.filter(slug="demo").update(replay_limit=2)
    trial = listener.current()
    assert listener.client.get(f"/a/{trial.token}", HTTP_RANGE="bytes=0-99").status_code == 206
    assert listener.client.get(f"/a/{trial.token}", HTTP_RANGE="bytes=100-").status_code == 206  # same play streaming on
    assert listener.client.get(f"/a/{trial.token}", HTTP_RANGE="bytes=0-").status_code == 206
    assert listener.client.get(f"/a/{trial.token}", HTTP_RANGE="bytes=0-").status_code == 403
    assert Assignment.objects.get(pk=trial.pk).play_count == 2


@pytest.mark.django_db
def test_ranges_that_do_not_start_at_byte_0_count_as_plays_too(listener):
    """Fetching the middle again (or first) is hearing the clip again: it may not get round the replay limit."""
    Experiment.objects.filter(slug="demo").update(replay_limit=2)
    trial = listener.current()
    assert listener.client.get(f"/a/{trial.token}", HTTP_RANGE="bytes=200-").status_code == 206  # a first play, mid-file
    assert listener.client.get(f"/a/{trial.token}").status_code == 200
    assert listener.client.get(f"/a/{trial.token}", HTTP_RANGE="bytes=100-").status_code == 403  # after the whole clip: a replay
    assert Assignment.objects.get(pk=trial.pk).play_count == 2


@pytest.mark.django_db
def test_pages_before_entry_send_the_listener_back_politely(media):
    make_experiment()
    client = Client()
    for url in ("/s/demo/consent", "/s/demo/trial", "/s/demo/done"):
        assert client.get(url).status_code == 403
    assert client.post("/s/demo/answer", {"token": "x", "answer": "yes"}).status_code == 403
    assert client.get("/a/not-a-token").status_code == 404
