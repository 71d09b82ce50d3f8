"""The long answer table (the analysis contract) and the admin's CSV download of it."""
from __future__ import annotations

import io
from html.parser import HTMLParser

import pandas as pd
import pytest

from evaluation.export import experiment_info, long_table
from hearsay.answers import ANSWER_COLUMNS
from evaluation.machine import listen
from evaluation.models import Experiment, Participant, Stimulus
from hearsay.errors import HearsayError
from tests.helpers.survey import Listener, make_experiment


@pytest.fixture
def answered(media):
    make_experiment(trials_per_listener=3)
    web = Listener("demo")
    web.start()
    first = web.current()
    web.answer(first, answer="none")  # the practice clip, answered wrongly on purpose
    web.finish()
    turk = Listener("demo", workerId="AW1", assignmentId="A1", turkSubmitTo="https://www.mturk.com")
    turk.start()
    turk.finish()
    Participant.objects.filter(worker_id="AW1").update(pay_ok=True, analyse_ok=False, analyse_reasons=["failed trap", "too fast"])
    return web, turk


@pytest.mark.django_db
def test_long_table_has_the_contract_columns_and_one_row_per_answer(answered):
    web, _ = answered
    table = long_table("demo")
    assert list(table.columns) == list(ANSWER_COLUMNS)
    assert len(table) == 2 * (1 + 3 + 1 + 1)
    assert set(table["listener"]) == {f"p{web.participant.pk}", "AW1"}
    assert set(table["listener_source"]) == {"web", "mturk"} and set(table["listener_kind"]) == {"human"}
    assert set(table["stimulus_kind"]) == {"practice", "test", "gold", "trap"}
    tests = table[table.stimulus_kind == "test"]
    assert set(tests["condition"]) <= {"1-classifier-noise", "4-decoder-test"}
    assert tests["rating"].isna().all() and tests["play_count"].eq(1).all() and tests["listened_to_end"].all()
    practice = table[(table.stimulus_kind == "practice") & (table.listener == f"p{web.participant.pk}")].iloc[0]
    assert practice["answer"] == "none" and not bool(practice["correct"])
    trap = table[table.stimulus_kind == "trap"].iloc[0]
    assert bool(trap["correct"]) is True
    turk_rows = table[table.listener == "AW1"]
    assert turk_rows["analyse_reasons"].eq("failed trap; too fast").all() and turk_rows["pay_ok"].eq(True).all()
    assert pd.Timestamp(table["answered_at"].iloc[0]).tzinfo is not None
    assert table["response_ms"].eq(800.0).all()


@pytest.mark.django_db
def test_rating_answers_carry_ratings_and_no_correctness(media):
    make_experiment("rate", task="rating", trials_per_listener=2)
    person = Listener("rate")
    person.start()
    person.finish()
    table = long_table("rate")
    assert table["answer"].eq("").all()
    assert table["correct"].isna().all()
    assert table["rating"].between(0, 4).all()
    assert experiment_info("rate") == {"slug": "rate", "task": "rating", "words": ["down", "no", "up", "yes"], "ratings_per_stimulus": 3, "rejected_answers": 0}


@pytest.mark.django_db
def test_unknown_and_unanswered_experiments_are_one_line_errors(media):
    with pytest.raises(HearsayError, match="no experiment named 'x'"):
        long_table("x")
    with pytest.raises(HearsayError, match="no experiment named 'x'"):
        experiment_info("x")
    make_experiment()
    with pytest.raises(HearsayError, match="no answers"):
        long_table("demo")
    with pytest.raises(HearsayError, match="no answers"):
        experiment_info("demo")


@pytest.mark.django_db
def test_admin_downloads_the_same_table_as_csv_and_shows_live_counts(answered, admin_client):
    experiment = Experiment.objects.get(slug="demo")
    csv = admin_client.get(f"/admin/evaluation/experiment/{experiment.pk}/responses.csv")
    assert csv.status_code == 200 and csv["Content-Type"].startswith("text/csv")
    body = csv.getvalue()  # the download is streamed
    frame = pd.read_csv(io.BytesIO(body), keep_default_na=False)
    assert list(frame.columns) == list(ANSWER_COLUMNS) and len(frame) == len(long_table("demo"))
    counts = admin_client.get(f"/admin/evaluation/experiment/{experiment.pk}/counts/").content.decode()
    assert "1-classifier-noise" in counts and "AW1" in counts and "accuracy" in counts
    action = admin_client.post("/admin/evaluation/experiment/", {"action": "download_csv", "_selected_action": [experiment.pk]})
    assert action.status_code == 200 and action.getvalue() == body


@pytest.mark.django_db
def test_admin_is_staff_only_and_marks_experiments_live_or_closed(answered, client, admin_client):
    experiment = Experiment.objects.get(slug="demo")
    assert client.get(f"/admin/evaluation/experiment/{experiment.pk}/responses.csv").status_code == 302
    admin_client.post("/admin/evaluation/experiment/", {"action": "make_closed", "_selected_action": [experiment.pk]})
    assert Experiment.objects.get().status == "closed"
    admin_client.post("/admin/evaluation/participant/", {"action": "pay_no", "_selected_action": list(Participant.objects.values_list("pk", flat=True))})
    assert set(Participant.objects.values_list("pay_ok", flat=True)) == {False}
    for model in ("experiment", "stimulus", "participant", "assignment", "response"):
        assert admin_client.get(f"/admin/evaluation/{model}/").status_code == 200, model


@pytest.mark.django_db
def test_live_counts_separate_people_from_machines(answered, admin_client):
    """The N answers per clip are people's; a machine listener's answers are shown beside them, never in them."""
    experiment = Experiment.objects.get(slug="demo")
    listen(experiment, "machine:perfect", lambda wave, rate, stimulus: (stimulus.word, None), progress=False)
    page = admin_client.get(f"/admin/evaluation/experiment/{experiment.pk}/counts/").content.decode()
    table = html_table(page, "conditions").set_index(["kind", "condition"])
    tests = table.loc["test"]
    assert tests["stimuli"].sum() == Stimulus.objects.filter(kind="test").count() == 12
    assert tests["human answers"].sum() == 2 * 3  # two listeners, three test trials each
    assert tests["machine answers"].sum() == 12 and table.loc["gold", "machine answers"].sum() == 4
    assert (tests["target"] == tests["stimuli"] * 3).all()
    clips = html_table(page, "stimuli")
    assert len(clips) == Stimulus.objects.count()
    assert clips.loc[clips["kind"] == "test", "human answers"].sum() == 6


def html_table(page: str, table_id: str) -> pd.DataFrame:
    """The cells of one <table id=...> of a page, numbers as numbers."""
    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.inside, self.rows, self.cell = False, [], None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.inside = dict(attrs).get("id") == table_id
            elif self.inside and tag == "tr":
                self.rows.append([])
            elif self.inside and tag in ("td", "th"):
                self.cell = ""

        def handle_endtag(self, tag):
            if tag == "table":
                self.inside = False
            elif self.inside and tag in ("td", "th"):
                self.rows[-1].append(self.cell.strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    cells = Cells()
    cells.feed(page)
    header, *rows = cells.rows
    return pd.read_csv(io.StringIO(pd.DataFrame(rows, columns=header).to_csv(index=False)), na_values=["-"])


@pytest.mark.django_db
def test_the_responses_csv_neutralizes_formula_cells(answered):
    from evaluation.export import long_table_csv

    Participant.objects.filter(worker_id="AW1").update(worker_id='=HYPERLINK("http://x.example","click")')
    frame = pd.read_csv(io.BytesIO(long_table_csv("demo")), dtype=str, keep_default_na=False)
    listeners = set(frame["listener"])
    assert "'=HYPERLINK(\"http://x.example\",\"click\")" in listeners
    assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for col in frame.columns for v in frame[col])


def test_safe_cell_covers_every_formula_start():
    from hearsay.csvsafe import safe_cell

    for start in ("=", "+", "-", "@", "\t", "\r"):
        assert safe_cell(start + "1+1") == "'" + start + "1+1"
    assert safe_cell("yes") == "yes" and safe_cell(-3) == -3 and safe_cell(None) is None
