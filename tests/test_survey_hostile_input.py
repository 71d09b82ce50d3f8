"""Hostile input that used to reach a 500: byte positions too long for Python's int() in a Range header, and admin
actions posted for ids that are no ids. Each gets a clear 4xx (or the bytes asked for) and writes nothing."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from evaluation.audio import parse_range
from evaluation.models import Assignment, MturkBatch, MturkBatchClip, Participant, Stimulus
from hearsay.mturk_results import BATCH_AUDIO_PATH
from tests.helpers.survey import Listener, make_experiment

ENDLESS = "9" * 5000  # more digits than int() converts (4,300): a ValueError inside the view before


@pytest.fixture
def listener(media):
    make_experiment(replay_limit=3)
    person = Listener("demo", client=Client(raise_request_exception=False))
    person.start()
    return person


def _played(trial: Assignment) -> dict:
    return Assignment.objects.filter(pk=trial.pk).values("play_count", "first_played_at", "served_full_at").get()


@pytest.mark.django_db
def test_a_range_starting_past_any_clip_is_416_and_no_play(listener):
    trial = listener.current()
    size = trial.stimulus.audio.size
    response = listener.client.get(f"/a/{trial.token}", HTTP_RANGE=f"bytes={ENDLESS}-")
    assert response.status_code == 416 and response["Content-Range"] == f"bytes */{size}"
    assert _played(trial) == {"play_count": 0, "first_played_at": None, "served_full_at": None}


@pytest.mark.django_db
def test_a_range_ending_past_any_clip_serves_the_clip_as_one_play(listener):
    trial = listener.current()
    data = trial.stimulus.audio.open("rb").read()
    response = listener.client.get(f"/a/{trial.token}", HTTP_RANGE=f"bytes=0-{ENDLESS}")
    assert response.status_code == 206 and response.content == data
    assert response["Content-Range"] == f"bytes 0-{len(data) - 1}/{len(data)}"
    played = _played(trial)
    assert played["play_count"] == 1 and played["served_full_at"] is not None
    suffix = listener.client.get(f"/a/{trial.token}", HTTP_RANGE=f"bytes=-{ENDLESS}")  # a suffix longer than the clip: all of it
    assert suffix.status_code == 206 and suffix.content == data
    assert _played(trial)["play_count"] == 2


@pytest.mark.django_db
def test_byte_positions_padded_with_zeros_are_read_as_their_value(listener):
    trial = listener.current()
    data = trial.stimulus.audio.open("rb").read()
    response = listener.client.get(f"/a/{trial.token}", HTTP_RANGE=f"bytes={'0' * 5000}5-{'0' * 5000}9")
    assert response.status_code == 206 and response.content == data[5:10]
    assert response["Content-Range"] == f"bytes 5-9/{len(data)}"
    assert _played(trial)["play_count"] == 1


@pytest.mark.django_db
def test_endless_ranges_on_public_clips_and_headphone_tones_are_not_errors(media):
    experiment = make_experiment(headphone_check=True)
    batch = MturkBatch.objects.create(experiment=experiment, label="b1")
    clip = Stimulus.objects.filter(kind=Stimulus.Kind.PRACTICE).first()
    MturkBatchClip.objects.create(batch=batch, stimulus=clip, name="0123456789abcdef0123456789abcdef.wav")
    person = Listener("demo", client=Client(raise_request_exception=False))
    person.client.post("/s/demo/consent", {"agree": "yes"})
    person.client.post("/s/demo/instructions")
    for url in ("/s/demo/sample", f"/{BATCH_AUDIO_PATH}/0123456789abcdef0123456789abcdef.wav", "/s/demo/headphones/0"):
        whole = person.client.get(url, HTTP_RANGE=f"bytes=0-{ENDLESS}")
        length = len(whole.content)
        assert whole.status_code == 206 and whole["Content-Range"] == f"bytes 0-{length - 1}/{length}", url
        refused = person.client.get(url, HTTP_RANGE=f"bytes={ENDLESS}-")
        assert refused.status_code == 416 and refused["Content-Range"] == f"bytes */{length}", url
        assert person.client.get(url, HTTP_RANGE=f"bytes=-{ENDLESS}").content == whole.content, url
    assert person.client.get("/s/demo/sample").content == clip.audio.open("rb").read()
    assert Participant.objects.get().step == Participant.Step.HEADPHONES


def test_parse_range_reads_ascii_digits_of_any_length():
    assert parse_range(f"bytes={ENDLESS}-", 100) == "unsatisfiable"
    assert parse_range(f"bytes=0-{ENDLESS}", 100) == (0, 99)
    assert parse_range(f"bytes=-{ENDLESS}", 100) == (0, 99)
    assert parse_range(f"bytes={ENDLESS}-{ENDLESS}", 100) == "unsatisfiable"
    assert parse_range(f"bytes={'0' * 30}5-{'0' * 30}9", 100) == (5, 9)
    assert parse_range("bytes=\u0661-\u0662", 100) is None  # Arabic-Indic digits are no byte positions: the whole clip


# --- the researchers' admin --------------------------------------------------------------------------------------


@pytest.fixture
def staff_client(media):
    make_experiment()
    Listener("demo").start()
    client = Client(raise_request_exception=False)
    client.force_login(get_user_model().objects.create_superuser("researcher", password="pw-123456"))
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("selected", [["abc"], ["9" * 23], ["-9" + "9" * 22], [ENDLESS]])
def test_an_admin_action_on_an_id_that_is_no_id_is_a_400_and_changes_nothing(staff_client, selected):
    participant = Participant.objects.get()
    before = (participant.pay_ok, list(participant.pay_reasons))
    response = staff_client.post("/admin/evaluation/participant/", {"action": "pay_no", "_selected_action": [str(participant.pk), *selected]})
    assert response.status_code == 400
    participant.refresh_from_db()
    assert (participant.pay_ok, participant.pay_reasons) == before
    stimuli = Stimulus.objects.count()
    deleting = staff_client.post("/admin/evaluation/stimulus/", {"action": "delete_selected", "post": "yes", "_selected_action": selected})
    assert deleting.status_code == 400 and Stimulus.objects.count() == stimuli


@pytest.mark.django_db
@pytest.mark.parametrize("page", ["auth/user", "auth/group"])
def test_the_account_admins_refuse_an_id_that_is_no_id_too(staff_client, page):
    """Django's own User and Group admins passed it to the database: a 500."""
    users = get_user_model().objects.count()
    response = staff_client.post(f"/admin/{page}/", {"action": "delete_selected", "post": "yes", "_selected_action": ["abc"]})
    assert response.status_code == 400 and get_user_model().objects.count() == users


@pytest.mark.django_db
def test_an_admin_action_on_real_ids_still_runs(staff_client):
    participant = Participant.objects.get()
    response = staff_client.post("/admin/evaluation/participant/", {"action": "pay_no", "_selected_action": [str(participant.pk), "424242"]})
    assert response.status_code == 302
    participant.refresh_from_db()
    assert participant.pay_ok is False and participant.pay_reasons == ["set by researcher in admin"]


@pytest.mark.django_db
@pytest.mark.parametrize("length", ["abc", "-5", "1e3", "١٢"])
def test_a_content_length_that_is_no_number_is_a_400_and_stores_nothing(listener, length):
    """Django int()s Content-Length while reading a form body; a development server passes any header through."""
    trial = listener.current()
    body = f"token={trial.token}&answer=yes&ended=on&response_ms=800".encode()
    response = listener.client.generic("POST", "/s/demo/answer", body,
                                       content_type="application/x-www-form-urlencoded", CONTENT_LENGTH=length)
    assert response.status_code == 400 and b"Content-Length" in response.content
    assert not Assignment.objects.get(pk=trial.pk).answered
