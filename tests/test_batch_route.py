"""The batch route end to end: export a batch, answer it as the requester website's results file, and
get the same answer table from `import-results` + the database as from `analyze --mturk-csv`."""
from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pandas as pd
import pytest
from django.core.management import call_command
from django.test import Client

from analysis.table import normalize, read_mturk
from evaluation.export import experiment_info, long_table
from evaluation.models import Experiment, MturkAssignment, Response
from hearsay.answers import NONE_LABEL
from tests.helpers.survey import exported_batch

MANIFEST = Path(__file__).resolve().parent.parent / "fixtures" / "stimuli" / "manifest.csv"
SLUG = "field"
BASE = "https://survey.example.org"


@pytest.fixture
def exported(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    out = tmp_path / "batch"
    exported_batch(SLUG, out, BASE)
    urls = [r["audio_url"] for r in csv.DictReader((out / "batch.csv").open())]
    return out, urls


def requester_site_csv(path: Path, urls: list[str], words: list[str], crowd: int = 0) -> None:
    """Results as the requester website writes them after a spreadsheet round trip: BOM, CRLF, every field quoted,
    a comment spanning lines, and the answer in each of MTurk's shapes."""
    radio = [f"Answer.heard-word.{w}" for w in [*words, NONE_LABEL]]
    header = ["HITId", "HITTypeId", "AssignmentId", "WorkerId", "AssignmentStatus", "AcceptTime", "SubmitTime",
              "WorkTimeInSeconds", "Input.audio_url", "Answer.heard-word.label", *radio, "Answer.play-count",
              "Answer.played-to-end", "Answer.comment", "Answer.taskAnswers"]
    rows = []

    def add(worker, n, url, status, shape, answer, zone="PST"):
        cells = dict.fromkeys(header, "")
        cells.update({"HITId": f"HIT{n:03d}", "HITTypeId": "T1", "AssignmentId": f"ASG{worker}{n:03d}", "WorkerId": worker,
                      "AssignmentStatus": status, "AcceptTime": f"Mon Jan 05 03:00:00 {zone} 2026",
                      "SubmitTime": f"Mon Jan 05 03:01:{n % 60:02d} {zone} 2026", "WorkTimeInSeconds": "61",
                      "Input.audio_url": url, "Answer.comment": "loud\nand clear" if n % 3 == 0 else ""})
        if shape == "label":
            cells.update({"Answer.heard-word.label": answer, "Answer.play-count": "2", "Answer.played-to-end": "true"})
        elif shape == "radio":
            cells.update({c: "true" if c == f"Answer.heard-word.{answer}" else "false" for c in radio})
            cells.update({"Answer.play-count": "1", "Answer.played-to-end": "true"})
        else:  # a crowd-form without flatten-objects: one JSON column
            cells["Answer.taskAnswers"] = json.dumps([{"heard-word": {"label": answer}, "play-count": "3", "played-to-end": "false"}])
        rows.append(cells)

    shapes = ["label", "radio", "json"]
    for n, url in enumerate(urls):
        if n < len(urls) - 1:
            add("WAAA", n, url, "Approved", shapes[n % 3], words[n % len(words)] if n % 4 else NONE_LABEL)
        else:  # rejected: stored, flagged, never analysed; WAAA's other answers stay
            add("WAAA", n, url, "Rejected", "label", words[0])
        add("WBBB", 100 + n, url, "Submitted", shapes[(n + 1) % 3], words[(n + 1) % len(words)], zone="CET")
    add("WBBB", 500, urls[0], "Approved", "label", words[0])  # the same worker on the same clip again: not counted twice
    rng = random.Random(0)
    for k in range(crowd):  # more listeners, answering at random
        for n, url in enumerate(urls):
            add(f"WC{k:02d}", 1000 + 100 * k + n, url, "Approved", shapes[(n + k) % 3], rng.choice([*words, NONE_LABEL]))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8"))


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(["listener", "stimulus"]).reset_index(drop=True)


@pytest.mark.django_db
def test_both_routes_give_identical_answer_tables(exported, tmp_path):
    out, urls = exported
    experiment = Experiment.objects.get(slug=SLUG)
    results = tmp_path / "Batch_1_batch_results.csv"
    requester_site_csv(results, urls, list(experiment.words))

    call_command("mturk", "import-results", str(results), "--experiment", SLUG, stdout=io.StringIO())
    database = _sorted(normalize(long_table(SLUG)))
    batch, info = read_mturk(results, MANIFEST, out / "batch_key.csv")
    batch = _sorted(batch)

    pd.testing.assert_frame_equal(database, batch, check_dtype=False)
    assert len(batch) == 2 * len(urls) - 1  # the rejected assignment is left out, WAAA's other answers stay
    assert (batch["answer"] == "none").sum() == len([n for n in range(len(urls) - 1) if n % 4 == 0]) > 0
    assert len(info["invalid_rows"]) == 1 and "answered this clip before" in info["invalid_rows"][0]
    assert batch["answered_at"].str.endswith("+00:00").all()
    assert info["rejected_answers"] == experiment_info(SLUG)["rejected_answers"] == 1
    rejected = MturkAssignment.objects.get(status="Rejected")
    assert rejected.response is not None and rejected.via_batch and not rejected.sandbox
    assert Response.objects.filter(participant__worker_id="WAAA").count() == len(urls)

    call_command("mturk", "import-results", str(results), "--experiment", SLUG, stdout=io.StringIO())
    assert MturkAssignment.objects.count() == 2 * len(urls) + 1 and Response.objects.count() == 2 * len(urls)


@pytest.mark.django_db
def test_duplicate_assignment_ids_are_refused_by_both_routes(exported, tmp_path):
    out, urls = exported
    results = tmp_path / "r.csv"
    requester_site_csv(results, urls, list(Experiment.objects.get(slug=SLUG).words))
    lines = results.read_bytes().split(b"\r\n")
    results.write_bytes(b"\r\n".join([*lines[:-1], lines[1], b""]))
    from django.core.management.base import CommandError

    from hearsay.errors import HearsayError

    with pytest.raises(CommandError, match="already appeared on line 2"):
        call_command("mturk", "import-results", str(results), "--experiment", SLUG, stdout=io.StringIO())
    with pytest.raises(HearsayError, match="already appeared on line 2"):
        read_mturk(results, MANIFEST, out / "batch_key.csv")


@pytest.mark.django_db
def test_the_exact_batch_url_serves_the_clip_with_ranges(exported):
    out, urls = exported
    client = Client()
    path = urls[0][len(BASE):]
    whole = client.get(path)
    assert whole.status_code == 200 and whole["Content-Type"] == "audio/wav"
    body = b"".join(whole.streaming_content) if whole.streaming else whole.content
    assert body[:4] == b"RIFF"
    part = client.get(path, HTTP_RANGE="bytes=4-11")
    assert part.status_code == 206 and part.content == body[4:12] and part["Content-Range"] == f"bytes 4-11/{len(body)}"
    assert client.get(path[:-8] + "0000.wav").status_code == 404
    assert client.post(path).status_code == 405
    key = dict(csv.reader((out / "batch_key.csv").open()))
    assert key[urls[0].rsplit("/", 1)[1]] in set(Experiment.objects.get(slug=SLUG).stimuli.values_list("stimulus_id", flat=True))


@pytest.mark.slow
@pytest.mark.django_db
def test_both_routes_give_identical_report_tables(exported, tmp_path):
    out, urls = exported
    results = tmp_path / "Batch_1_batch_results.csv"
    requester_site_csv(results, urls, list(Experiment.objects.get(slug=SLUG).words), crowd=12)
    call_command("mturk", "import-results", str(results), "--experiment", SLUG, stdout=io.StringIO())
    common = {"exclude": "none", "verbosity": 0, "stdout": io.StringIO()}
    call_command("analyze", experiment=SLUG, out=str(tmp_path / "db"), **common)
    notes = io.StringIO()
    call_command("analyze", mturk_csv=str(results), manifest=str(MANIFEST), batch_key=str(out / "batch_key.csv"),
                 out=str(tmp_path / "csv"), exclude="none", verbosity=0, stdout=notes)
    assert "1 answer(s) of rejected assignments left out" in notes.getvalue()
    assert "answered this clip before" in notes.getvalue()
    tables = sorted(p.name for p in (tmp_path / "db" / "tables").glob("*.csv"))
    assert tables and tables == sorted(p.name for p in (tmp_path / "csv" / "tables").glob("*.csv"))
    differ = [t for t in tables if (tmp_path / "db" / "tables" / t).read_bytes() != (tmp_path / "csv" / "tables" / t).read_bytes()]
    assert differ == []


@pytest.mark.django_db
def test_analyze_resolves_batch_audio_names_through_the_database_without_the_key_file(exported, tmp_path):
    out, urls = exported
    results = tmp_path / "Batch_1_batch_results.csv"
    requester_site_csv(results, urls, list(Experiment.objects.get(slug=SLUG).words))
    from evaluation.mturk.batch import batch_key_from_database

    with_key, _ = read_mturk(results, MANIFEST, out / "batch_key.csv")
    via_db, _ = read_mturk(results, MANIFEST, key_provider=batch_key_from_database)
    pd.testing.assert_frame_equal(_sorted(with_key), _sorted(via_db))
    from hearsay.errors import HearsayError

    with pytest.raises(HearsayError, match="refer to audio not in the manifest.*batch key file"):
        read_mturk(results, MANIFEST)
