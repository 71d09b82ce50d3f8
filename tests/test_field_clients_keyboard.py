"""A listener who uses only the keyboard (and a screen reader): the trial can be played, answered and confirmed
with a handful of keys, and what the screen reader is told names the question, the state and the choice."""
from __future__ import annotations

import pytest

from evaluation.models import Participant, Response
from tests.helpers.browser import CHROMIUM, SPEECH_COMMANDS
from tests.helpers.survey import make_experiment

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")]

# Every text an aria-live region shows, in order: what a screen reader would have announced.
RECORD_LIVE = """() => {
  window.announced = [];
  document.querySelectorAll('[aria-live]').forEach(el => new MutationObserver(
    () => window.announced.push(el.id + ': ' + el.textContent.trim())).observe(el, {childList: true, characterData: true, subtree: true}));
}"""
ACTIVE = "() => document.activeElement.id || document.activeElement.textContent.trim()"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("task", ["identification", "rating"])
def test_keyboard_only_plays_picks_and_confirms_in_a_few_keys(live_server, browser_settings, chromium, task):
    make_experiment(task=task, replay_limit=2, words=SPEECH_COMMANDS)
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(f"{live_server.url}/s/demo/")
    page.locator("#agree").check()
    page.locator("#consent-next").click()
    page.locator("#instructions-next").click()
    page.wait_for_selector("#play:enabled")
    token = page.locator("input[name=token]").input_value()
    page.evaluate(RECORD_LIVE)
    page.keyboard.press("Tab")
    assert page.evaluate(ACTIVE) == "play"
    page.keyboard.press("Enter")
    page.locator("button.answer:enabled").first.wait_for(timeout=15_000)
    announced = [a for a in page.evaluate("window.announced") if a.startswith("state: ")]
    # a clip that plays normally is announced as playing, then finished: never as slow or failed
    assert announced[0] == "state: Playing…" and announced[-1].startswith("state: Finished"), announced
    assert not any("slow" in a or "could not" in a for a in announced), announced
    answers = page.locator("button.answer")
    group = page.locator("[role=group]")
    assert group.get_attribute("aria-labelledby") == "question"
    assert "arrow keys" in page.locator(f"#{group.get_attribute('aria-describedby')}").text_content()  # what a screen reader adds
    page.keyboard.press("Tab")  # into the answers: one stop
    assert page.evaluate("document.activeElement.classList.contains('answer')")
    for _ in range(3):
        page.keyboard.press("ArrowDown" if task == "rating" else "ArrowRight")
    expected = answers.nth(3)
    assert page.evaluate("document.activeElement") == expected.evaluate("el => el")
    page.keyboard.press("Enter")  # chooses
    assert expected.get_attribute("aria-pressed") == "true"
    chosen = page.locator("#chosen")
    assert chosen.get_attribute("aria-live") == "polite" and chosen.inner_text().startswith("Selected: ")
    page.keyboard.press("Tab")  # straight on to Confirm
    assert page.evaluate(ACTIVE) == "confirm"
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.wait_for_selector("#progress")
    stored = Response.objects.get(participant=Participant.objects.get())
    assert stored.assignment.token == token
    if task == "rating":
        assert stored.rating == int(expected.get_attribute("value"))
    else:
        assert stored.answer == SPEECH_COMMANDS[3]
    context.close()
