"""Listeners whose browser runs no JavaScript (a locked-down work phone, a reader mode, a script blocker): every page
says how it works without the script, and no visible control is one that only the script would make work."""
from __future__ import annotations

import pytest

from evaluation.models import Participant
from tests.helpers.browser import CHROMIUM
from tests.helpers.survey import make_experiment

PHONE = {"viewport": {"width": 375, "height": 667}, "is_mobile": True, "has_touch": True}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]

# buttons on screen that are enabled but neither submit a form nor do anything without a script
DEAD_BUTTONS = """() => [...document.querySelectorAll('button')].filter(b => {
  const r = b.getBoundingClientRect();
  return r.width > 0 && r.height > 0 && !b.disabled && b.type === 'button';
}).map(b => b.id || b.className || b.textContent.trim())"""


@pytest.fixture
def no_js_phone(live_server, browser_settings, chromium):
    context = chromium.new_context(java_script_enabled=False, **PHONE)
    yield context.new_page(), live_server.url
    context.close()


@pytest.mark.django_db(transaction=True)
def test_the_sound_check_and_the_trial_work_and_say_so_without_javascript(no_js_phone):
    page, url = no_js_phone
    make_experiment(headphone_check=True, replay_limit=2)
    page.goto(f"{url}/s/demo/")
    page.locator("#agree").check()
    page.locator("#consent-next").click()
    page.locator("#instructions-next").click()
    page.wait_for_selector("fieldset.hp")
    assert page.evaluate(DEAD_BUTTONS) == []
    players = page.locator("fieldset.hp audio[controls]")
    assert players.count() == 6 and all(players.nth(i).is_visible() for i in range(6))
    src = players.first.get_attribute("src")
    tone = page.request.get(f"{url}{src}")
    assert tone.ok and tone.headers["content-type"] == "audio/wav"
    key = Participant.objects.get().headphone_key
    for i, quiet in enumerate(key):
        page.locator(f"input[name=t{i}][value='{quiet + 1}']").check()
    page.locator("#headphones-next").click()
    page.wait_for_selector("#trial")
    assert page.evaluate(DEAD_BUTTONS) == []
    assert page.locator("#noscript-note").is_visible() and "JavaScript is off" in page.locator("#noscript-note").inner_text()
    assert page.locator("#play").is_disabled() and page.locator("#state").is_hidden()  # no "press Play" that cannot work


@pytest.mark.django_db(transaction=True)
def test_the_end_page_offers_no_dead_stay_button_without_javascript(no_js_phone):
    page, url = no_js_phone
    make_experiment(completion_code="PCODE")
    page.goto(f"{url}/s/demo/?PROLIFIC_PID=pidnojs&STUDY_ID=s1&SESSION_ID=x1")
    Participant.objects.filter(worker_id="pidnojs").update(step="done")
    page.goto(f"{url}/s/demo/done?p={page.url.split('?p=')[1]}")
    assert page.locator("#redirect").is_visible()
    assert page.locator("#redirect-stay").is_hidden() and page.evaluate(DEAD_BUTTONS) == []
