"""The admin's pages on a crowd study: a constant number of queries whatever the number of listeners, same numbers.

A running study of thousands of listeners is watched in the admin; a page that runs a query per listener (or per
row) grows with the crowd until it times out behind the proxy. Each page is loaded on a small and on a ten times
larger study and must cost the same queries; the numbers it shows are checked against the database rows.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from html.parser import HTMLParser

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from evaluation.models import Assignment, Experiment, Participant, Response, Stimulus

ADMIN = "/admin/evaluation"
WORDS = ["bat", "pat", "mat"]


def build_study(slug: str, task: str, listeners: int, seed: int = 0) -> Experiment:
    """A study with test, gold, trap and practice clips, human and machine listeners, right and wrong answers.

    Gold and trap clips with and without an expected answer (the word stands in), a listener without answers,
    and in a rating study a gold answer without a rating: every branch of the gold/trap rule is taken.
    """
    rng = random.Random(f"{slug}-{seed}")
    experiment = Experiment.objects.create(slug=slug, title=slug, task=task, words=WORDS, status="live", ratings_per_stimulus=3)
    rating = task == Experiment.Task.RATING
    specs = [(f"t{i}", "test", f"cond-{i % 2}", "") for i in range(6)]
    specs += [("g0", "gold", "gold", "4" if rating else "bat"), ("g1", "gold", "gold", ""), ("g2", "gold", "gold", "pat")]
    specs += [("x0", "trap", "trap", "0" if rating else "none"), ("x1", "trap", "trap", "4" if rating else "mat"),
              ("x2", "trap", "trap", "")]
    specs += [("p0", "practice", "practice", "3" if rating else "bat"), ("p1", "practice", "practice", "")]
    stimuli = Stimulus.objects.bulk_create(
        Stimulus(experiment=experiment, stimulus_id=sid, audio=f"stimuli/{slug}-{sid}.wav", word=WORDS[i % 3], kind=kind,
                 condition=cond, expected_answer=expected, answer_count=rng.randint(0, 5))
        for i, (sid, kind, cond, expected) in enumerate(specs)
    )
    people = Participant.objects.bulk_create(
        Participant(experiment=experiment, worker_id=f"{slug}-w{i}", kind="machine" if i % 7 == 3 else "human",
                    source="machine" if i % 7 == 3 else "web", step="done")
        for i in range(listeners)
    )
    assignments, answers = [], []
    for i, person in enumerate(people):
        heard = [] if i == 1 else rng.sample(stimuli, rng.randint(3, len(stimuli)))
        for position, stimulus in enumerate(heard):
            assignment = Assignment(participant=person, stimulus=stimulus, position=position, answered=True)
            assignments.append(assignment)
            expected = stimulus.expected_answer or stimulus.word
            if rating:
                value = None if stimulus.kind == "gold" and rng.random() < 0.15 else rng.randint(0, 4)
                answers.append(Response(assignment=assignment, participant=person, stimulus=stimulus, rating=value))
            else:
                said = rng.choice([expected, expected, stimulus.word, "none", *WORDS])
                answers.append(Response(assignment=assignment, participant=person, stimulus=stimulus, answer=said))
    Assignment.objects.bulk_create(assignments)
    for response in answers:
        response.assignment_id = response.assignment.pk
    Response.objects.bulk_create(answers)
    return experiment


def build_crowd(listeners: int) -> dict[str, Experiment]:
    """An identification and a rating study of `listeners` each, and one small study per three listeners more
    (the experiment list grows with them too)."""
    studies = {"ident": build_study("ident", "identification", listeners), "rate": build_study("rate", "rating", listeners)}
    for k in range(listeners // 3):
        build_study(f"extra{k}", "identification", 2, seed=k)
    return studies


PAGES = {
    "counts identification": lambda s: f"{ADMIN}/experiment/{s['ident'].pk}/counts/",
    "counts rating": lambda s: f"{ADMIN}/experiment/{s['rate'].pk}/counts/",
    "experiment list": lambda s: f"{ADMIN}/experiment/",
    "participant list": lambda s: f"{ADMIN}/participant/",
    "stimulus list": lambda s: f"{ADMIN}/stimulus/",
    "response list": lambda s: f"{ADMIN}/response/",
    "assignment list": lambda s: f"{ADMIN}/assignment/",
}


def queries_for(admin_client, url: str) -> list[str]:
    """The SQL one load of `url` runs, after a first load (one-time caches such as content types are not counted)."""
    assert admin_client.get(url).status_code == 200, url
    with CaptureQueriesContext(connection) as captured:
        page = admin_client.get(url)
    assert page.status_code == 200, url
    return [q["sql"] for q in captured.captured_queries]


@pytest.mark.django_db
@pytest.mark.parametrize("name", list(PAGES))
def test_an_admin_page_costs_the_same_queries_for_3_and_30_listeners(admin_client, name):
    """A query per listener or per row would time out on a study of thousands behind the proxy's 30 s."""
    small = queries_for(admin_client, PAGES[name](build_crowd(3)))
    Experiment.objects.all().delete()
    large = queries_for(admin_client, PAGES[name](build_crowd(30)))
    assert Response.objects.count() > 10 * 30
    assert len(large) == len(small), f"{name}: {len(small)} queries with 3 listeners, {len(large)} with 30"


# --- the numbers shown ------------------------------------------------------------------------------------


class Tables(HTMLParser):
    """Every <table> of a page as rows of (class, text) cells, by table id."""

    def __init__(self, page: str):
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str]]]] = {}
        self.current, self.cell = None, None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.current = self.tables.setdefault(attrs.get("id") or "", [])
        elif self.current is not None and tag == "tr":
            self.current.append([])
        elif self.current is not None and tag in ("td", "th"):
            self.cell = (attrs.get("class") or "", "")

    def handle_endtag(self, tag):
        if tag == "table":
            self.current = None
        elif self.current is not None and tag in ("td", "th") and self.cell is not None:
            self.current[-1].append((self.cell[0], self.cell[1].strip()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell = (self.cell[0], self.cell[1] + data)


def table(page: str, table_id: str) -> list[dict[str, str]]:
    """The rows of a counts table as {header: text}."""
    header, *rows = Tables(page).tables[table_id]
    return [dict(zip([text for _, text in header], [text for _, text in row])) for row in rows]


def changelist(page: str, *fields: str) -> list[dict[str, str]]:
    """The rows of an admin changelist as {field: text}, read by the cells' field-NAME classes."""
    rows = [dict((re.sub(r"^field-", "", c.split()[0]), t) for c, t in row if c.startswith("field-"))
            for row in Tables(page).tables["result_list"] if row]
    return [{f: r[f] for f in fields} for r in rows if "pk" in r or "slug" in r or "stimulus_id" in r]


def passed(task: str, kind: str, expected_answer: str, word: str, answer: str, rating) -> bool:
    """The gold/trap rule, stated here on its own: the expected answer (the word when none is set) must be given;
    in a rating study a gold clip passes with a rating of 3 or more and a trap with exactly its expected rating."""
    expected = expected_answer if expected_answer else word
    if task == "rating":
        if kind == "gold":
            return rating is not None and rating >= 3
        return rating is not None and str(rating) == expected
    return answer == expected


def expected_counts(experiment: Experiment) -> dict:
    """What the counts page must show, computed from the database's rows one by one."""
    rows = list(Response.objects.filter(stimulus__experiment=experiment).values(
        "participant_id", "participant__kind", "stimulus__stimulus_id", "stimulus__kind", "stimulus__condition",
        "stimulus__expected_answer", "stimulus__word", "answer", "rating"))
    stimuli = {s.stimulus_id: s for s in Stimulus.objects.filter(experiment=experiment)}
    per_stimulus = {sid: {"human answers": "0", "machine answers": "0"} for sid in stimuli}
    by_stimulus = Counter((r["stimulus__stimulus_id"], r["participant__kind"]) for r in rows)
    for (sid, kind), n in by_stimulus.items():
        per_stimulus[sid][f"{kind} answers"] = str(n)
    conditions = {}
    for s in stimuli.values():
        row = conditions.setdefault((s.kind, s.condition), {"stimuli": 0, "human answers": 0, "machine answers": 0})
        row["stimuli"] += 1
        row["human answers"] += by_stimulus[(s.stimulus_id, "human")]
        row["machine answers"] += by_stimulus[(s.stimulus_id, "machine")]
    for (kind, _), row in conditions.items():
        row["target"] = row["stimuli"] * experiment.ratings_per_stimulus if kind == "test" else "-"
    conditions = {key: {k: str(v) for k, v in row.items()} for key, row in conditions.items()}
    answers, checks, correct = Counter(), Counter(), Counter()
    for r in rows:
        answers[r["participant_id"]] += 1
        if r["stimulus__kind"] in ("gold", "trap"):
            checks[r["participant_id"]] += 1
            correct[r["participant_id"]] += passed(experiment.task, r["stimulus__kind"], r["stimulus__expected_answer"],
                                                   r["stimulus__word"], r["answer"], r["rating"])
    listeners = {
        str(pk): {"answers": str(answers[pk]), "gold/trap correct": f"{correct[pk]}/{checks[pk]}",
                  "accuracy": f"{round(100 * correct[pk] / checks[pk])}%" if checks[pk] else "-"}
        for pk in Participant.objects.filter(experiment=experiment).values_list("pk", flat=True)
    }
    return {"stimuli": per_stimulus, "conditions": conditions, "listeners": listeners, "total": len(rows)}


@pytest.mark.django_db
@pytest.mark.parametrize("task", ["identification", "rating"])
def test_the_counts_page_shows_the_numbers_of_the_rows(admin_client, task):
    """Counting in fewer queries must not change a number: per clip, per condition, per listener and gold/trap accuracy."""
    experiment = build_study("varied", task, 40)
    expected = expected_counts(experiment)
    accuracies = {v["accuracy"] for v in expected["listeners"].values()}
    assert len(accuracies) > 5 and "-" in accuracies and "0/0" in {v["gold/trap correct"] for v in expected["listeners"].values()}
    page = admin_client.get(f"{ADMIN}/experiment/{experiment.pk}/counts/").content.decode()
    assert f"({expected['total']} answers)" in page
    shown = {r["stimulus"]: {k: r[k] for k in ("human answers", "machine answers")} for r in table(page, "stimuli")}
    assert shown == expected["stimuli"]
    shown = {(r["kind"], r["condition"]): {k: r[k] for k in ("stimuli", "human answers", "machine answers", "target")}
             for r in table(page, "conditions")}
    assert shown == expected["conditions"]
    rows = table(page, "listeners")
    shown = {r["listener"]: {k: r[k] for k in ("answers", "gold/trap correct", "accuracy")} for r in rows}
    assert len(rows) == 40 and shown == expected["listeners"]
    started = list(Participant.objects.filter(experiment=experiment).order_by("-started_at").values_list("started_at", flat=True))
    assert started == sorted(started, reverse=True)


@pytest.mark.django_db
def test_the_lists_show_the_numbers_of_the_rows(admin_client):
    """The experiment list's stimuli/answers/listeners and the participant list's answers, against the rows."""
    build_crowd(12)
    page = admin_client.get(f"{ADMIN}/experiment/").content.decode()
    shown = {r["slug"]: r for r in changelist(page, "slug", "stimulus_count", "answer_total", "participant_count")}
    expected = {
        e.slug: {"slug": e.slug, "stimulus_count": str(Stimulus.objects.filter(experiment=e).count()),
                 "answer_total": str(Response.objects.filter(stimulus__experiment=e).count()),
                 "participant_count": str(Participant.objects.filter(experiment=e).count())}
        for e in Experiment.objects.all()
    }
    assert len(shown) == 6 and shown == expected
    answers = Counter(Response.objects.values_list("participant_id", flat=True))
    page = admin_client.get(f"{ADMIN}/participant/").content.decode()  # every participant fits on one page
    shown = {r["pk"]: r["answers"] for r in changelist(page, "pk", "answers")}
    assert shown == {str(pk): str(answers[pk]) for pk in Participant.objects.values_list("pk", flat=True)}
    page = admin_client.get(f"{ADMIN}/stimulus/?experiment__id__exact={Experiment.objects.get(slug='ident').pk}").content.decode()
    shown = {r["stimulus_id"]: r["answer_count"] for r in changelist(page, "stimulus_id", "answer_count")}
    assert shown == {s.stimulus_id: str(s.answer_count) for s in Stimulus.objects.filter(experiment__slug="ident")}
    page = admin_client.get(f"{ADMIN}/response/").content.decode()
    shown = {r["pk"]: (r["participant"], r["stimulus"]) for r in changelist(page, "pk", "participant", "stimulus")}
    names = {str(r.pk): (str(r.participant), str(r.stimulus)) for r in Response.objects.select_related("participant__experiment", "stimulus__experiment")}
    assert len(shown) == 100 and shown == {pk: names[pk] for pk in shown}
