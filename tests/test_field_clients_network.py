"""Listeners on phones with flaky connections, in real Chromium at 375x667 with touch: the clip failing,
stalling or refused, and the answer sent while offline or to a server that does not answer. Every failure
is said on the page, the listener can go on, and the server's count of plays and answers stays the truth."""
from __future__ import annotations

import time

import pytest

from evaluation.models import Assignment, Experiment, Response
from tests.helpers.browser import CHROMIUM
from tests.helpers.page import current_trial, play_to_the_end, to_first_trial
from tests.helpers.survey import make_experiment

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


def state(page) -> str:
    return page.locator("#state").inner_text()


@pytest.mark.django_db(transaction=True)
def test_an_answer_confirmed_offline_stays_on_the_page_and_is_sent_once_when_back_online(phone):
    context, page, url = phone
    make_experiment(replay_limit=2)
    to_first_trial(page, f"{url}/s/demo/")
    trial = current_trial(page)
    play_to_the_end(page)
    page.locator("button.answer").nth(1).tap()
    context.set_offline(True)
    page.locator("#confirm").tap()
    time.sleep(0.3)
    # still the survey's page (not the browser's "no internet" page), saying what happened, with a way on
    assert page.locator("input[name=token]").input_value() == trial.token
    assert "was not sent" in page.locator("#chosen").inner_text() and "offline" in page.locator("#chosen").inner_text()
    assert page.locator("#confirm").is_enabled() and page.locator("#confirm").inner_text() == "Send again"
    assert Response.objects.count() == 0
    context.set_offline(False)
    with page.expect_navigation():
        page.locator("#confirm").tap()
    page.wait_for_selector("#play")
    assert page.locator("input[name=token]").input_value() != trial.token
    stored = list(Response.objects.all())
    assert len(stored) == 1 and stored[0].assignment_id == trial.pk and stored[0].answer == trial.stimulus.experiment.words[1]


@pytest.mark.django_db(transaction=True)
def test_a_server_that_does_not_answer_the_post_frees_the_button_and_a_resend_stores_one_answer(phone):
    context, page, url = phone
    make_experiment(replay_limit=2)
    to_first_trial(page, f"{url}/s/demo/")
    trial = current_trial(page)
    play_to_the_end(page)
    held = []
    page.route("**/s/demo/answer*", lambda route: held.append(route))  # the server never answers
    page.locator("button.answer").first.tap()
    page.locator("#confirm").tap(no_wait_after=True)
    page.locator("#confirm:enabled").wait_for(timeout=20_000)  # given up on after 15 s
    assert "did not answer" in page.locator("#chosen").inner_text()
    assert page.locator("button.answer:enabled").count() == 0  # the choice sent once is kept for the resend
    page.unroute("**/s/demo/answer*")
    with page.expect_navigation():
        page.locator("#confirm").tap()
    page.wait_for_selector("#play")
    assert page.locator("input[name=token]").input_value() != trial.token
    assert list(Response.objects.values_list("assignment_id", flat=True)) == [trial.pk]


@pytest.mark.django_db(transaction=True)
def test_playing_offline_costs_no_play_and_unlocks_nothing(phone):
    context, page, url = phone
    make_experiment(replay_limit=2)
    to_first_trial(page, f"{url}/s/demo/")
    context.set_offline(True)
    for _ in range(3):
        page.locator("#play").tap()
        page.wait_for_function("() => /connection/.test(document.getElementById('state').textContent)")
        page.locator("#play:enabled").wait_for(timeout=5_000)
    assert "check it, then press Play" in state(page)
    assert page.locator("#plays").inner_text() == "2 plays left"
    assert page.locator("button.answer:enabled").count() == 0  # nothing was heard: answers stay locked
    context.set_offline(False)
    play_to_the_end(page)
    assert page.locator("#plays").inner_text() == "1 play left"
    assert Assignment.objects.get(token=page.locator("input[name=token]").input_value()).play_count == 1


@pytest.mark.django_db(transaction=True)
def test_a_clip_refused_because_the_study_closed_shows_the_closed_page(phone):
    context, page, url = phone
    make_experiment(replay_limit=3)
    to_first_trial(page, f"{url}/s/demo/")
    Experiment.objects.update(status="closed")
    page.locator("#play").tap()
    page.locator("#message").wait_for(timeout=10_000)
    assert page.locator("h1").inner_text() == "This study is closed"


@pytest.mark.django_db(transaction=True)
def test_plays_used_up_in_another_tab_are_shown_from_the_server(phone):
    context, page, url = phone
    make_experiment(replay_limit=2)
    to_first_trial(page, f"{url}/s/demo/")
    other = context.new_page()  # the same listener's second tab plays the clip twice
    other.goto(page.url)
    for left in ("1 play left", "0 plays left"):
        other.locator("#play").tap()
        other.wait_for_function("() => /Finished/.test(document.getElementById('state').textContent)", timeout=15_000)
        assert other.locator("#plays").inner_text() == left
        other.evaluate("document.getElementById('state').textContent = ''")
    other.close()
    assert current_trial(page).play_count == 2
    page.locator("#play").tap()  # this tab still thinks 2 plays are left: the server refuses (403)
    page.wait_for_function("() => /No plays left/.test(document.getElementById('state').textContent)", timeout=10_000)
    assert page.locator("#plays").inner_text() == "0 plays left" and page.locator("#play").is_disabled()
    page.locator("button.answer").first.tap()
    with page.expect_navigation():
        page.locator("#confirm").tap()
    assert Response.objects.count() == 1  # the other tab heard it to the end: the server accepts


@pytest.mark.django_db(transaction=True)
def test_a_clip_that_stalls_while_loading_is_given_up_and_can_be_played_again(phone):
    context, page, url = phone
    make_experiment(replay_limit=2)
    to_first_trial(page, f"{url}/s/demo/")
    held = []
    page.route("**/a/*", lambda route: held.append(route))  # the clip's bytes never come
    page.locator("#play").tap()
    page.wait_for_function("() => document.getElementById('play').disabled")
    page.locator("#play:enabled").wait_for(timeout=15_000)  # given up on after 8 s without a byte
    assert "stopped loading" in state(page) and "Press Play to try again" in state(page)
    assert page.locator("#plays").inner_text() == "2 plays left"  # the server never served it: no play used
    page.unroute("**/a/*")
    play_to_the_end(page)
    assert current_trial(page).play_count == 1


@pytest.mark.django_db(transaction=True)
def test_a_sound_check_tone_that_fails_to_load_can_be_played_again(phone):
    context, page, url = phone
    make_experiment(headphone_check=True)
    page.goto(f"{url}/s/demo/")
    page.locator("#agree").check()
    page.locator("#consent-next").click()
    page.locator("#instructions-next").click()
    first = page.locator("button.play-once").first
    first.wait_for()
    context.set_offline(True)
    first.tap()  # each tone may be played once; one that never arrived was not played
    page.locator("fieldset.hp").first.locator("button.play-once:enabled").wait_for(timeout=5_000)
    note = page.locator("fieldset.hp").first.locator(".hp-note")
    assert first.is_enabled() and "could not be played" in note.inner_text() and note.get_attribute("role") == "status"
    context.set_offline(False)
    with page.expect_request("**/headphones/0*"):
        first.tap()
    assert first.is_disabled()
