"""The listener's path through the survey, as a browser without JavaScript would take it (Django test client)."""
from __future__ import annotations


import pytest
from django.test import Client

from evaluation import assignment as assigning
from evaluation.models import Participant, Response
from tests.helpers.survey import Listener, make_experiment


@pytest.mark.django_db
def test_identification_flow_saves_every_answer_and_ends_with_a_code(media):
    make_experiment(completion_code="C0DE42")
    listener = Listener("demo")
    assert listener.entry.status_code == 302
    assert listener.client.get(listener.entry["Location"]).status_code == 200
    listener.start()
    page = listener.client.get("/s/demo/trial")
    assert b"Which word do you hear?" in page.content and b"Practice" in page.content
    for word in ("down", "no", "up", "yes", "none"):
        assert f'value="{word}"'.encode() in page.content
    assert listener.finish() == 1 + 4 + 1 + 1  # practice, tests, gold, trap
    done = listener.client.get("/s/demo/done")
    assert b"C0DE42" in done.content
    p = listener.participant
    assert p.finished_at is not None and p.step == "done"
    kinds = sorted(Response.objects.filter(participant=p).values_list("stimulus__kind", flat=True))
    assert kinds == ["gold", "practice", "test", "test", "test", "test", "trap"]
    assert all(r.listened_to_end and r.play_count == 1 and r.response_ms == 800 for r in Response.objects.filter(participant=p))


@pytest.mark.django_db
def test_rating_flow_asks_the_papers_question_with_anchor_examples(media):
    experiment = make_experiment("rate", task="rating")
    assert [a["value"] for a in experiment.anchors] == [0, 1, 2, 3, 4]
    listener = Listener("rate")
    listener.start()
    instructions_anchor = listener.client.get("/s/rate/example/4")
    assert instructions_anchor.status_code == 200 and instructions_anchor["Content-Type"] == "audio/wav"
    page = listener.client.get("/s/rate/trial")
    trial = assigning.next_assignment(listener.participant)
    assert f"How clear and audible is the word '{trial.stimulus.word}' in this recording?".encode() in page.content
    for label in (b"Excellent", b"Good", b"Fair", b"Poor", b"Bad"):
        assert label in page.content
    listener.finish()
    ratings = list(Response.objects.filter(participant=listener.participant).values_list("rating", flat=True))
    assert all(0 <= r <= 4 for r in ratings) and len(ratings) == 7


@pytest.mark.django_db
def test_reload_and_return_resume_at_the_same_trial(media):
    make_experiment()
    listener = Listener("demo", workerId="W1", assignmentId="A1", hitId="H1", turkSubmitTo="https://workersandbox.mturk.com")
    listener.start()
    first = listener.current()
    listener.answer(first)
    second = listener.current()
    assert listener.current().pk == second.pk  # reload
    again = Listener("demo", workerId="W1", assignmentId="A1", hitId="H1", turkSubmitTo="https://workersandbox.mturk.com")
    assert again.entry["Location"].startswith("/s/demo/trial?p=")  # another browser, same worker: resumes
    assert again.current().pk == second.pk
    assert Participant.objects.count() == 1


@pytest.mark.django_db
def test_a_worker_who_finished_cannot_start_again(media):
    make_experiment()
    first = Listener("demo", PROLIFIC_PID="P1", STUDY_ID="S1", SESSION_ID="X1")
    first.start()
    first.finish()
    again = Listener("demo", PROLIFIC_PID="P1", STUDY_ID="S1", SESSION_ID="X2")
    assert again.entry.status_code == 409
    assert b"already" in again.entry.content
    assert Participant.objects.count() == 1


@pytest.mark.django_db
def test_prolific_ids_are_captured_and_completion_redirects_to_prolific(media):
    make_experiment(completion_code="PCODE")
    listener = Listener("demo", PROLIFIC_PID="pid9", STUDY_ID="study9", SESSION_ID="sess9")
    p = listener.participant
    assert (p.source, p.worker_id, p.study_id, p.session_id) == ("prolific", "pid9", "study9", "sess9")
    listener.start()
    listener.finish()
    done = listener.client.get("/s/demo/done")
    assert b"https://app.prolific.com/submissions/complete?cc=PCODE" in done.content


@pytest.mark.django_db
def test_mturk_completion_posts_the_assignment_to_turk_submit_to(media):
    make_experiment()
    listener = Listener("demo", workerId="WK", assignmentId="ASG", hitId="HIT", turkSubmitTo="https://www.mturk.com")
    p = listener.participant
    assert (p.source, p.worker_id, p.assignment_id, p.hit_id) == ("mturk", "WK", "ASG", "HIT")
    listener.start()
    listener.finish()
    done = listener.client.get("/s/demo/done").content.decode()
    assert 'action="https://www.mturk.com/mturk/externalSubmit"' in done
    assert 'name="assignmentId" value="ASG"' in done


@pytest.mark.django_db
def test_mturk_preview_shows_the_task_without_creating_a_participant(media):
    make_experiment()
    client = Client()
    page = client.get("/s/demo/", {"assignmentId": "ASSIGNMENT_ID_NOT_AVAILABLE", "hitId": "H"})
    assert page.status_code == 200 and b"preview" in page.content
    assert client.get("/s/demo/sample").status_code == 200
    assert Participant.objects.count() == 0


@pytest.mark.django_db
def test_a_foreign_turk_submit_to_is_refused(media):
    make_experiment()
    page = Client().get("/s/demo/", {"workerId": "W", "assignmentId": "A", "turkSubmitTo": "https://evil.example"})
    assert page.status_code == 400
    assert Participant.objects.count() == 0


@pytest.mark.django_db
def test_survey_pages_may_be_framed_by_mturk_only_and_admin_not_at_all(media, admin_client):
    make_experiment()
    page = Client().get("/s/demo/", {"assignmentId": "ASSIGNMENT_ID_NOT_AVAILABLE"})
    assert "X-Frame-Options" not in page
    csp = page["Content-Security-Policy"]
    assert "frame-ancestors 'self' https://www.mturk.com https://worker.mturk.com https://workersandbox.mturk.com https://sandbox.mturk.com" in csp
    assert admin_client.get("/admin/")["X-Frame-Options"] == "DENY"


@pytest.mark.django_db
def test_session_and_csrf_cookies_work_inside_a_third_party_frame(media):
    make_experiment()
    listener = Listener("demo")
    consent = listener.client.get("/s/demo/consent")
    for name in ("sessionid", "csrftoken"):
        morsel = listener.client.cookies[name]
        assert morsel["samesite"] == "None" and morsel["secure"], name
    assert consent.status_code == 200


@pytest.mark.django_db
def test_headphone_screen_passes_at_five_of_six_and_screens_out_below(media):
    make_experiment(headphone_check=True)
    good = Listener("demo")
    good.client.post("/s/demo/consent", {"agree": "yes"})
    good.client.post("/s/demo/instructions")
    assert good.client.get("/s/demo/headphones").status_code == 200
    tone = good.client.get("/s/demo/headphones/0")
    assert tone.status_code == 200 and tone.content[:4] == b"RIFF"
    key = good.participant.headphone_key
    answers = {f"t{i}": k + 1 for i, k in enumerate(key)}
    answers["t0"] = (key[0] + 1) % 3 + 1  # one mistake
    good.client.post("/s/demo/headphones", answers)
    assert good.participant.step == "trials" and good.participant.headphone_score == 5

    bad = Listener("demo")
    bad.client.post("/s/demo/consent", {"agree": "yes"})
    bad.client.post("/s/demo/instructions")
    bad.client.get("/s/demo/headphones")
    key = bad.participant.headphone_key
    bad.client.post("/s/demo/headphones", {f"t{i}": (k + 1) % 3 + 1 for i, k in enumerate(key)})
    p = bad.participant
    assert p.step == "screened" and p.analyse_ok is False and p.headphone_score == 0
    assert bad.client.get("/s/demo/trial").status_code == 302
    assert not p.assignments.exists()


def test_survey_script_and_style_are_served_without_collectstatic(client):
    """The script gates answering on playback; without it listeners would face a dead page."""
    for name in ("survey.js", "survey.css"):
        got = client.get(f"/static/evaluation/{name}")
        assert got.status_code == 200 and got.getvalue()
