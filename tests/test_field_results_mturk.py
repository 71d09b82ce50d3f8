"""MTurk batch results as the requester website really gives them, and as spreadsheets give them back.

Every test here failed before its fix: a results file with the requester website's full column set (Title,
Reward, the approval rates, Approve and Reject...) re-saved by a spreadsheet, several downloads of one study,
and the requester's own Reject column. Both routes are checked where both read the file: `analyze --mturk-csv`
(analysis.table.read_mturk) and `mturk import-results` (the database).
"""
from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pandas as pd
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from analysis.table import read_mturk
from evaluation.export import long_table
from evaluation.models import MturkAssignment, Response
from tests.helpers.survey import FIXTURE as MANIFEST, exported_batch
from hearsay.answers import NONE_LABEL
from hearsay.errors import HearsayError

SLUG = "field"

# The columns of a requester website download, in its order (Input.* and Answer.* where the layout puts them).
REAL_COLUMNS = [
    "HITId", "HITTypeId", "Title", "Description", "Keywords", "Reward", "CreationTime", "MaxAssignments",
    "RequesterAnnotation", "AssignmentDurationInSeconds", "AutoApprovalDelayInSeconds", "Expiration",
    "NumberOfSimilarHITs", "LifetimeInSeconds", "AssignmentId", "WorkerId", "AssignmentStatus", "AcceptTime",
    "SubmitTime", "AutoApprovalTime", "ApprovalTime", "RejectionTime", "RequesterFeedback", "WorkTimeInSeconds",
    "LifetimeApprovalRate", "Last30DaysApprovalRate", "Last7DaysApprovalRate", "Input.audio_url",
    "Answer.heard-word.label", "Answer.play-count", "Answer.played-to-end", "Answer.comment", "Approve", "Reject",
]


def manifest_clips() -> list[tuple[str, str, str]]:
    with MANIFEST.open(newline="", encoding="utf-8") as handle:
        return [(r["stimulus_id"], Path(r["file"]).name, r["word"]) for r in csv.DictReader(handle)]


def real_rows(workers: int = 3, prefix: str = "A", seed: int = 0, status=lambda w, n: "Submitted",
              urls: list[str] | None = None) -> list[dict[str, str]]:
    """One assignment per worker and clip, every real column filled as the requester website fills it."""
    rng = random.Random(seed)
    clips = manifest_clips()
    urls = urls or [f"https://files.example.org/x/{name}" for _, name, _ in clips]
    words = sorted({w for _, _, w in clips})
    out = []
    for w in range(workers):
        for n, ((_, _, word), url) in enumerate(zip(clips, urls)):
            state = status(w, n)
            answer = word if rng.random() < 0.7 else rng.choice([*words, NONE_LABEL])
            out.append({
                "HITId": f"3HIT{n:026d}", "HITTypeId": "3TYPE00000000000000000000000000", "Title": "Which word do you hear?",
                "Description": "Listen to a short clip and pick the word, \"if any\"", "Keywords": "audio, speech, words",
                "Reward": "$0.05", "CreationTime": "Sun Nov 22 03:00:00 PST 2026", "MaxAssignments": "9",
                "RequesterAnnotation": "BatchId:5123456;OriginalHitTemplateId:928390;", "AssignmentDurationInSeconds": "600",
                "AutoApprovalDelayInSeconds": "259200", "Expiration": "Sun Nov 29 03:00:00 PST 2026",
                "NumberOfSimilarHITs": "", "LifetimeInSeconds": "", "AssignmentId": f"3{prefix}{w:03d}{n:026d}",
                "WorkerId": f"A{w:013d}", "AssignmentStatus": state, "AcceptTime": "Sun Nov 22 04:03:22 PST 2026",
                "SubmitTime": "Sun Nov 22 04:04:22 PST 2026", "AutoApprovalTime": "Wed Nov 25 04:04:22 PST 2026",
                "ApprovalTime": "Sun Nov 22 05:04:22 PST 2026" if state == "Approved" else "",
                "RejectionTime": "Sun Nov 22 05:04:22 PST 2026" if state == "Rejected" else "",
                "RequesterFeedback": "", "WorkTimeInSeconds": "60", "LifetimeApprovalRate": "100% (12/12)",
                "Last30DaysApprovalRate": "100% (12/12)", "Last7DaysApprovalRate": "100% (12/12)",
                "Input.audio_url": url, "Answer.heard-word.label": answer, "Answer.play-count": "1",
                "Answer.played-to-end": "true", "Answer.comment": "", "Approve": "", "Reject": "",
            })
    return out


def write(path: Path, rows: list[dict[str, str]], encoding: str = "utf-8", delimiter: str = ",",
          quoting: int = csv.QUOTE_ALL, columns: list[str] = REAL_COLUMNS) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, quoting=quoting, lineterminator="\r\n", delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def by_assignment(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(["listener", "stimulus"]).reset_index(drop=True)


# ------------------------------------------------------------------------------ spreadsheet round trips


def test_excels_unicode_text_utf16_tab_separated_reads_like_the_download(tmp_path):
    """Excel's "Unicode text" (UTF-16 with a BOM, tab-separated) was refused as "'utf-8' codec can't decode"."""
    rows = real_rows()
    rows[0]["Answer.comment"] = "très bien, “clear”\nsecond line"
    download = write(tmp_path / "Batch_1_batch_results.csv", rows)
    unicode_text = write(tmp_path / "Batch_1_batch_results.txt", rows, encoding="utf-16", delimiter="\t",
                         quoting=csv.QUOTE_MINIMAL)
    assert unicode_text.read_bytes()[:2] == b"\xff\xfe"
    expected, _ = read_mturk(download, MANIFEST)
    table, info = read_mturk(unicode_text, MANIFEST)
    pd.testing.assert_frame_equal(by_assignment(table), by_assignment(expected))
    assert len(table) == len(rows) and info["invalid_rows"] == []


def test_a_semicolon_separated_spreadsheet_save_reads_like_the_download(tmp_path):
    """Spreadsheets where the decimal mark is a comma (German, French, ... locales) save "CSV" with semicolons,
    quoting only where needed and ending lines in CR LF: refused as 'not an MTurk results file'."""
    rows = real_rows()
    rows[0]["Description"] = "Listen; then pick"
    expected, _ = read_mturk(write(tmp_path / "download.csv", rows), MANIFEST)
    table, info = read_mturk(write(tmp_path / "semicolons.csv", rows, delimiter=";", quoting=csv.QUOTE_MINIMAL), MANIFEST)
    pd.testing.assert_frame_equal(table, expected)


def test_trailing_empty_columns_of_a_spreadsheet_are_ignored_but_never_data_under_no_name(tmp_path):
    """A sheet whose used range ran past the data ends every line in ',,': refused as 'a column name appears twice'."""
    download = write(tmp_path / "download.csv", real_rows())
    expected, _ = read_mturk(download, MANIFEST)
    resaved = tmp_path / "resaved.csv"
    resaved.write_bytes(download.read_bytes().replace(b"\r\n", b",,\r\n"))
    table, info = read_mturk(resaved, MANIFEST)
    pd.testing.assert_frame_equal(table, expected)
    lines = resaved.read_bytes().split(b"\r\n")
    lines[3] = lines[3] + b"oops"  # something typed in the unnamed column: not silently dropped
    resaved.write_bytes(b"\r\n".join(lines))
    with pytest.raises(HearsayError, match=r"resaved\.csv:4: column 36 has no name in the header but holds 'oops'"):
        read_mturk(resaved, MANIFEST)


def test_the_batch_key_back_from_a_spreadsheet_still_joins(tmp_path):
    """The researcher's batch_key.csv opened and saved in a spreadsheet (trailing empty columns, semicolons) was
    'not a batch key file'."""
    clips = manifest_clips()
    names = {sid: f"{i:032x}.wav" for i, (sid, _, _) in enumerate(clips)}
    rows = real_rows(workers=1, urls=[f"https://survey.example.org/batch-audio/{names[sid]}" for sid, _, _ in clips])
    results = write(tmp_path / "r.csv", rows)
    key_rows = [{"audio_name": names[sid], "stimulus_id": sid} for sid, _, _ in clips]
    plain = write(tmp_path / "batch_key.csv", key_rows, quoting=csv.QUOTE_MINIMAL, columns=["audio_name", "stimulus_id"])
    expected, _ = read_mturk(results, MANIFEST, plain)
    trailing = tmp_path / "trailing.csv"
    trailing.write_bytes(plain.read_bytes().replace(b"\r\n", b",,\r\n"))
    semicolons = write(tmp_path / "semicolons.csv", key_rows, delimiter=";", quoting=csv.QUOTE_MINIMAL,
                       columns=["audio_name", "stimulus_id"])
    for key in (trailing, semicolons):
        table, info = read_mturk(results, MANIFEST, key)
        pd.testing.assert_frame_equal(table, expected)
    assert len(expected) == len(clips)


def test_numbers_a_spreadsheet_or_data_frame_rewrote_are_read_as_the_same_numbers(tmp_path):
    """'2.0' and '1.5E+3' play counts and a '4.0' rating made the rows invalid: answers left out of the analysis."""
    rows = real_rows(workers=1)
    rows[0]["Answer.play-count"], rows[1]["Answer.play-count"], rows[2]["Answer.play-count"] = "2.0", "1.5E+3", " 3 "
    rows[3]["Answer.play-count"] = "2.5"
    rows[4]["Answer.play-count"] = str(2 ** 64)  # no count of plays, and more than the database's integer holds
    table, info = read_mturk(write(tmp_path / "r.csv", rows), MANIFEST)
    assert table["play_count"].tolist()[:3] == [2, 1500, 3]
    assert [line.split(":")[0] for line in info["invalid_rows"]] == [f"line 5 ({rows[3]['AssignmentId']})",
                                                                     f"line 6 ({rows[4]['AssignmentId']})"]


def test_a_rating_a_spreadsheet_rewrote_as_4_0_is_the_rating_4(tmp_path):
    rating = [{k: v for k, v in r.items() if k != "Answer.heard-word.label"} for r in real_rows(workers=1)]
    for r, value in zip(rating, ["4.0", "0.0", "3", "Good"]):
        r["Answer.audio-naturalness.label"] = value
    columns = [c if c != "Answer.heard-word.label" else "Answer.audio-naturalness.label" for c in REAL_COLUMNS]
    table, info = read_mturk(write(tmp_path / "rating.csv", rating[:4], columns=columns), MANIFEST)
    assert table["rating"].tolist() == [4.0, 0.0, 3.0, 3.0] and info["invalid_rows"] == []


def test_answers_with_other_spacing_case_or_a_typographic_apostrophe_read_as_given(tmp_path):
    """Case and surrounding spaces were already ignored; "can’t tell" with a typographic apostrophe in the whole
    label (as a word processor writes it) was an answer off the list."""
    rows = real_rows(workers=1)
    rows[0]["Answer.heard-word.label"] = "  NONE OF THESE / CAN\u2019T TELL "
    rows[1]["Answer.heard-word.label"] = "\u00a0Down\t"
    table, info = read_mturk(write(tmp_path / "r.csv", rows), MANIFEST)
    assert info["invalid_rows"] == [] and table["answer"].tolist()[:2] == ["none", "down"]


def test_a_non_utf8_spreadsheet_save_is_one_line_that_says_what_to_do(tmp_path):
    rows = real_rows(workers=1)
    rows[0]["Answer.comment"] = "très bien"
    path = write(tmp_path / "cp1252.csv", rows, encoding="cp1252")
    out = tmp_path / "report"
    with pytest.raises(CommandError) as caught:
        call_command("analyze", "--mturk-csv", str(path), "--manifest", str(MANIFEST), "--out", str(out),
                     stdout=io.StringIO(), verbosity=0)
    message = str(caught.value)
    assert caught.value.returncode == 1 and "\n" not in message
    assert message.startswith(f"cannot read MTurk results file {path}: 'utf-8' codec can't decode")
    assert message.endswith('save it again as UTF-8 (a spreadsheet\'s "CSV UTF-8")')
    assert not out.exists()


def test_a_bom_written_twice_leaves_the_first_column_readable(tmp_path):
    """A BOM left before the first header name ('\\ufeff"HITId"') emptied every HIT id."""
    rows = real_rows(workers=1)
    path = write(tmp_path / "r.csv", rows)
    path.write_bytes(b"\xef\xbb\xbf\xef\xbb\xbf" + path.read_bytes())
    from hearsay.mturk_results import read_results

    assert {r.hit_id for r in read_results(path).rows} == {r["HITId"] for r in rows}


def test_percent_encoded_audio_names_join_their_clip(tmp_path):
    """An audio URL's percent-encoded name ('yes%2001.wav' for 'yes 01.wav') matched no clip of the manifest."""
    manifest = tmp_path / "manifest.csv"
    text = MANIFEST.read_text(encoding="utf-8")
    manifest.write_text(text.replace("wav/a777842995.wav", "wav/yes 01.wav"), encoding="utf-8")
    rows = real_rows(workers=1, urls=[f"https://files.example.org/x/{name}" if name != "a777842995.wav"
                                      else "https://files.example.org/x/yes%2001.wav" for _, name, _ in manifest_clips()])
    table, info = read_mturk(write(tmp_path / "r.csv", rows), manifest)
    assert info["invalid_rows"] == [] and "8b55b98861" in set(table["stimulus"])


# ------------------------------------------------------------------------------ rejected work


def test_a_reason_under_the_reject_column_rejects_the_submitted_assignment(tmp_path):
    """The requester marks rejections by typing a reason under Reject (then uploads the file); such an answer was
    analysed as if accepted."""
    rows = real_rows(workers=2)
    rows[0]["Reject"] = "Did not listen to the clip"
    rows[1]["Approve"] = "x"
    rows[2]["AssignmentStatus"] = "Approved"  # approved already: a stale Reject cell cannot reject it any more
    rows[2]["Reject"] = "too late"
    table, info = read_mturk(write(tmp_path / "r.csv", rows), MANIFEST)
    assert info["rejected_answers"] == 1 and len(table) == len(rows) - 1
    first = rows[0]
    assert not ((table["listener"] == first["WorkerId"]) & (table["stimulus"] == manifest_clips()[0][0])).any()
    assert (table["listener"] == first["WorkerId"]).sum() == len(manifest_clips()) - 1  # the worker's other answers stay


# ------------------------------------------------------------------------------ several files of one study


def test_analyze_reads_every_results_file_it_is_given(tmp_path):
    """`--mturk-csv a.csv --mturk-csv b.csv` analysed b.csv only, silently; now both, a later download's status
    wins, the same file twice counts once, and a worker's second answer to a clip (a re-run batch) is left out."""
    first = write(tmp_path / "Batch_1_batch_results.csv", real_rows(workers=2))
    rerun = write(tmp_path / "Batch_2_batch_results.csv", real_rows(workers=3, prefix="B", seed=1))
    notes = io.StringIO()
    call_command("analyze", "--mturk-csv", str(first), "--mturk-csv", str(rerun), "--manifest", str(MANIFEST),
                 "--out", str(tmp_path / "both"), "--exclude", "none", stdout=notes, verbosity=0)
    run = json.loads((tmp_path / "both" / "run.json").read_text())
    assert str(first) in json.dumps(run) and str(rerun) in json.dumps(run)
    clips = len(manifest_clips())
    assert notes.getvalue().count("answered this clip before (Batch_1_batch_results.csv line") == 2 * clips
    assert "invalid row left out: Batch_2_batch_results.csv line 2 (3B" in notes.getvalue()
    table, info = read_mturk([first, rerun], MANIFEST)
    assert len(table) == 3 * clips and table["listener"].nunique() == 3
    once, _ = read_mturk(first, MANIFEST)
    twice, _ = read_mturk([first, first], MANIFEST)
    pd.testing.assert_frame_equal(once, twice)
    rating = [{("Answer.audio-naturalness" if k == "Answer.heard-word.label" else k): ("Good" if k == "Answer.heard-word.label" else v)
               for k, v in r.items()} for r in real_rows(workers=1, prefix="C")]
    columns = [c if c != "Answer.heard-word.label" else "Answer.audio-naturalness" for c in REAL_COLUMNS]
    other_study = write(tmp_path / "rating.csv", rating, columns=columns)
    with pytest.raises(HearsayError, match=r"rating\.csv holds rating answers but .*Batch_1_batch_results\.csv holds "
                                           r"identification answers: not the results of one study"):
        read_mturk([first, other_study], MANIFEST)


def test_two_downloads_joined_into_one_file_read_as_the_two_files(tmp_path):
    """`cat Batch_1.csv Batch_2.csv > all.csv` repeats the header (behind the second file's BOM): that line was read
    as an assignment and refused the whole file ('unknown AssignmentStatus')."""
    first = write(tmp_path / "Batch_1_batch_results.csv", real_rows(workers=2))
    second = write(tmp_path / "Batch_2_batch_results.csv", real_rows(workers=3, prefix="B", seed=1))
    joined = tmp_path / "all.csv"
    joined.write_bytes(b"\xef\xbb\xbf" + first.read_bytes() + b"\xef\xbb\xbf" + second.read_bytes())
    table, info = read_mturk(joined, MANIFEST)
    expected, _ = read_mturk([first, second], MANIFEST)
    pd.testing.assert_frame_equal(table, expected)
    assert len(info["invalid_rows"]) == 2 * len(manifest_clips())


def test_a_later_download_decides_the_status_in_either_order_and_conflicts_refuse(tmp_path):
    early = write(tmp_path / "early.csv", real_rows(workers=2))
    late = write(tmp_path / "late.csv", real_rows(workers=2, status=lambda w, n: "Rejected" if (w, n) == (0, 0) else "Approved"))
    for order in ([early, late], [late, early]):
        table, info = read_mturk(order, MANIFEST)
        assert info["rejected_answers"] == 1 and table["pay_ok"].eq(True).all()
    other = real_rows(workers=2)
    other[0]["Answer.heard-word.label"] = "yes" if other[0]["Answer.heard-word.label"] != "yes" else "no"
    with pytest.raises(HearsayError, match=r"other\.csv:2: assignment 3A000\d+ holds another worker, clip or answer than in early\.csv:2"):
        read_mturk([early, write(tmp_path / "other.csv", other)], MANIFEST)


# ------------------------------------------------------------------------------ the database route


@pytest.fixture
def exported(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    urls = exported_batch(SLUG, tmp_path / "batch")
    return tmp_path / "batch", [urls[sid] for sid, _, _ in manifest_clips()]


@pytest.mark.django_db
def test_import_of_an_older_download_never_undoes_a_rejection_and_both_routes_agree(exported, tmp_path):
    """Importing an older download after a newer one set a rejected assignment back to Submitted: its answer came
    back into the analysis."""
    out, urls = exported
    newer_rows = real_rows(workers=2, urls=urls, status=lambda w, n: "Rejected" if (w, n) == (0, 0) else "Approved")
    newer = write(tmp_path / "newer.csv", newer_rows)
    older = write(tmp_path / "older.csv", real_rows(workers=2, urls=urls))
    call_command("mturk", "import-results", str(newer), "--experiment", SLUG, stdout=io.StringIO())
    call_command("mturk", "import-results", str(older), "--experiment", SLUG, stdout=io.StringIO())
    assert MturkAssignment.objects.get(assignment_id=newer_rows[0]["AssignmentId"]).status == "Rejected"
    assert MturkAssignment.objects.filter(status="Approved").count() == len(newer_rows) - 1
    database = long_table(SLUG)
    assert len(database) == len(newer_rows) - 1 and database["pay_ok"].eq(True).all()
    batch, _ = read_mturk([newer, older], MANIFEST, out / "batch_key.csv")
    from analysis.table import normalize

    pd.testing.assert_frame_equal(by_assignment(normalize(database)), by_assignment(batch), check_dtype=False)


@pytest.mark.django_db
def test_import_reads_the_reject_column(exported, tmp_path):
    out, urls = exported
    rows = real_rows(workers=1, urls=urls)
    rows[0]["Reject"] = "Answered before the clip ended"
    call_command("mturk", "import-results", str(write(tmp_path / "r.csv", rows)), "--experiment", SLUG, stdout=io.StringIO())
    assert MturkAssignment.objects.get(assignment_id=rows[0]["AssignmentId"]).status == "Rejected"
    assert len(long_table(SLUG)) == len(rows) - 1


@pytest.mark.django_db
def test_import_of_an_absurd_play_count_is_an_invalid_row_not_a_traceback(exported, tmp_path):
    """A play count of 2**64 (the layout's hidden field, tampered with) stopped import-results with SQLite's
    OverflowError (PostgreSQL: 'integer out of range')."""
    out, urls = exported
    rows = real_rows(workers=1, urls=urls)
    rows[1]["Answer.play-count"] = str(2 ** 64)
    call_command("mturk", "import-results", str(write(tmp_path / "r.csv", rows)), "--experiment", SLUG, stdout=io.StringIO())
    assert "play count" in MturkAssignment.objects.get(assignment_id=rows[1]["AssignmentId"]).invalid_reason
    assert Response.objects.count() == len(rows) - 1


@pytest.mark.django_db
def test_a_hand_edited_worker_id_is_one_listener_on_both_routes(exported, tmp_path):
    """analyze --mturk-csv kept a worker ID as typed ('a0000000000001 ' beside 'A0000000000001'), so one worker became
    two listeners there and one in the database; an ID MTurk never issues was analysed there and refused here."""
    out, urls = exported
    rows = real_rows(workers=2, urls=urls)
    rows[1]["WorkerId"] = "a\u200b" + rows[1]["WorkerId"][1:].lower() + "\u00a0"
    rows[-1]["WorkerId"] = "A-1"  # no MTurk worker ID has a hyphen
    results = write(tmp_path / "r.csv", rows)
    call_command("mturk", "import-results", str(results), "--experiment", SLUG, stdout=io.StringIO())
    batch, info = read_mturk(results, MANIFEST, out / "batch_key.csv")
    assert sorted(batch["listener"].unique()) == ["A0000000000000", "A0000000000001"]
    assert len(batch) == len(rows) - 1 and any("'A-1' is not a Mechanical Turk worker ID" in r for r in info["invalid_rows"])
    from analysis.table import normalize

    pd.testing.assert_frame_equal(by_assignment(normalize(long_table(SLUG))), by_assignment(batch), check_dtype=False)


def test_an_id_longer_than_any_mturk_id_refuses_the_file_in_one_line(tmp_path):
    """An AssignmentId or HITId of 200 characters reached the database's 128-character column (PostgreSQL: a
    DataError traceback)."""
    for column in ("AssignmentId", "HITId", "WorkerId"):
        rows = real_rows(workers=1)
        rows[2][column] = "3" * 200
        with pytest.raises(HearsayError, match=f"{column}.csv:4: the {column} is longer than 128 characters"):
            read_mturk(write(tmp_path / f"{column}.csv", rows), MANIFEST)


def radio_rows(rows: list[dict[str, str]], words: list[str], true: str, false: str) -> tuple[list[dict[str, str]], list[str]]:
    """The same answers as a radio group (one Answer.heard-word.<option> column per option), with the file's words
    for true and false."""
    options = [*words, "none"]
    out = []
    for r in rows:
        chosen = "none" if r["Answer.heard-word.label"] == NONE_LABEL else r["Answer.heard-word.label"]
        radio = {k: v for k, v in r.items() if k != "Answer.heard-word.label"}
        radio.update({f"Answer.heard-word.{o}": true if o == chosen else false for o in options})
        radio["Answer.played-to-end"] = true if r["Answer.played-to-end"] == "true" else false
        out.append(radio)
    columns = [c for c in REAL_COLUMNS if c != "Answer.heard-word.label"] + [f"Answer.heard-word.{o}" for o in options]
    return out, columns


def test_a_spreadsheet_in_another_language_keeps_radio_answers_and_played_to_end(tmp_path):
    """German Excel or LibreOffice writes TRUE as WAHR (and ';' between cells): every radio answer became an invalid
    row and every clip counted as not played to the end."""
    rows = real_rows(workers=2)
    rows[1]["Answer.played-to-end"] = "false"
    words = sorted({w for _, _, w in manifest_clips()})
    download, columns = radio_rows(rows, words, "true", "false")
    expected, _ = read_mturk(write(tmp_path / "download.csv", download, columns=columns), MANIFEST)
    assert expected["listened_to_end"].tolist().count(False) == 1
    for true, false in (("WAHR", "FALSCH"), ("VRAI", "FAUX"), ("Verdadero", "Falso")):
        saved, _ = radio_rows(rows, words, true, false)
        table, info = read_mturk(write(tmp_path / f"{true}.csv", saved, columns=columns, delimiter=";"), MANIFEST)
        assert info["invalid_rows"] == []
        pd.testing.assert_frame_equal(by_assignment(table), by_assignment(expected))
    both, _ = read_mturk([tmp_path / "download.csv", tmp_path / "WAHR.csv"], MANIFEST)  # one batch, two saves of it
    pd.testing.assert_frame_equal(by_assignment(both), by_assignment(expected))
