"""An answer whose connection resets while it is being sent, with the browser still believing it is online (a phone
switching cell towers, Wi-Fi dropping a connection): the survey keeps the page with the listener's choice and
*Send again* instead of the browser's "This site can't be reached", and a resend stores exactly one answer, also
when the first post did arrive and only its reply was lost. In real Chromium at 375x667 with touch; the reset is
Playwright aborting the real request (the server, database and page are the real ones)."""
from __future__ import annotations

import re

import pytest

from evaluation.models import Assignment, Experiment, Response
from tests.helpers.browser import CHROMIUM
from tests.helpers.page import current_trial, play_to_the_end, to_first_trial
from tests.helpers.survey import Listener, make_experiment

browser = pytest.mark.browser
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
ANSWER_URL = "**/s/demo/answer*"


def _kept_with_send_again(page, token: str) -> None:
    """The survey is still on the page, on the same trial, offering Send again (not the browser's error page)."""
    try:
        page.wait_for_function("() => { const c = document.getElementById('confirm'); "
                               "return c !== null && !c.disabled && c.textContent === 'Send again'; }", timeout=5_000)
    except Exception:  # noqa: BLE001  (say what the listener sees instead of a bare timeout)
        raise AssertionError(f"the survey page was replaced by {page.url!r}: {page.locator('body').inner_text()[:200]!r}") from None
    assert page.locator("input[name=token]").input_value() == token


def _reset_once(page, *, after_server: bool) -> list[str]:
    """Reset the first post of the answer (before it reaches the server, or after the server answered it); let later ones
    through. Returns what each post met."""
    met: list[str] = []

    def handle(route):
        if met:
            met.append("passed")
            route.continue_()
            return
        if after_server:
            reply = route.fetch(max_redirects=0)  # the server gets the answer and answers it; the reply is lost
            met.append(f"reset after {reply.status}")
        else:
            met.append("reset")
        route.abort("connectionreset")

    page.route(ANSWER_URL, handle)
    return met


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("after_server", [False, True], ids=["before-the-server", "reply-lost"])
@browser
@needs_chromium
def test_an_answer_whose_connection_resets_is_kept_and_a_resend_stores_it_once(phone, after_server):
    context, page, url = phone
    make_experiment(replay_limit=2)
    to_first_trial(page, f"{url}/s/demo/")
    trial = current_trial(page)
    word = trial.stimulus.experiment.words[2]
    refused: list[str] = []
    page.on("response", lambda r: refused.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    met = _reset_once(page, after_server=after_server)
    play_to_the_end(page)
    page.locator("button.answer").nth(2).tap()
    assert page.evaluate("navigator.onLine")  # the browser believes it is online all along
    page.locator("#confirm").tap(no_wait_after=True)
    _kept_with_send_again(page, trial.token)
    assert met == (["reset after 303"] if after_server else ["reset"])
    chosen = page.locator("#chosen").inner_text()
    assert word in chosen and "may not have arrived" in chosen and "Send again" in chosen
    assert page.locator("button.answer[aria-pressed=true]").inner_text() == word
    assert page.locator("button.answer:enabled").count() == 0  # the choice sent once is the one sent again
    assert Response.objects.count() == (1 if after_server else 0)
    with page.expect_navigation():
        page.locator("#confirm").tap()
    page.wait_for_selector("#play")
    assert met[1:] == ["passed"]
    assert page.locator("input[name=token]").input_value() != trial.token  # the next trial
    assert page.url.startswith(f"{url}/s/demo/trial?p=")  # a plain page: Reload asks to re-submit nothing
    stored = list(Response.objects.values_list("assignment_id", "answer"))
    assert stored == [(trial.pk, word)]
    assert Assignment.objects.get(pk=trial.pk).answered
    assert refused == []  # no "Not saved" (409) or other refusal on the way
    page.reload()
    assert page.locator("input[name=token]").input_value() != trial.token


@pytest.mark.django_db(transaction=True)
@browser
@needs_chromium
def test_an_answer_costs_the_server_one_next_page_not_two(phone):
    """Before: the background send followed the server's 303 to the next trial page and threw it away, then
    loaded that page again: every answer made the server build the next trial page twice. Counted where the
    server receives requests (the browser's own request events also list a redirect it did not follow)."""
    from django.core.signals import request_started

    context, page, url = phone
    make_experiment(replay_limit=2)
    to_first_trial(page, f"{url}/s/demo/")
    trial = current_trial(page)
    play_to_the_end(page)
    page.locator("button.answer").first.tap()
    received: list[str] = []

    def note(sender, environ, **kwargs):
        received.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}")

    request_started.connect(note)
    try:
        with page.expect_navigation():
            page.locator("#confirm").tap()
        page.wait_for_selector("#play")
    finally:
        request_started.disconnect(note)
    assert page.locator("input[name=token]").input_value() != trial.token
    assert [r for r in received if r.startswith(("GET /s/", "POST /s/"))] == ["POST /s/demo/answer", "GET /s/demo/trial"]
    assert list(Response.objects.values_list("assignment_id", flat=True)) == [trial.pk]


@pytest.mark.django_db(transaction=True)
@browser
@needs_chromium
def test_a_page_the_server_answers_instead_of_the_next_trial_is_shown(phone):
    context, page, url = phone
    make_experiment(replay_limit=2)
    to_first_trial(page, f"{url}/s/demo/")
    play_to_the_end(page)
    page.locator("button.answer").first.tap()
    Experiment.objects.update(status="closed")  # closed while the listener was choosing: the server answers 410
    with page.expect_response(ANSWER_URL) as answered:
        page.locator("#confirm").tap()
    assert answered.value.status == 410
    page.locator("#message").wait_for(timeout=5_000)
    assert page.locator("h1").inner_text() == "This study is closed" and page.title() == "This study is closed"
    assert page.locator("#confirm").count() == 0
    assert Response.objects.count() == 0


@pytest.mark.django_db(transaction=True)
@browser
@needs_chromium
def test_a_refused_answer_shows_the_servers_message_and_its_way_on(phone):
    context, page, url = phone
    make_experiment(replay_limit=2)
    to_first_trial(page, f"{url}/s/demo/")
    trial = current_trial(page)
    play_to_the_end(page)
    page.locator("button.answer").nth(1).tap()
    # answered differently meanwhile (another tab of the same listener): the server refuses this one with 409
    Assignment.objects.filter(pk=trial.pk).update(first_played_at=None)
    with page.expect_response(ANSWER_URL) as answered:
        page.locator("#confirm").tap()
    assert answered.value.status == 409
    page.locator("#message").wait_for(timeout=5_000)
    assert page.locator("h1").inner_text() == "Not saved" and "listen to the whole clip" in page.locator("#message").inner_text()
    with page.expect_navigation():
        page.locator("a.button", has_text="Continue").tap()
    page.wait_for_selector("#play")
    assert page.locator("input[name=token]").input_value() == trial.token  # back to the trial, to answer it again


def _token(person: Listener) -> str:
    return re.search(r'name="token" value="([^"]+)"', person.client.get("/s/demo/trial").content.decode()).group(1)


@pytest.mark.django_db
def test_a_resend_of_an_answer_whose_skip_was_lost_is_told_the_same_skip(media):
    """The first post of the answer met a clip that can never be heard (its last play broke off) and was told
    "Recording skipped"; that reply was lost and the listener sends the answer again: the same page, not "Not saved"."""
    make_experiment(replay_limit=1)
    person = Listener("demo")
    person.start()
    token = _token(person)
    assert person.client.get(f"/a/{token}", HTTP_RANGE="bytes=0-999").status_code == 206  # the only play breaks off
    trial = Assignment.objects.select_related("stimulus").get(token=token)
    answer = {"token": token, "answer": trial.stimulus.word}
    first = person.client.post("/s/demo/answer", answer)
    assert first.status_code == 200 and b"Recording skipped" in first.content
    again = person.client.post("/s/demo/answer", answer)
    assert again.status_code == 200 and b"Recording skipped" in again.content
    assert Response.objects.count() == 0
    assert _token(person) != token
