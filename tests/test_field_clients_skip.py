"""A clip whose last play broke off mid-way (a phone's connection dropped between two ranges) can never be heard in
full: the server refuses every answer to it. The listener must not be sent round that refusal for ever."""
from __future__ import annotations

import re

import pytest

from evaluation.models import Assignment, Response
from tests.helpers.survey import Listener, make_experiment, right_answer


def _trial_page(person: Listener) -> tuple[str, int]:
    page = person.client.get("/s/demo/trial").content.decode()
    return re.search(r'name="token" value="([^"]+)"', page).group(1), int(re.search(r'data-limit="(\d+)"', page).group(1))


@pytest.mark.django_db
def test_a_clip_cut_off_on_its_last_play_is_skipped_and_the_listener_goes_on(media):
    make_experiment(replay_limit=1)
    person = Listener("demo")
    person.start()
    token, left = _trial_page(person)
    assert left == 1
    trial = Assignment.objects.select_related("stimulus").get(token=token)
    # the only play: the first bytes arrive, then the connection breaks before the rest is asked for
    assert person.client.get(f"/a/{token}", HTTP_RANGE="bytes=0-999").status_code == 206
    assert person.client.get(f"/a/{token}", HTTP_RANGE="bytes=0-").status_code == 403  # no plays left
    answer = {"token": token, **right_answer(trial.stimulus, "identification")}
    for _ in range(2):  # answering again, as the page's Continue link invites, must not lead back to the same refusal
        reply = person.client.post("/s/demo/answer", answer)
        if reply.status_code != 409:
            break
    assert reply.status_code == 200 and b"Recording skipped" in reply.content
    assert Response.objects.count() == 0
    assert Assignment.objects.get(pk=trial.pk).void
    next_token, next_left = _trial_page(person)
    assert next_token != token and next_left == 1  # the listener goes on to the next clip


@pytest.mark.django_db
def test_an_answer_before_the_end_with_plays_left_is_still_refused_and_nothing_is_skipped(media):
    make_experiment(replay_limit=2)
    person = Listener("demo")
    person.start()
    token, _ = _trial_page(person)
    trial = Assignment.objects.select_related("stimulus").get(token=token)
    person.client.get(f"/a/{token}", HTTP_RANGE="bytes=0-999")
    reply = person.client.post("/s/demo/answer", {"token": token, **right_answer(trial.stimulus, "identification")})
    assert reply.status_code == 409 and not Assignment.objects.get(pk=trial.pk).void
    assert _trial_page(person)[0] == token
