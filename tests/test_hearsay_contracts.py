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
                   '"original", "before", "after"', '"listener", "listener_kind", "listener_source"', '"stimulus_id", "file", "word"'):
        found = subprocess.run(["git", "grep", "-l", "-F", needle, "--", "*.py", "*.html", "*.js"], cwd=ROOT,
                               capture_output=True, text=True).stdout.split()
        assert [f for f in found if not f.startswith(("hearsay/", "tests/"))] == [], needle


def test_manifest_round_trip_keeps_methods_open_and_errors_name_file_and_line(tmp_path):
    import pytest

    from hearsay.errors import HearsayError
    from hearsay.manifest import MANIFEST_COLUMNS, read_manifest, write_manifest

    rows = [
        {"stimulus_id": "a1", "file": "wav/a1.wav", "word": "yes", "method": "gradcam", "init": "noise", "stage": "after",
         "pair_id": "", "prior": "gan-v2"},
        {"stimulus_id": "a2", "file": "wav/a2.wav", "word": "no", "method": "natural", "init": "none", "stage": "original",
         "pair_id": "p", "status": "line one\nline two"},
    ]
    path = tmp_path / "manifest.csv"
    write_manifest(path, rows)
    header = path.read_text().splitlines()[0].split(",")
    assert header == [*MANIFEST_COLUMNS, "prior"]
    manifest = read_manifest(path)
    first, second = manifest.rows
    assert (first.method, first.condition, first.kind, first.provenance["prior"]) == ("gradcam", "gradcam-noise", "test", "gan-v2")
    assert (second.condition, second.kind, second.line) == ("original", "gold", 3)
    # a BOM and CRLF from a spreadsheet are fine; a bad value names the file and its real line (past a 2-line cell)
    text = path.read_text().replace("\n", "\r\n").replace("line one\r\nline two", "line one\nline two")
    text += "a3,wav/a3.wav,up,decoder,random,after" + "," * 16 + "\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    with pytest.raises(HearsayError, match=r"manifest\.csv:5: init 'random' is not one of noise, test, none"):
        read_manifest(path)


def test_run_folder_refuses_other_settings_and_journal_drops_a_torn_line(tmp_path):
    import pytest

    from hearsay.errors import HearsayError
    from hearsay.runs import RunFolder

    folder = RunFolder(tmp_path / "run", {"seed": 1, "words": ["yes"]}, what="test run")
    assert folder.open() is False
    folder.write_record({"complete": False})
    journal = folder.journal("journal.jsonl")
    journal.append("u1", {"rows": [1]})
    with open(journal.path, "a") as fh:
        fh.write('{"unit": "u2", "rows": [')  # an interruption mid-line
    assert journal.read() == {"u1": {"unit": "u1", "rows": [1]}}
    assert journal.path.read_text().count("\n") == 1
    assert RunFolder(tmp_path / "run", {"seed": 1, "words": ["yes"]}, what="test run").open() is True
    with pytest.raises(HearsayError, match=r"other settings \(differs in: seed\); choose another output folder"):
        RunFolder(tmp_path / "run", {"seed": 2, "words": ["yes"]}, what="test run").open()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(HearsayError, match="not empty and is not a test run"):
        RunFolder(tmp_path / "other", {"seed": 1}, what="test run").open()


def test_a_run_folder_holding_another_commands_output_says_so(tmp_path):
    """An explain run pointed at a stimulus set's folder said 'holds a explain run made with other settings'."""
    import pytest

    from hearsay.errors import HearsayError
    from hearsay.runs import RunFolder

    RunFolder(tmp_path / "set", {"seed": 1}, what="stimulus set").open()
    RunFolder(tmp_path / "set", {"seed": 1}, what="stimulus set").write_record({})
    with pytest.raises(HearsayError, match=r"set holds another command's output, not an explain run; choose another"):
        RunFolder(tmp_path / "set", {"command": "explain", "seed": 1}, what="explain run").open()
    RunFolder(tmp_path / "masks", {"command": "importance_masks"}, what="importance_masks run").open()
    RunFolder(tmp_path / "masks", {"command": "importance_masks"}, what="importance_masks run").write_record({})
    with pytest.raises(HearsayError, match=r"masks holds the output of importance_masks, not an explain run"):
        RunFolder(tmp_path / "masks", {"command": "explain"}, what="explain run").open()
