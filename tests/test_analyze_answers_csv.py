"""A study analysed away from its database: `analyze --answers` reads the long answer table the admin downloads.

Before, the downloaded table could not be analysed by Hearsay at all (analyze read only the database or MTurk
results files), although it is the one contract into the analysis.
"""
from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from analysis.table import normalize, read_answers
from evaluation.export import experiment_info, long_table, long_table_csv
from evaluation.models import Experiment, Participant
from hearsay.errors import HearsayError
from tests.helpers.survey import FIXTURE, Listener, make_experiment


def answered(slug: str = "demo", task: str = "identification") -> None:
    make_experiment(slug, task=task, trials_per_listener=3)
    for query in ({}, {"workerId": "AW1", "assignmentId": "A1", "turkSubmitTo": "https://www.mturk.com"}):
        listener = Listener(slug, **query)
        listener.start()
        first = listener.current()
        listener.answer(first, **({"answer": "none"} if task == "identification" else {"rating": 0}))
        listener.finish()


def saved(tmp_path, slug: str, excel: str = ""):
    data = long_table_csv(slug)
    if excel == "csv":  # what a spreadsheet writes back: a BOM and CRLF line ends
        data = b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n")
    elif excel == "unicode text":  # UTF-16 with tabs
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        data = frame.to_csv(index=False, sep="\t", lineterminator="\r\n").encode("utf-16")
    path = tmp_path / f"{slug}-responses.csv"
    path.write_bytes(data)
    return path


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    order = ["listener", "stimulus"]
    a = a.sort_values(order).reset_index(drop=True).drop(columns="answered_at")
    b = b.sort_values(order).reset_index(drop=True).drop(columns="answered_at")
    pd.testing.assert_frame_equal(a, b, check_dtype=False)


@pytest.mark.django_db
@pytest.mark.parametrize("excel", ["", "csv", "unicode text"])
def test_the_admins_download_reads_back_as_the_databases_table(media, tmp_path, excel):
    answered()
    Participant.objects.filter(worker_id="AW1").update(worker_id='=HYPERLINK("http://x.example","x")')
    table, info = read_answers(saved(tmp_path, "demo", excel))
    same_rows(table, normalize(long_table("demo")))
    assert (table["answer"] == "none").sum() >= 2  # the 'none' answers stay answers, never missing values
    assert '=HYPERLINK("http://x.example","x")' in set(table["listener"])  # the export's quote taken off again
    expected = experiment_info("demo")
    assert info["task"] == expected["task"] and set(table["word"]) - {"none"} <= set(info["words"]) <= set(expected["words"])
    _, with_manifest = read_answers(saved(tmp_path, "demo", excel), FIXTURE)  # the study's options, never-heard ones too
    assert with_manifest["words"] == expected["words"]


@pytest.mark.django_db
def test_a_rating_table_reads_back_as_a_rating_experiment(media, tmp_path):
    answered("rate", task="rating")
    table, info = read_answers(saved(tmp_path, "rate"))
    same_rows(table, normalize(long_table("rate")))
    assert info["task"] == "rating" and table["rating"].between(0, 4).all()


@pytest.mark.django_db
def test_analyze_answers_writes_the_report_and_names_its_input(media, tmp_path):
    answered()
    path = saved(tmp_path, "demo")
    Experiment.objects.all().delete()  # away from the database the study was run on
    out = tmp_path / "report"
    call_command("analyze", answers=str(path), out=str(out), verbosity=0)
    assert (out / "report.html").is_file()
    assert str(path) in json.loads((out / "run.json").read_text())["inputs"]


def test_tables_that_are_no_answer_table_are_refused_in_one_line(tmp_path):
    cases = {
        "no_columns.csv": ("listener,stimulus\nA,s1\n", "lacks column"),
        "binary.csv": ("listener\x00,x\n", "NUL byte"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(HearsayError, match=message):
            read_answers(tmp_path / name)
    with pytest.raises(HearsayError, match="does not exist"):
        read_answers(tmp_path / "missing.csv")


@pytest.mark.django_db
def test_a_number_column_holding_text_is_refused_not_read_as_missing(media, tmp_path):
    answered()
    frame = pd.read_csv(io.BytesIO(long_table_csv("demo")), dtype=str, keep_default_na=False)
    frame.loc[3, "play_count"] = "twice"
    path = tmp_path / "edited.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(HearsayError, match="answer 4: play_count 'twice' is not a number"):
        read_answers(path)


def test_answers_cannot_be_mixed_with_another_source(tmp_path):
    (tmp_path / "a.csv").write_text("x\n")
    with pytest.raises(CommandError, match="not allowed with"):
        call_command("analyze", answers=str(tmp_path / "a.csv"), experiment="demo", out=str(tmp_path / "o"), verbosity=0)


@pytest.mark.django_db
def test_a_manifest_of_another_study_is_refused(media, tmp_path):
    answered()
    other = tmp_path / "other.csv"
    other.write_text(FIXTURE.read_text().replace(",down,", ",left,"))
    with pytest.raises(HearsayError, match="word 'down' is not in the manifest"):
        read_answers(saved(tmp_path, "demo"), other)


@pytest.mark.django_db
def test_a_table_saved_by_a_spreadsheet_in_another_language_keeps_its_flags(media, tmp_path):
    """German Excel writes True as WAHR: every answer of a table saved there read as wrong and never heard to the end."""
    answered()
    frame = pd.read_csv(io.BytesIO(long_table_csv("demo")), dtype=str, keep_default_na=False)
    german = frame.replace({"True": "WAHR", "False": "FALSCH"})
    assert (german["listened_to_end"] == "WAHR").any()
    path = tmp_path / "german.csv"
    german.to_csv(path, index=False, sep=";")
    table, _ = read_answers(path)
    same_rows(table, normalize(long_table("demo")))
