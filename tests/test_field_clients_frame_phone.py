"""A whole HIT on a phone (375x667, touch) inside MTurk's cross-site frame with third-party cookies blocked, the frame
as wide as the screen less MTurk's margins: every control fits the frame's width, text is readable, the clip, the
answers and the completion step all work by touch, through network trouble on the way."""
from __future__ import annotations

from urllib.parse import urlencode

import pytest

from evaluation.models import Participant
from tests.helpers.browser import CHROMIUM, SPEECH_COMMANDS
from tests.helpers.frame import MTURK, SURVEY
from tests.helpers.survey import make_experiment, right_answer

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")]

FRAME_WIDTH = 343  # 375 less MTurk's 16-px margins

# What overflows the frame's width, and any text smaller than 14 px, inside the frame's document.
LAYOUT = """() => {
  const width = document.documentElement.clientWidth;
  const over = [...document.querySelectorAll('main *')].filter(el => {
    const r = el.getBoundingClientRect();
    return r.width > 0 && (r.left < -0.5 || r.right > width + 0.5);
  }).map(el => el.tagName + '#' + el.id + '.' + el.className);
  const small = [...document.querySelectorAll('main *')].filter(el => el.offsetParent !== null && el.childNodes.length &&
    [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim()) && parseFloat(getComputedStyle(el).fontSize) < 14
  ).map(el => el.tagName + '#' + el.id);
  return {scroll: document.documentElement.scrollWidth, width, over, small};
}"""


def _hit_page(sites):
    def mturk(environ, start_response):
        if environ["PATH_INFO"] == "/hit":
            page = (f'<!doctype html><meta name="viewport" content="width=device-width, initial-scale=1"><title>HIT</title>'
                    f'<body style="margin:16px"><iframe id=task src="{sites.frame_url}" '
                    f'style="width:{FRAME_WIDTH}px;height:560px;border:0"></iframe>').encode()
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [page]
        return type(sites).mturk(sites, environ, start_response)
    sites.mturk = mturk


def _fits(frame_page, where: str) -> None:
    layout = frame_page.evaluate(LAYOUT)
    assert layout["scroll"] <= layout["width"] and layout["over"] == [], (where, layout)
    assert layout["small"] == [], (where, layout)


@pytest.mark.django_db(transaction=True)
def test_a_hit_on_a_phone_inside_the_frame_fits_and_completes_by_touch(two_sites, framing_chromium):
    make_experiment(trials_per_listener=1, replay_limit=2, words=SPEECH_COMMANDS)
    port = two_sites.port
    params = {"workerId": "APHONEWORKER", "assignmentId": "ASG-PHONE", "hitId": "HIT-PHONE", "turkSubmitTo": f"https://{MTURK}:{port}"}
    two_sites.frame_url = f"https://{SURVEY}:{port}/s/demo/?{urlencode(params)}"
    _hit_page(two_sites)
    context = framing_chromium.new_context(viewport={"width": 375, "height": 667}, is_mobile=True, has_touch=True, device_scale_factor=2)
    try:
        page = context.new_page()
        failures: list[str] = []
        page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 500 else None)
        page.goto(f"https://{MTURK}:{port}/hit")
        frame = page.frame_locator("#task")
        frame.locator("#agree").wait_for()
        inner = next(f for f in page.frames if f.url.startswith(f"https://{SURVEY}"))
        _fits(inner, "consent")
        frame.locator("#agree").tap()
        frame.locator("#consent-next").tap()
        frame.locator("#instructions-next").tap()
        participant = Participant.objects.get()
        answered = 0
        while True:
            frame.locator("#play, #mturk-submit").first.wait_for(timeout=15_000)
            inner = next(f for f in page.frames if f.url.startswith(f"https://{SURVEY}"))
            if frame.locator("#mturk-submit").count():
                break
            _fits(inner, "trial")
            token = frame.locator("input[name=token]").input_value()
            trial = participant.assignments.select_related("stimulus").get(token=token)
            if answered == 1:  # the connection drops as the answer is confirmed, then comes back
                frame.locator("#play").tap()
                frame.locator("button.answer:enabled").first.wait_for(timeout=15_000)
                frame.locator("button.answer").first.tap()
                context.set_offline(True)
                frame.locator("#confirm").tap()
                frame.locator("#confirm:enabled").wait_for(timeout=5_000)
                assert "was not sent" in frame.locator("#chosen").inner_text()
                context.set_offline(False)
                frame.locator("#confirm").tap()
                frame.locator(f"input[name=token]:not([value='{token}']), #mturk-submit").first.wait_for(state="attached", timeout=15_000)
                answered += 1
                continue
            frame.locator("#play").tap()
            frame.locator("button.answer:enabled").first.wait_for(timeout=15_000)
            name, choice = next(iter(right_answer(trial.stimulus, "identification").items()))
            frame.locator(f"button.answer[name={name}][value='{choice}']").tap()
            confirm = frame.locator("#confirm")
            box = confirm.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 16 + FRAME_WIDTH
            confirm.tap()
            frame.locator(f"input[name=token]:not([value='{token}']), #mturk-submit").first.wait_for(state="attached", timeout=15_000)
            answered += 1
        _fits(inner, "done")
        frame.locator("#mturk-submit button").tap()
        frame.locator("#submitted").wait_for(timeout=15_000)
        assert failures == []
    finally:
        context.close()
    participant.refresh_from_db()
    assert participant.step == "done" and participant.responses.count() == answered == participant.assignments.count()
    assert len(two_sites.submissions) == 1 and two_sites.submissions[0]["assignmentId"] == "ASG-PHONE"
    assert not any(two_sites.survey_cookies)
