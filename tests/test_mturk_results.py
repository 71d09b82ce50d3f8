"""hearsay.mturk_results: the one reader of MTurk results files (no database needed)."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hearsay.errors import HearsayError
from hearsay.mturk_results import interpret, parse_mturk_time, read_batch_key, read_results

HEADER = '"HITId","AssignmentId","WorkerId","AssignmentStatus","SubmitTime","Input.audio_url","Answer.comment","Answer.heard-word.label"'


@pytest.mark.parametrize("text, expected", [
    ("Sun Nov 22 04:04:22 PST 2026", datetime(2026, 11, 22, 12, 4, 22, tzinfo=UTC)),
    ("Mon Jul 06 04:04:22 PDT 2026", datetime(2026, 7, 6, 11, 4, 22, tzinfo=UTC)),
    ("Sun Nov 22 04:04:22 CET 2026", datetime(2026, 11, 22, 3, 4, 22, tzinfo=UTC)),
    ("Sun Nov 22 04:04:22 JST 2026", datetime(2026, 11, 21, 19, 4, 22, tzinfo=UTC)),
    ("Sun Nov 22 04:04:22 GMT 2026", datetime(2026, 11, 22, 4, 4, 22, tzinfo=UTC)),
    ("2026-11-22T04:04:22-05:00", datetime(2026, 11, 22, 9, 4, 22, tzinfo=UTC)),
])
def test_mturk_times_become_utc(text, expected):
    assert parse_mturk_time(text) == expected


def test_multi_line_cells_keep_real_file_lines_and_an_unknown_zone_names_file_and_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(("\ufeff" + "\r\n".join([
        HEADER,
        '"H1","A1","W1","Approved","Sun Nov 22 04:04:22 PST 2026","https://h/x/a.wav","two\r\nlines","yes"',
        '"H2","A2","W1","Approved","Sun Nov 22 04:04:22 XYZ 2026","https://h/x/b.wav","","no"',
    ]) + "\r\n").encode())
    with pytest.raises(HearsayError, match=r"r\.csv:4: time .* unknown time zone 'XYZ'"):
        read_results(path)


def test_answers_in_every_shape_and_off_list_answers_are_invalid_with_their_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("\n".join([
        "AssignmentId,WorkerId,AssignmentStatus,Input.audio_url,Answer.heard-word.label,Answer.heard-word.yes,"
        "Answer.heard-word.no,Answer.taskAnswers",
        "A1,W1,Submitted,https://h/a.wav,yes,,,",
        "A2,W1,Submitted,https://h/b.wav,,false,true,",
        'A3,W2,Submitted,https://h/a.wav,,,,"[{""heard-word"": {""label"": ""None of these / can\'t tell""}}]"',
        "A4,W2,Submitted,https://h/b.wav,cat,,,",
    ]) + "\n")
    results = read_results(path)
    reading = interpret(results, results.task(), ["yes", "no"], lambda row: row.audio_name)
    assert [(a.row.assignment_id, a.key, a.answer) for a in reading.answers] == [
        ("A1", "a.wav", "yes"), ("A2", "b.wav", "no"), ("A3", "a.wav", "none")]
    assert [(i.row.line, "not a word" in i.reason) for i in reading.invalid] == [(5, True)]


@pytest.mark.parametrize("reader, what", [(read_batch_key, "batch key file"), (read_results, "MTurk results file")])
def test_every_csv_reader_refuses_missing_binary_and_non_utf8_files_in_one_line(tmp_path, reader, what):
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(HearsayError, match=f"^{what} .*nowhere.csv does not exist$"):
        reader(missing)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"audio,stimulus_id\nab\x00c,s1\n")
    with pytest.raises(HearsayError, match=f"^cannot read {what} .*binary.csv: it contains a NUL byte"):
        reader(binary)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("audio,stimulus_id\ncaf\u00e9,s1\n".encode("latin-1"))
    with pytest.raises(HearsayError, match=f"^cannot read {what} .*latin.csv: 'utf-8' codec"):
        reader(latin)
