"""The analysis report as a reader sees it: Chromium at desktop and phone width.

A small but complete experiment (the paper's six cells plus originals, people and two
machine listeners, objective rates) is analysed here, then the page is opened from disk:
the summary with its contrasts and chart sits on the first screen, nothing overflows
sideways, and every image decodes.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from analysis.report import ReportOptions, build_report
from analysis.table import Exclusion

from .report_data import MACHINES, WORDS, small_table

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SIZES = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2},
}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    objective = root / "objective"
    objective.mkdir()
    pd.DataFrame({"method": ["classifier", "classifier", "decoder", "decoder"], "word": ["yes", "ALL", "yes", "ALL"],
                  "n": [10, 40, 10, 40], "failed": [0, 0, 0, 2], "a_picks_target": [1.0, 0.95, 0.9, 0.9],
                  "b_picks_target": [0.2, 0.1, 0.6, 0.5]}).to_csv(objective / "summary.csv", index=False)
    table = small_table(listeners=12, machines=2, machine_names=MACHINES)
    options = ReportOptions(exclusion=Exclusion("gold", include_machines=True), n_boot=200, objective_dir=objective)
    return build_report(table, {"slug": "complete", "task": "identification", "words": WORDS}, root / "out", options,
                        {"test-table": "0" * 64}, progress=False)


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_report_reads_in_chromium(report, chromium, size):
    context = chromium.new_context(**SIZES[size])
    page = context.new_page()
    page.goto((report / "report.html").as_uri())
    height = SIZES[size]["viewport"]["height"]
    width = SIZES[size]["viewport"]["width"]
    summary = page.locator("#s-summary")
    assert page.locator("section").first.get_attribute("id") == "s-summary"
    assert summary.locator("h2").bounding_box()["y"] < height / 2
    if size == "desktop":  # the chart begins on the first screen next to its heading
        assert summary.locator("img").first.bounding_box()["y"] < height
    text = summary.inner_text()
    for group in ["People (12 listeners", *(f"Machine listener {m}" for m in MACHINES)]:
        assert group in text, group
    for contrast in ["decoder vs classifier", "test start vs noise start", "after vs before"]:
        assert contrast in text
    assert "No contrast" not in text and "judged by the independent classifier B" in text
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"page is {overflow}px wider than the {width}px viewport"
    page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
    page.wait_for_function("[...document.images].every(i => i.complete)")
    broken = page.evaluate("[...document.images].filter(i => !(i.naturalWidth > 0)).map(i => i.alt)")
    assert broken == [] and page.evaluate("document.images.length") == len(list((report / "figures").glob("*.png")))
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"with every fold open the page is {overflow}px wider than the viewport"
    if os.environ.get("HEARSAY_REPORT_SHOTS"):  # for a person checking the layout by eye
        page.screenshot(path=str(Path(os.environ["HEARSAY_REPORT_SHOTS"]) / f"report_{size}.png"))
    context.close()


def test_report_page_is_short_with_folds_closed(report, chromium):
    context = chromium.new_context(**SIZES["desktop"])
    page = context.new_page()
    page.goto((report / "report.html").as_uri())
    toc = page.eval_on_selector_all("nav.toc a", "as => as.map(a => a.getAttribute('href'))")
    ids = page.eval_on_selector_all("section", "ss => ss.map(s => '#' + s.id)")
    assert toc == ids and len(ids) >= 6
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height < 9000, f"report is {height}px tall at 1280px"
    context.close()
