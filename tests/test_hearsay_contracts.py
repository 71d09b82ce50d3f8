"""The hearsay package: importable without Django or torch, and the one home of each contract."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hearsay.answers import RATING_HINTS, RATING_LABELS, RATING_SCALE, parse_rating

ROOT = Path(__file__).resolve().parent.parent


def test_hearsay_imports_neither_django_nor_torch():
    code = (
        "import sys, hearsay.answers, hearsay.manifest, hearsay.mturk_results, hearsay.runs, hearsay.provenance, "
        "hearsay.csvsafe, hearsay.errors, hearsay.atomic; "
        "print(sorted(m for m in ('django', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_rating_scale_is_the_papers():
    assert [(r.value, r.text) for r in RATING_SCALE] == [
        (4, "Excellent (completely clear speech)"), (3, "Good (mostly clear)"), (2, "Fair (equally clear and unclear)"),
        (1, "Poor (mostly unclear)"), (0, "Bad (completely unclear)"),
    ]
    assert RATING_LABELS == ("Bad", "Poor", "Fair", "Good", "Excellent") and RATING_HINTS["Fair"] == "equally clear and unclear"
    for r in RATING_SCALE:
        assert parse_rating(r.text) == parse_rating(r.label) == parse_rating(str(r.value)) == r.value


def test_each_contract_is_declared_in_one_module():
    """No module outside hearsay/ spells the rating hints, the none label or the manifest's vocabularies."""
    for needle in ("completely clear speech", "None of these / can't tell", '"noise", "test", "none"',
                   '"original", "before", "after"', '"listener", "listener_kind"', '"stimulus_id", "file", "word"'):
        found = subprocess.run(["git", "grep", "-l", "-F", needle, "--", "*.py", "*.html", "*.js"], cwd=ROOT,
                               capture_output=True, text=True).stdout.split()
        assert [f for f in found if not f.startswith(("hearsay/", "tests/"))] == [], needle
