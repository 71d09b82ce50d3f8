"""Listeners who end a study early (screened out by the headphone check, a full study, a study closed while they were in
it, having taken part before) get what their platform expects: on Prolific the screen-out code or plain words to return
the submission; on MTurk plain words to return the HIT (MTurk has no screen-out payment: a submitted HIT is paid in
full). A screened-out listener never counts as answers, and is paid only when the researcher says so."""
from __future__ import annotations

import io
from urllib.parse import urlencode

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.test import Client

from evaluation import prolific
from evaluation.mturk.pay import approvals_due
from evaluation.export import analysable_responses
from evaluation.models import Experiment, MturkAssignment, Participant, Response
from tests.helpers.browser import CHROMIUM
from tests.helpers.frame import MTURK, SURVEY
from tests.helpers.mturk import stubbed_mturk
from tests.helpers.survey import Listener, make_experiment

PROLIFIC = {"PROLIFIC_PID": "5f3a9c0d1e2b", "STUDY_ID": "S1", "SESSION_ID": "X1"}
TURK = {"workerId": "AWSCREEN1", "assignmentId": "ASG1", "hitId": "HIT1", "turkSubmitTo": "https://www.mturk.com"}
RETURN_ON_PROLIFIC = b"return your submission on Prolific"
RETURN_THE_HIT = b"return this HIT"


@pytest.fixture
def stub(monkeypatch):
    yield from stubbed_mturk(monkeypatch)


def _screened_out(params: dict, **fields) -> Listener:
    """A listener who consents, reads the instructions and gets every tone of the headphone check wrong."""
    make_experiment(headphone_check=True, **fields)
    person = Listener("demo", **params)
    assert person.client.post("/s/demo/consent", {"agree": "yes"}).status_code == 303
    assert person.client.post("/s/demo/instructions").status_code == 303
    person.client.get("/s/demo/headphones")
    key = person.participant.headphone_key
    assert person.client.post("/s/demo/headphones", {f"t{i}": (k + 1) % 3 + 1 for i, k in enumerate(key)}).status_code == 303
    assert person.participant.step == "screened"
    return person


def _fill_the_study() -> None:
    """Idle visitors hold every test clip (ratings_per_stimulus=1, 3 x 4 of 12 clips): the next one finds it full."""
    for n in range(3):
        idle = Listener("demo", workerId=f"IDLE{n}")
        idle.start()
        assert idle.client.get("/s/demo/trial").status_code == 200


def _close() -> None:
    Experiment.objects.filter(slug="demo").update(status="closed")


# --- Prolific ---------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_prolific_screened_out_listener_goes_back_with_the_screen_out_code_not_the_completion_code(media):
    """Prolific pays its fixed screen-out reward for the study's screen-out code; the completion code would pay in full."""
    person = _screened_out(PROLIFIC, completion_code="DONE42", screened_out_code="SCREEN7")
    page = person.client.get("/s/demo/done")
    assert page.status_code == 200
    assert prolific.completion_url("SCREEN7").encode() in page.content
    assert b"DONE42" not in page.content
    assert b'target="_top"' in page.content


@pytest.mark.django_db
def test_prolific_screened_out_listener_without_a_screen_out_code_is_told_to_return_the_submission(media):
    """Without a code Prolific has no way to end the submission but the participant's own Return."""
    person = _screened_out(PROLIFIC, completion_code="DONE42")
    page = person.client.get("/s/demo/done")
    assert RETURN_ON_PROLIFIC in page.content and b"Cancel participation" in page.content
    assert b"DONE42" not in page.content and b"submissions/complete" not in page.content


@pytest.mark.django_db
def test_prolific_listener_who_finds_the_study_full_at_the_trials_is_told_to_return(media):
    make_experiment(ratings_per_stimulus=1, trials_per_listener=4, completion_code="DONE42")
    _fill_the_study()
    late = Listener("demo", **PROLIFIC)
    late.start()
    page = late.client.get("/s/demo/trial")
    assert b"This study is full" in page.content and RETURN_ON_PROLIFIC in page.content
    assert b"DONE42" not in page.content


@pytest.mark.django_db
def test_a_listener_arriving_at_a_full_study_is_told_before_the_consent_form(media):
    """Arriving at a full study, nobody should spend minutes on consent, instructions and the sound check first."""
    make_experiment(ratings_per_stimulus=1, trials_per_listener=4)
    _fill_the_study()
    late = Listener("demo", **PROLIFIC)
    page = late.client.get(late.entry["Location"])
    assert b"This study is full" in page.content and RETURN_ON_PROLIFIC in page.content
    assert b'name="agree"' not in page.content
    turk = Listener("demo", **TURK)
    assert RETURN_THE_HIT in turk.client.get(turk.entry["Location"]).content


@pytest.mark.django_db
def test_mturk_preview_of_a_full_study_says_not_to_accept_the_hit(media):
    make_experiment(ratings_per_stimulus=1, trials_per_listener=4)
    _fill_the_study()
    page = Client().get("/s/demo/", {"assignmentId": "ASSIGNMENT_ID_NOT_AVAILABLE", "hitId": "HIT1"})
    assert page.status_code == 200 and b"This study is full" in page.content and b"do not accept" in page.content


@pytest.mark.django_db
@pytest.mark.parametrize("params, expected", [(PROLIFIC, RETURN_ON_PROLIFIC), (TURK, RETURN_THE_HIT)])
def test_a_study_closed_mid_way_says_what_to_do_on_the_platform(media, params, expected):
    make_experiment()
    person = Listener("demo", **params)
    assert person.client.post("/s/demo/consent", {"agree": "yes"}).status_code == 303
    _close()
    page = person.client.get("/s/demo/instructions")
    assert page.status_code == 410 and expected in page.content
    trial_page = person.client.post("/s/demo/instructions")
    assert trial_page.status_code == 410 and expected in trial_page.content


@pytest.mark.django_db
def test_a_listener_who_finished_keeps_their_code_after_the_study_closes(media):
    """Finishing the last trial and then being refused the code because the study closed would leave them unpaid."""
    make_experiment(completion_code="DONE42")
    person = Listener("demo", **PROLIFIC)
    person.start()
    person.finish()
    _close()
    page = person.client.get("/s/demo/done")
    assert page.status_code == 200 and prolific.completion_url("DONE42").encode() in page.content


@pytest.mark.django_db
def test_prolific_listener_who_took_part_before_can_still_finish_on_prolific(media):
    """A listener who lost the tab before going back to Prolific needs the code to end the submission."""
    make_experiment(completion_code="DONE42")
    first = Listener("demo", **PROLIFIC)
    first.start()
    first.finish()
    again = Listener("demo", **{**PROLIFIC, "SESSION_ID": "X2"})
    assert again.entry.status_code == 409 and b"already" in again.entry.content
    assert prolific.completion_url("DONE42").encode() in again.entry.content


@pytest.mark.django_db
def test_prolific_listener_screened_out_before_gets_the_screen_out_ending_again(media):
    _screened_out(PROLIFIC, completion_code="DONE42", screened_out_code="SCREEN7")
    again = Listener("demo", **PROLIFIC)
    assert again.entry.status_code == 409
    assert prolific.completion_url("SCREEN7").encode() in again.entry.content and b"DONE42" not in again.entry.content


# --- MTurk (ExternalQuestion) ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_mturk_screened_out_worker_is_told_to_return_the_hit_and_gets_no_submit_button(media):
    """Before: a bare thank-you, so the worker did not know what to do with the HIT they had accepted. A submitted HIT
    would be paid in full by MTurk's auto-approval, which would pay failing the sound check on purpose."""
    person = _screened_out(TURK)
    page = person.client.get("/s/demo/done").content
    assert b"headphones" in page and RETURN_THE_HIT in page
    assert b"externalSubmit" not in page and b"completion_code" not in page


@pytest.mark.django_db
def test_a_screened_out_worker_counts_as_no_answer_and_is_paid_only_on_the_researchers_word(media, stub):
    """The analysis reads answers; `mturk approve` pays pay_ok=True only (a worker who submitted anyway)."""
    person = _screened_out(TURK)
    p = person.participant
    assert not p.assignments.exists() and not Response.objects.filter(participant=p).exists()
    assert p.analyse_ok is False and p.pay_ok is None
    assert not analysable_responses(p.experiment).filter(participant=p).exists()
    row = MturkAssignment.objects.create(experiment=p.experiment, participant=p, sandbox=True, hit_id="HIT1",
                                         assignment_id="ASG1", worker_id="AWSCREEN1", status="Submitted")
    experiment = p.experiment
    assert approvals_due(experiment, live=False) == []
    call_command("mturk", "approve", "--experiment", "demo", stdout=io.StringIO())  # the stub answers no call: none is made
    Participant.objects.filter(pk=p.pk).update(pay_ok=True)
    assert [r.pk for r in approvals_due(experiment, live=False)] == [row.pk]


@pytest.mark.django_db
def test_mturk_worker_who_reloads_the_hit_after_finishing_can_still_submit_it(media):
    """Reloading MTurk's page loads the study link again; a 'taken part' page there would leave the HIT unsubmittable."""
    make_experiment()
    person = Listener("demo", **TURK)
    person.start()
    person.finish()
    again = Listener("demo", **TURK)
    assert again.entry.status_code == 302 and again.entry["Location"].startswith("/s/demo/done")
    page = again.client.get(again.entry["Location"]).content.decode()
    assert 'action="https://www.mturk.com/mturk/externalSubmit"' in page and 'name="completion_code"' in page
    assert 'name="outcome"' not in page


@pytest.mark.django_db
@pytest.mark.parametrize("closed", [False, True])
def test_mturk_worker_screened_out_who_reloads_the_hit_is_told_again_to_return_it(media, closed):
    """Even once the study has closed: the HIT they accepted is still theirs to return."""
    _screened_out(TURK)
    if closed:
        _close()
    again = Listener("demo", **TURK)
    assert again.entry.status_code == 302
    page = again.client.get(again.entry["Location"]).content
    assert b"headphones" in page and RETURN_THE_HIT in page and b"externalSubmit" not in page


@pytest.mark.django_db
@pytest.mark.parametrize("finished", ["done", "screened"])
def test_mturk_worker_who_took_part_before_in_another_assignment_is_told_to_return_it(media, finished):
    """One submission per worker and study: a second HIT of the same study must be returned, not submitted again."""
    if finished == "done":
        make_experiment()
        person = Listener("demo", **TURK)
        person.start()
        person.finish()
    else:
        _screened_out(TURK)
    again = Listener("demo", **{**TURK, "assignmentId": "ASG2", "hitId": "HIT2"})
    assert again.entry.status_code == 409 and b"already" in again.entry.content and RETURN_THE_HIT in again.entry.content
    assert b"externalSubmit" not in again.entry.content
    assert Participant.objects.get(worker_id="AWSCREEN1").assignment_id == "ASG1"


# --- the researcher's side ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_screen_out_code_must_differ_from_the_completion_code_and_follow_prolifics_rule():
    """The same code for both would pay every screened-out listener the full reward."""
    def check(**codes):
        Experiment(slug="s", words=["yes", "no"], **codes).full_clean()

    with pytest.raises(ValidationError) as same:
        check(completion_code="SAME1", screened_out_code="SAME1")
    assert list(same.value.message_dict) == ["screened_out_code"]
    with pytest.raises(ValidationError) as bad:
        check(completion_code="A1", screened_out_code="not ok!")
    assert list(bad.value.message_dict) == ["screened_out_code"]
    check(completion_code="A1", screened_out_code="B2")


@pytest.mark.django_db(transaction=True)
def test_migration_0006_keeps_existing_studies_as_they_were():
    """A study made before the screen-out code has none: its screened-out listeners are asked to return, as before."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("evaluation", "0005_mturk_batch_route")], [("evaluation", "0006_experiment_screened_out_code")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps.get_model("evaluation", "Experiment")
    made = old.objects.create(slug="old", completion_code="C0DE")
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(after)
    new = executor.loader.project_state(after).apps.get_model("evaluation", "Experiment")
    assert new.objects.filter(pk=made.pk).values_list("completion_code", "screened_out_code").get() == ("C0DE", "")
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


# --- a phone inside MTurk's frame ---------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
@pytest.mark.django_db(transaction=True)
def test_screened_out_worker_on_a_phone_in_the_frame_reads_that_they_return_the_hit(two_sites, framing_chromium):
    make_experiment(headphone_check=True)
    port = two_sites.port
    params = {"workerId": "APHONESCREEN", "assignmentId": "ASG-SCR", "hitId": "HIT-SCR", "turkSubmitTo": f"https://{MTURK}:{port}"}
    two_sites.frame_url = f"https://{SURVEY}:{port}/s/demo/?{urlencode(params)}"
    context = framing_chromium.new_context(viewport={"width": 375, "height": 667}, is_mobile=True, has_touch=True, device_scale_factor=2)
    try:
        page = context.new_page()
        failures: list[str] = []
        page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 500 else None)
        page.goto(f"https://{MTURK}:{port}/hit")
        frame = page.frame_locator("#task")
        frame.locator("#agree").tap()
        frame.locator("#consent-next").tap()
        frame.locator("#instructions-next").tap()
        frame.locator("#headphones-next").wait_for()
        key = Participant.objects.get().headphone_key
        for i, k in enumerate(key):
            frame.locator(f"input[name=t{i}][value='{(k + 1) % 3 + 1}']").tap()
        frame.locator("#headphones-next").tap()
        frame.locator("#message").wait_for(timeout=15_000)
        text = frame.locator("main").inner_text()
        assert "headphones" in text and "return this HIT" in text and "Submit HIT" not in text
        inner = next(f for f in page.frames if f.url.startswith(f"https://{SURVEY}"))
        width = inner.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert width[0] <= width[1]
        assert failures == []
    finally:
        context.close()
    assert two_sites.submissions == []
    assert not Participant.objects.get().assignments.exists()


@pytest.mark.django_db
def test_prolific_url_prints_the_screen_out_code_to_enter_in_prolific(media):
    """The researcher sets up Prolific's codes from this command's output; the screen-out code was missing from it."""
    out = io.StringIO()
    make_experiment(headphone_check=True, completion_code="DONE42", screened_out_code="SCREEN7")
    call_command("prolific_url", experiment="demo", base_url="https://survey.example.org", stdout=out)
    assert "Completion code: DONE42\n" in out.getvalue() and "Screen-out code: SCREEN7  " in out.getvalue()
    Experiment.objects.filter(slug="demo").update(screened_out_code="")
    out = io.StringIO()
    call_command("prolific_url", experiment="demo", base_url="https://survey.example.org", stdout=out)
    assert "Screen-out code: none set" in out.getvalue()
