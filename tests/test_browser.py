"""The whole listener flow in real Chromium, at phone and desktop sizes.

Run with the suite when /usr/bin/chromium exists (hearsay.sh test installs it).
Cookies are set without Secure here because the live server speaks plain http.
"""
from __future__ import annotations


import pytest

from evaluation import assignment as assigning
from evaluation.models import Participant
from tests.helpers.browser import CHROMIUM, SIZES, SPEECH_COMMANDS
from tests.helpers.survey import make_experiment, right_answer

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


def _answer_current(page, participant: Participant, task: str) -> str:
    """Check the play-to-the-end rule, play, answer; returns the trial's token."""
    page.wait_for_load_state("domcontentloaded")  # survey.js has locked the answers (the HTML leaves them on for no-JS)
    trial = assigning.next_assignment(participant)
    token = page.locator("input[name=token]").input_value()
    assert token == trial.token
    answers = page.locator("button.answer")
    assert answers.count() == (len(participant.experiment.words) + 1 if task == "identification" else 5)
    assert all(answers.nth(i).is_disabled() for i in range(answers.count()))
    page.locator("#play").click()
    page.locator("button.answer:enabled").first.wait_for(timeout=15_000)  # unlocked by the clip's ended event
    value = right_answer(trial.stimulus, task)
    name, choice = next(iter(value.items()))
    page.locator(f"button.answer[name={name}][value='{choice}']").click()  # selects
    with page.expect_navigation():  # sent in the background, then the page the server sends on to
        page.locator("#confirm").click()  # and sends
    page.wait_for_load_state("domcontentloaded")
    return token


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("size", sorted(SIZES))
def test_whole_listener_flow_in_chromium(live_server, browser_settings, chromium, size):
    make_experiment(headphone_check=True, trials_per_listener=2, completion_code="DONE-OK", replay_limit=2, words=SPEECH_COMMANDS)
    context = chromium.new_context(**SIZES[size])
    page = context.new_page()
    failures: list[str] = []
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 500 else None)
    page.goto(f"{live_server.url}/s/demo/")

    page.locator("#agree").check()
    page.locator("#consent-next").click()
    page.locator("#instructions-next").click()
    participant = Participant.objects.get()
    page.wait_for_selector("fieldset.hp")
    for i, quiet in enumerate(participant.headphone_key):
        page.locator(f"input[name=t{i}][value='{quiet + 1}']").check()
    page.locator("#headphones-next").click()
    assert page.locator("#practice").is_visible()

    total = participant.assignments.count()
    tokens = []
    tokens.append(_answer_current(page, participant, "identification"))
    before_reload = page.locator("input[name=token]").input_value()
    page.reload()
    assert page.locator("input[name=token]").input_value() == before_reload  # resumes at the same trial
    if size == "phone":  # all 35 words and "none" fit the phone's width
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        boxes = [page.locator("button.answer").nth(i).bounding_box() for i in range(36)]
        assert all(box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["height"] >= 40 for box in boxes)
    while page.locator("input[name=token]").count():
        tokens.append(_answer_current(page, participant, "identification"))
    assert page.locator("#code").inner_text() == "DONE-OK"
    assert len(tokens) == total == len(set(tokens))
    participant.refresh_from_db()
    assert participant.finished_at is not None and participant.headphone_score == 6
    responses = list(participant.responses.all())
    assert len(responses) == total and all(r.listened_to_end and r.play_count == 1 for r in responses)
    assert all(r.response_ms is not None for r in responses)
    assert failures == []
    context.close()
