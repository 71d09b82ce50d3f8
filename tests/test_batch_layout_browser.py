"""The exported batch layout in Chromium, with a local stand-in for MTurk's crowd-html-elements (no network).

The stand-in does what matters here: crowd-classifier renders its classification target inside its
own shadow root, so the player script must find the audio element there, count plays and unlock the
answer only after the clip played to the end.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from evaluation.models import Experiment
from evaluation.mturk.batch import batch_layout
from evaluation.stimuli import load_manifest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
MANIFEST = Path(__file__).resolve().parent.parent / "fixtures" / "stimuli" / "manifest.csv"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]

CROWD_ELEMENTS_STUB = """<script>
customElements.define("crowd-form", class extends HTMLElement {});
customElements.define("crowd-classifier", class extends HTMLElement {
  connectedCallback() {
    const root = this.attachShadow({mode: "open"});
    const target = this.querySelector("classification-target");
    if (target) root.appendChild(target);
    this.dataset.categories = this.getAttribute("categories");
  }
});
</script>"""


@pytest.mark.django_db
def test_the_player_script_finds_its_audio_inside_crowd_classifier(settings, tmp_path):
    from playwright.sync_api import sync_playwright

    settings.MEDIA_ROOT = tmp_path / "media"
    load_manifest(MANIFEST, "lay", create=True, task="identification")
    layout = batch_layout(Experiment.objects.get(slug="lay"), [])
    assert '<crowd-form answer-format="flatten-objects">' in layout
    assert "None of these / can&#x27;t tell" in layout or "None of these / can't tell" in layout
    # no network: drop MTurk's script, define the elements just before the player script runs
    page_html = re.sub(r'<script src="https://assets\.crowd\.aws/[^"]+"></script>', "", layout)
    page_html = page_html.replace("<script>\n  (function () {", CROWD_ELEMENTS_STUB + "\n<script>\n  (function () {", 1)
    page_html = page_html.replace("${audio_url}", "data:audio/wav;base64,")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.set_content(page_html)
        state = page.evaluate("""() => {
            const classifier = document.querySelector("crowd-classifier");
            const audio = classifier.shadowRoot.querySelector("audio");
            const before = {inDocument: document.getElementById("hs-audio") !== null, found: audio !== null};
            audio.dispatchEvent(new Event("play"));
            audio.dispatchEvent(new Event("ended"));
            return {...before, plays: document.getElementById("hs-play-count").value,
                    ended: document.getElementById("hs-played-to-end").value,
                    note: classifier.shadowRoot.getElementById("hs-note").textContent};
        }""")
        browser.close()
    assert not errors, errors
    assert state == {"inDocument": False, "found": True, "plays": "1", "ended": "true", "note": "You may answer now."}
