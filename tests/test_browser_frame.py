"""A whole HIT inside MTurk's frame, in real Chromium, with third-party cookies blocked (issue 11.1).

One local HTTPS server (a self-signed certificate made for the test) answers for two sites that
Chromium is told live on 127.0.0.1: `worker.mturk.test`, a stand-in for MTurk's worker
site (the HIT page that frames the survey, and `/mturk/externalSubmit`, which records what
it is sent), and `survey.test`, the survey itself. The two are different sites, so inside
the frame the survey's cookies are third-party and refused; the survey must still carry
the worker from consent to the submitted HIT.
"""
from __future__ import annotations

import shutil
from urllib.parse import urlencode

import pytest

from evaluation import assignment as assigning
from evaluation.models import Participant
from tests.helpers.browser import CHROMIUM
from tests.helpers.frame import MTURK, SURVEY
from tests.helpers.survey import make_experiment, right_answer

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make the test certificate"),
]


@pytest.mark.django_db(transaction=True)
def test_a_hit_is_completed_inside_a_cross_site_frame_without_cookies(two_sites, framing_chromium):
    make_experiment(trials_per_listener=2, replay_limit=2)
    port = two_sites.port
    params = {"workerId": "AFRAMEWORKER", "assignmentId": "ASG-FRAME", "hitId": "HIT-FRAME", "turkSubmitTo": f"https://{MTURK}:{port}"}
    two_sites.frame_url = f"https://{SURVEY}:{port}/s/demo/?{urlencode(params)}"
    context = framing_chromium.new_context()  # third-party cookies blocked, as Safari, Brave and incognito Chrome do
    try:
        page = context.new_page()
        failures: list[str] = []
        page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.goto(f"https://{MTURK}:{port}/hit")
        frame = page.frame_locator("#task")
        frame.locator("#agree").check()
        frame.locator("#consent-next").click()
        frame.locator("#instructions-next").click()
        participant = Participant.objects.get()
        answered = 0
        while True:
            frame.locator("#play, #mturk-submit").first.wait_for(timeout=15_000)
            if frame.locator("#mturk-submit").count():
                break
            token = frame.locator("input[name=token]").input_value()
            trial = participant.assignments.select_related("stimulus").get(token=token)
            frame.locator("#play").click()
            frame.locator("button.answer:enabled").first.wait_for(timeout=15_000)
            name, choice = next(iter(right_answer(trial.stimulus, "identification").items()))
            frame.locator(f"button.answer[name={name}][value='{choice}']").click()  # selects
            frame.locator("#confirm").click()  # and sends
            frame.locator(f"input[name=token]:not([value='{token}']), #mturk-submit").first.wait_for(state="attached", timeout=15_000)
            answered += 1
        frame.locator("#mturk-submit button").click()
        frame.locator("#submitted").wait_for(timeout=15_000)
    finally:
        context.close()

    participant.refresh_from_db()
    assert answered == participant.assignments.count() == 1 + 2 + 1 + 1
    assert participant.step == "done" and participant.responses.filter(listened_to_end=True).count() == answered
    assert two_sites.submissions == [{"assignmentId": "ASG-FRAME", "completion_code": f"HS-{participant.token[:10].upper()}"}]
    assert failures == []
    # the frame really was cookieless: the survey set its cookies, and the browser never sent one back
    assert two_sites.survey_set_cookies > 0 and len(two_sites.survey_cookies) > 10 and not any(two_sites.survey_cookies)
    assert assigning.next_assignment(participant) is None
