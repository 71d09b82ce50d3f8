"""The survey in the field (issue 11): frames without cookies, one participant per worker, "full" decided per visit,
staff previews, listening checked by the server, NUL bytes and foreign charsets, and the secret key."""
from __future__ import annotations

import html
import os
import re
import stat
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import soundfile
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.utils import timezone

from evaluation import assignment as assigning
from evaluation.models import Assignment, Experiment, Participant, Response, Stimulus
from tests.helpers.survey import Listener, let_clip_play, make_experiment, right_answer

ROOT = Path(__file__).resolve().parent.parent


class FramedListener:
    """A browser inside a cross-origin frame that refuses every cookie: only the URLs and forms carry who it is."""

    def __init__(self, slug: str, **params):
        self.client = Client(enforce_csrf_checks=True)
        self.page = self.follow(self.request("get", f"/s/{slug}/", params))

    def request(self, method: str, url: str, data=None, **extra):
        self.client.cookies.clear()
        response = getattr(self.client, method)(url, data or {}, **extra)
        self.client.cookies.clear()  # the browser drops every Set-Cookie
        return response

    def follow(self, response):
        while response.status_code in (302, 303):
            response = self.request("get", response["Location"])
        return response

    def form(self) -> tuple[str, dict]:
        text = self.page.content.decode()
        action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', text).group(1))
        hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', text))
        return action, {name: html.unescape(value) for name, value in hidden.items() if value}

    def submit(self, **fields):
        action, hidden = self.form()
        self.page = self.follow(self.request("post", action, {**hidden, **fields}))
        return self.page

    def answer_current(self) -> Assignment:
        text = self.page.content.decode()
        token = re.search(r'name="token" value="([^"]+)"', text).group(1)
        audio = html.unescape(re.search(r'id="clip" preload="none" data-src="([^"]+)"', text).group(1))
        assert self.request("get", audio, HTTP_RANGE="bytes=0-").status_code == 206
        trial = Assignment.objects.select_related("stimulus__experiment").get(token=token)
        let_clip_play(trial)
        self.submit(**right_answer(trial.stimulus, trial.stimulus.experiment.task), response_ms=700)
        return trial


# --- 11.1 the MTurk frame with third-party cookies blocked --------------------------------------


@pytest.mark.django_db
def test_a_worker_whose_frame_refuses_all_cookies_completes_the_hit(media):
    make_experiment(headphone_check=True)
    worker = FramedListener("demo", workerId="AWORKER1", assignmentId="ASG1", hitId="HIT1", turkSubmitTo="https://www.mturk.com")
    assert worker.page.status_code == 200 and b"Consent" in worker.page.content
    worker.submit(agree="yes")
    worker.submit()  # instructions
    participant = Participant.objects.get()
    worker.submit(**{f"t{i}": k + 1 for i, k in enumerate(participant.headphone_key)})
    answered = 0
    while b'name="token"' in worker.page.content:
        worker.answer_current()
        answered += 1
    assert answered == 7
    assert b'action="https://www.mturk.com/mturk/externalSubmit"' in worker.page.content
    assert b'name="assignmentId" value="ASG1"' in worker.page.content
    participant.refresh_from_db()
    assert participant.step == "done" and Participant.objects.count() == 1
    assert Response.objects.filter(participant=participant).count() == 7


@pytest.mark.django_db
def test_cookieless_posts_still_need_the_participants_own_csrf_token(media):
    make_experiment()
    alice = FramedListener("demo", workerId="ALICE")
    bob = FramedListener("demo", workerId="BOB")
    alice_action, alice_token = alice.form()
    _, bob_token = bob.form()
    assert alice.request("post", alice_action, {"agree": "yes"}).status_code == 403  # no token at all
    assert alice.request("post", alice_action, {"agree": "yes", **bob_token}).status_code == 403  # another listener's token
    forged = re.sub(r"p=[^&]+", "p=" + "x" * 40 + "%3Aforged", alice_action)
    assert alice.request("post", forged, {"agree": "yes", **alice_token}).status_code == 403  # a token nobody signed
    cross_site = alice.request("post", alice_action, {"agree": "yes", **alice_token}, HTTP_ORIGIN="https://evil.example")
    assert cross_site.status_code == 403
    assert not Participant.objects.filter(consented_at__isnull=False).exists()
    assert alice.request("post", alice_action, {"agree": "yes", **alice_token}).status_code == 303


@pytest.mark.django_db
def test_the_clip_of_a_cookieless_listener_needs_their_carried_token(media):
    make_experiment()
    worker = FramedListener("demo", workerId="AW9")
    worker.submit(agree="yes")
    worker.submit()
    text = worker.page.content.decode()
    token = re.search(r'name="token" value="([^"]+)"', text).group(1)
    assert worker.request("get", f"/a/{token}").status_code == 404  # the bare token is not enough
    other = FramedListener("demo", workerId="AW10")
    foreign = re.search(r'action="[^"?]+(\?p=[^"]+)"', other.page.content.decode()).group(1)
    assert worker.request("get", f"/a/{token}{html.unescape(foreign)}").status_code == 404


# --- 11.3 one participant per worker ----------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("platform, first, again", [
    ("workerId", "A1B2C3", " a1b2c3\u200b"),
    ("workerId", "A1B2C3", "\uff21\uff11\uff22\uff12\uff23\uff13"),  # full-width letters and digits (NFKC)
    ("PROLIFIC_PID", "5f3a9c", "5F3A9C\u2060 "),
])
def test_a_finished_worker_cannot_come_back_with_another_spelling(media, platform, first, again):
    make_experiment()
    person = Listener("demo", **{platform: first})
    person.start()
    person.finish()
    other = Listener("demo", **{platform: again})
    assert other.entry.status_code == 409
    assert Participant.objects.count() == 1


@pytest.mark.django_db
def test_a_worker_id_that_no_platform_issues_is_refused(media):
    make_experiment()
    assert Listener("demo", workerId="A1<script>").entry.status_code == 400
    assert Listener("demo", PROLIFIC_PID="x" * 65).entry.status_code == 400
    assert Participant.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_the_same_worker_in_many_tabs_at_once_is_one_participant(media, real_database):
    make_experiment()
    tabs = 6
    barrier = threading.Barrier(tabs)
    statuses: list[int] = []
    errors: list[str] = []

    def tab(n: int) -> None:
        if real_database:
            real_database()
        try:
            client = Client()
            barrier.wait(timeout=60)
            spelling = ["AW77", " aw77", "AW77\u200b"][n % 3]
            statuses.append(client.get("/s/demo/", {"workerId": spelling, "assignmentId": f"A{n}"}).status_code)
        except Exception as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=tab, args=(n,)) for n in range(tabs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and statuses == [302] * tabs
    assert list(Participant.objects.values_list("worker_id", flat=True)) == ["AW77"]


# --- 11.4 "study full" is decided at each visit ----------------------------------------------------------


def _reach_trials(person: Listener) -> None:
    person.start()
    assert person.client.get("/s/demo/trial").status_code == 200


@pytest.mark.django_db
def test_a_full_study_opens_again_when_idle_reservations_lapse(media):
    make_experiment(ratings_per_stimulus=1, trials_per_listener=4, assignment_timeout_minutes=60)
    for n in range(3):  # 3 x 4 reservations take all 12 test clips; none of these visitors plays anything
        _reach_trials(Listener("demo", workerId=f"IDLE{n}"))
    late = Listener("demo", workerId="LATE1", assignmentId="ASGL", turkSubmitTo="https://www.mturk.com")
    late.start()
    full = late.client.get("/s/demo/trial")
    assert b"This study is full" in full.content and b"return this HIT" in full.content
    # a visitor who never played holds clips briefly, not for the whole assignment timeout
    bound = timezone.now() + timedelta(minutes=assigning.UNSTARTED_HOLD_MINUTES, seconds=5)
    assert not Assignment.objects.filter(expires_at__gt=bound).exists()
    Assignment.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    again = late.client.get("/s/demo/trial")
    assert again.status_code == 200 and b'name="token"' in again.content
    assert late.finish() > 0


@pytest.mark.django_db
def test_an_answer_extends_the_hold_to_the_full_timeout(media):
    make_experiment(assignment_timeout_minutes=60)
    person = Listener("demo")
    person.start()
    person.answer(person.current())
    left = Assignment.objects.filter(participant=person.participant, answered=False)
    assert all(a.expires_at > timezone.now() + timedelta(minutes=50) for a in left)


# --- 11.5 staff previews are never counted ------------------------------------------------------------


@pytest.mark.django_db
def test_staff_trying_a_draft_store_and_use_up_nothing(media):
    experiment = make_experiment(status="draft", ratings_per_stimulus=1, trials_per_listener=12)
    staff = get_user_model().objects.create_user("researcher", password="pw-123456", is_staff=True)
    client = Client()
    client.force_login(staff)
    person = Listener("demo", client=client)
    person.start()
    assert b"Staff preview" in client.get("/s/demo/trial").content
    assert person.finish() == 1 + 12 + 1 + 1
    assert client.get("/s/demo/done").status_code == 200
    assert Response.objects.count() == 0
    assert not Stimulus.objects.filter(answer_count__gt=0).exists()
    assert Participant.objects.get().preview
    Experiment.objects.filter(pk=experiment.pk).update(status="live")
    listener = Listener("demo")
    listener.start()
    assert listener.finish() == 1 + 12 + 1 + 1  # every clip still needs its one answer


# --- 11.6 listening to the end is checked by the server -----------------------------------------------


@pytest.fixture
def trial_person(media):
    make_experiment()
    person = Listener("demo")
    person.start()
    return person.current(), person


def _post(person: Listener, trial: Assignment, **extra):
    data = {"token": trial.token, **right_answer(trial.stimulus, "identification"), "ended": "on", "response_ms": 1, **extra}
    return person.client.post("/s/demo/answer", data)


@pytest.mark.django_db
def test_a_one_byte_fetch_is_not_listening(trial_person):
    trial, person = trial_person
    assert person.client.get(f"/a/{trial.token}", HTTP_RANGE="bytes=0-0").status_code == 206
    assert _post(person, trial).status_code == 409
    assert Response.objects.count() == 0


@pytest.mark.django_db
def test_an_answer_sooner_than_the_clip_lasts_is_refused(trial_person):
    trial, person = trial_person
    assert person.client.get(f"/a/{trial.token}").status_code == 200
    refused = _post(person, trial)
    assert refused.status_code == 409 and b"listen to the whole clip" in refused.content
    served = Assignment.objects.get(pk=trial.pk)
    with trial.stimulus.audio.open("rb") as handle:
        info = soundfile.info(handle)
    assert served.served_full_at is not None and served.clip_ms == int(1000 * info.frames / info.samplerate) > 100
    let_clip_play(trial)
    assert _post(person, trial, ended="").status_code == 303  # what the page claims does not matter: the server saw it
    assert Response.objects.get().listened_to_end is True


@pytest.mark.django_db
def test_the_clip_served_in_pieces_counts_as_served_in_full(trial_person):
    trial, person = trial_person
    size = len(trial.stimulus.audio.open("rb").read())
    person.client.get(f"/a/{trial.token}", HTTP_RANGE=f"bytes=0-{size // 2}")
    person.client.get(f"/a/{trial.token}", HTTP_RANGE=f"bytes={size // 2 + 1}-")
    served = Assignment.objects.get(pk=trial.pk)
    assert served.play_count == 1 and served.served_full_at is not None


@pytest.mark.django_db
def test_head_answers_like_get_and_changes_nothing(trial_person):
    """Before: HEAD (link checkers, some players and proxies) got 405 on every survey page; HTTP servers must support
    it. A HEAD of the study link creates no listener, and a HEAD of a clip is no play."""
    trial, person = trial_person
    for page in ("/s/demo/trial", "/s/demo/done", "/s/demo/sample"):
        assert person.client.head(page).status_code == person.client.get(page).status_code != 405
    size = len(trial.stimulus.audio.open("rb").read())
    clip = person.client.head(f"/a/{trial.token}")
    assert clip.status_code == 200 and int(clip["Content-Length"]) == size and clip["Content-Type"].startswith("audio/")
    assert Assignment.objects.get(pk=trial.pk).play_count == 0
    stranger = Client()
    assert stranger.head("/s/demo/", {"workerId": "A1B2C3D4E5", "assignmentId": "3XYZ", "hitId": "3HIT"}).status_code == 200
    assert stranger.head("/s/no-such-study/").status_code == 404
    assert Participant.objects.count() == 1


# --- 11.9 / 11.10 bad requests get a 400 on every database -------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["workerId", "PROLIFIC_PID", "STUDY_ID", "assignmentId", "hitId", "SESSION_ID"])
def test_a_nul_byte_in_the_study_link_is_a_400(media, name):
    make_experiment()
    response = Client().get(f"/s/demo/?{name}=AB%00CD&workerId=W1" if name != "workerId" else "/s/demo/?workerId=AB%00CD")
    assert response.status_code == 400
    assert Participant.objects.count() == 0


@pytest.mark.django_db
def test_a_nul_byte_in_a_clip_token_or_a_form_is_a_400(trial_person):
    trial, person = trial_person
    assert person.client.get(f"/a/{trial.token[:5]}%00{trial.token[5:]}").status_code == 400
    assert person.client.get("/s/demo%00/").status_code == 400
    assert person.client.post("/s/demo/answer", {"token": trial.token + "\x00", "answer": "yes"}).status_code == 400
    assert Response.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("charset", ["latin-1", "utf-16", "x-no-such-charset"])
@pytest.mark.parametrize("url", ["/admin/login/", "/s/demo/consent", "/s/demo/answer"])
def test_a_form_in_another_charset_is_a_400(media, url, charset):
    """Django refuses such a body only inside the CSRF check, and again inside its own 400 page: a 500 before."""
    make_experiment()
    person = Listener("demo", client=Client(enforce_csrf_checks=True, raise_request_exception=False))
    login = person.client.get("/admin/login/")
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', login.content).group(1).decode()
    body = f"csrfmiddlewaretoken={token}&username=r%E9searcher&password=x&agree=yes&answer=yes".encode("latin-1")
    response = person.client.generic("POST", url, body, content_type=f"application/x-www-form-urlencoded; charset={charset}")
    assert response.status_code == 400
    assert Participant.objects.get().consented_at is None


@pytest.mark.django_db
@pytest.mark.parametrize("charset", ["utf8", "UTF-8", "us-ascii", "ASCII"])
def test_a_form_labelled_utf8_by_another_name_is_read(media, charset):
    """Before: Django read a form only under the name "utf-8"; "utf8" and "us-ascii" (the same bytes) got a 400."""
    make_experiment()
    person = Listener("demo")
    person.client.get("/s/demo/consent")
    response = person.client.generic("POST", "/s/demo/consent", b"agree=yes",
                                     content_type=f"application/x-www-form-urlencoded; charset={charset}")
    assert response.status_code == 303
    assert Participant.objects.get().consented_at is not None


# --- 11.12 no published secret key ------------------------------------------------------------------------


def _settings_key(data_dir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    env.update(HEARSAY_DATA_DIR=str(data_dir), DJANGO_SETTINGS_MODULE="config.settings")
    code = "from django.conf import settings; print(settings.SECRET_KEY)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_without_secret_key_a_random_one_is_made_once_and_kept(tmp_path):
    first = _settings_key(tmp_path)
    assert len(first) >= 50 and "insecure" not in first
    assert _settings_key(tmp_path) == first
    assert _settings_key(tmp_path / "other") != first
    kept = tmp_path / "secret_key"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
