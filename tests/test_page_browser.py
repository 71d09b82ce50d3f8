"""The listener's page on a 390x844 phone in Chromium: the play state beside Play, screen-reader
announcements, select-then-confirm, the announced Prolific redirect, and the page without JavaScript."""
from __future__ import annotations

import time

import pytest

from evaluation.models import Participant, Response
from tests.helpers.browser import CHROMIUM, SIZES, SPEECH_COMMANDS
from tests.helpers.survey import make_experiment

PHONE = SIZES["phone"]
HEIGHT = PHONE["viewport"]["height"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]

# Every text an aria-live region shows, in order: what a screen reader would have announced.
RECORD_LIVE = """() => {
  window.announced = [];
  const live = document.querySelectorAll('[aria-live]');
  const seen = el => window.announced.push(el.id + ': ' + el.textContent.trim());
  live.forEach(el => { seen(el); new MutationObserver(() => seen(el)).observe(el, {childList: true, characterData: true, subtree: true}); });
}"""


def to_first_trial(page, url: str) -> None:
    page.goto(url)
    page.locator("#agree").check()
    page.locator("#consent-next").click()
    page.locator("#instructions-next").click()
    page.wait_for_selector("#play")


def in_view(page, selector: str) -> dict:
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    assert 0 <= box["y"] and box["y"] + box["height"] <= HEIGHT, (selector, box)
    return box


@pytest.mark.django_db(transaction=True)
def test_phone_shows_the_state_beside_play_announces_it_and_confirms_before_storing(live_server, browser_settings, chromium):
    make_experiment(words=SPEECH_COMMANDS, replay_limit=2)
    context = chromium.new_context(**PHONE)
    page = context.new_page()
    to_first_trial(page, f"{live_server.url}/s/demo/")

    play, state = in_view(page, "#play"), in_view(page, "#state")
    assert abs((play["y"] + play["height"] / 2) - (state["y"] + state["height"] / 2)) < play["height"]  # same row
    assert "unlock" in page.locator("#state").inner_text()
    progress = page.locator("#progress")
    assert progress.get_attribute("aria-label") == "Progress" and progress.get_attribute("aria-valuenow") == "0"
    total = progress.get_attribute("aria-valuemax")
    answers = page.locator("button.answer")
    assert answers.count() == 36 and answers.nth(0).is_disabled()

    page.evaluate(RECORD_LIVE)
    page.locator("#play").click()
    page.locator("button.answer:enabled").first.wait_for(timeout=15_000)
    announced = page.evaluate("window.announced")
    assert "plays: 1 play left" in announced
    assert any(a.startswith("state: Playing") for a in announced)
    assert any(a.startswith("state: Finished") and "unlocked" in a for a in announced)
    in_view(page, "#state")

    participant = Participant.objects.get()
    token = page.locator("input[name=token]").input_value()
    first, second = answers.nth(0), answers.nth(3)
    first.click()
    assert first.get_attribute("aria-pressed") == "true"
    second.click()  # a change of mind before confirming
    assert second.get_attribute("aria-pressed") == "true" and first.get_attribute("aria-pressed") == "false"
    time.sleep(0.5)
    assert Response.objects.count() == 0 and page.locator("input[name=token]").input_value() == token  # nothing sent yet
    assert "Selected: " + SPEECH_COMMANDS[3] in page.locator("#chosen").inner_text()
    in_view(page, "#confirm")  # the sticky bar stays on screen below the 36 targets
    with page.expect_navigation():
        page.locator("#confirm").dblclick()  # a double tap still sends one answer
    page.wait_for_selector("#progress")
    stored = list(Response.objects.filter(participant=participant))
    assert len(stored) == 1 and stored[0].answer == SPEECH_COMMANDS[3] and stored[0].listened_to_end
    assert page.locator("#progress").get_attribute("aria-valuenow") == "1"
    assert page.locator("#progress").get_attribute("aria-valuemax") == total
    context.close()


@pytest.mark.django_db(transaction=True)
def test_the_prolific_redirect_is_announced_with_a_link_and_can_wait(live_server, browser_settings, chromium):
    make_experiment(completion_code="PCODE")
    context = chromium.new_context(**PHONE)
    page = context.new_page()
    page.goto(f"{live_server.url}/s/demo/?PROLIFIC_PID=pid9&STUDY_ID=s9&SESSION_ID=x9")
    Participant.objects.filter(worker_id="pid9").update(step="done")
    page.reload()  # the consent page sends a finished listener to the end page
    page.wait_for_selector("#redirect")
    note = page.locator("#redirect-note")
    assert note.get_attribute("aria-live") == "polite"
    assert "Taking you back to Prolific in 3 seconds" in note.inner_text()
    link = page.locator("#redirect")
    assert link.get_attribute("href").startswith("https://app.prolific.com/submissions/complete?cc=PCODE")
    in_view(page, "#redirect")
    page.locator("#redirect-stay").click()
    time.sleep(3.5)
    assert page.url.startswith(live_server.url) and "staying on this page" in note.inner_text()
    context.close()


@pytest.mark.django_db(transaction=True)
def test_without_javascript_one_tap_posts_one_answer(live_server, browser_settings, chromium):
    make_experiment()
    context = chromium.new_context(java_script_enabled=False, **PHONE)
    page = context.new_page()
    to_first_trial(page, f"{live_server.url}/s/demo/")
    assert page.locator("#confirm-bar").is_hidden()
    src = page.locator("#clip").get_attribute("data-src")
    assert page.request.get(f"{live_server.url}{src}").ok  # what the noscript player fetches
    time.sleep(1.5)  # at least the clip's length
    with page.expect_navigation():
        page.locator("button.answer").first.click()
    assert Response.objects.count() == 1
    context.close()


@pytest.mark.django_db(transaction=True)
def test_after_the_last_play_a_reload_lets_the_listener_answer(live_server, browser_settings, chromium):
    make_experiment(replay_limit=1)
    context = chromium.new_context(**PHONE)
    page = context.new_page()
    to_first_trial(page, f"{live_server.url}/s/demo/")
    page.locator("#play").click()
    page.locator("button.answer:enabled").first.wait_for(timeout=15_000)
    page.reload()
    assert page.locator("#play").is_disabled() and "No plays left" in page.locator("#state").inner_text()
    assert page.locator("#plays").inner_text() == "0 plays left"
    page.locator("button.answer").first.click()
    with page.expect_navigation():
        page.locator("#confirm").click()
    assert Response.objects.count() == 1
    context.close()
