"""Steps through the listener's page in Chromium (a Playwright page) that several browser tests take."""
from __future__ import annotations

from evaluation.models import Assignment


def to_first_trial(page, url: str) -> None:
    page.goto(url)
    page.locator("#agree").check()
    page.locator("#consent-next").click()
    page.locator("#instructions-next").click()
    page.wait_for_selector("#play:enabled")


def play_to_the_end(page) -> None:
    page.locator("#play").tap()
    page.locator("button.answer:enabled").first.wait_for(timeout=15_000)


def current_trial(page) -> Assignment:
    """The trial the page shows, read from the page itself."""
    return Assignment.objects.get(token=page.locator("input[name=token]").input_value())
