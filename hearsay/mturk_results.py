"""The one reader of MTurk results CSVs, shared by `mturk import-results` and `analyze --mturk-csv`.

It reads what the requester website gives back (every field quoted, possibly a UTF-8 BOM and CRLF
after a spreadsheet round trip, cells spanning lines) and the original study's batch format
(`experiment,timestamp,class_label,audio_url,pred_1_class,pred_2_class` inputs with
`Answer.audio-naturalness.label`). Answers arrive in any of the shapes MTurk writes:
`Answer.x` (plain input), `Answer.x.label` (crowd-classifier), `Answer.x.<option>` = true/false
(radio group) or one JSON column `Answer.taskAnswers` (a crowd-form without
answer-format="flatten-objects"). Times carry a zone abbreviation and are converted to UTC.

Rows whose answer cannot be read are reported as invalid (with their file line) instead of
stopping the whole file; the caller decides whether to refuse the file. Structural problems (not
a results file, a duplicate AssignmentId, an unknown time zone) stop the whole file.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from hearsay.answers import parse_identification, parse_rating
from hearsay import csvread
from hearsay.csvread import FALSE_WORDS, is_true
from hearsay.worker_ids import MAX_PLATFORM_ID_LENGTH, InvalidWorkerId, canonical_worker_id
from hearsay.errors import HearsayError

# The names our batch layout gives its answers (and the original study's rating field).
RATING_FIELD = "audio-naturalness"
IDENTIFICATION_FIELD = "heard-word"
PLAY_COUNT_FIELD = "play-count"
PLAYED_TO_END_FIELD = "played-to-end"
TASK_ANSWERS = "Answer.taskAnswers"
MAX_PLAY_COUNT = 1_000_000  # more is no count of plays (and would not fit the database's integer)
# The path segment under which the app serves batch clips (evaluation.batch_audio); a results file whose
# URLs carry it came from a Hearsay batch, whose key the database also holds.
BATCH_AUDIO_PATH = "batch-audio"

REQUIRED_COLUMNS = ("AssignmentId", "WorkerId", "AssignmentStatus")
STATUSES = ("Submitted", "Approved", "Rejected")
# How final a status is: MTurk moves Submitted to Rejected or Approved, and a rejection can still be overridden
# by an approval (never the reverse); so of two downloads of one assignment the higher rank is the newer state.
STATUS_RANK = {"Submitted": 0, "Rejected": 1, "Approved": 2}
# The requester's own decision columns: a reason typed under Reject rejects a submitted assignment (the file is
# then uploaded to MTurk to carry it out), so its answer is treated as rejected before MTurk has done it.
REJECT_COLUMN = "Reject"
ORIGINAL_STUDY_INPUTS = ("experiment", "timestamp", "class_label", "audio_url", "pred_1_class", "pred_2_class")

# UTC offsets in minutes of the zone abbreviations Java's Date.toString (which MTurk uses) prints. Where an
# abbreviation is ambiguous, Java's meaning is taken: CST = US Central, IST = India, BST = British Summer.
ZONE_OFFSETS: dict[str, int] = {
    "UTC": 0, "GMT": 0, "UT": 0, "Z": 0, "WET": 0, "WEST": 60, "BST": 60, "IST": 330, "CET": 60, "CEST": 120,
    "MET": 60, "MEST": 120, "EET": 120, "EEST": 180, "MSK": 180, "TRT": 180, "GST": 240, "PKT": 300, "NPT": 345,
    "BDT": 360, "ICT": 420, "WIB": 420, "CST": -360, "CDT": -300, "HKT": 480, "SGT": 480, "PHT": 480, "AWST": 480,
    "JST": 540, "KST": 540, "ACST": 570, "ACDT": 630, "AEST": 600, "AEDT": 660, "NZST": 720, "NZDT": 780,
    "HST": -600, "HDT": -540, "AKST": -540, "AKDT": -480, "PST": -480, "PDT": -420, "MST": -420, "MDT": -360,
    "EST": -300, "EDT": -240, "AST": -240, "ADT": -180, "NST": -210, "NDT": -150, "BRT": -180, "ART": -180,
    "CLT": -240, "CLST": -180, "COT": -300, "PET": -300, "SAST": 120, "WAT": 60, "CAT": 120, "EAT": 180,
}
_MTURK_TIME = re.compile(r"(\w{3}) (\w{3}) +(\d{1,2}) (\d{2}):(\d{2}):(\d{2}) ([A-Za-z]{1,5}) (\d{4})")


def parse_mturk_time(text: str, where: str = "") -> datetime | None:
    """'Tue Mar 05 10:20:30 PST 2019' (or ISO 8601) as an aware UTC datetime; '' gives None."""
    text = (text or "").strip()
    if not text:
        return None
    prefix = f"{where}: " if where else ""
    match = _MTURK_TIME.fullmatch(text)
    if match:
        zone = match.group(7).upper()
        if zone not in ZONE_OFFSETS:
            raise HearsayError(f"{prefix}time {text!r} has an unknown time zone {zone!r}")
        try:
            naive = datetime.strptime(" ".join(match.group(i) for i in (2, 3, 4, 5, 6, 8)), "%b %d %H %M %S %Y")
        except ValueError:
            raise HearsayError(f"{prefix}unreadable MTurk time {text!r}") from None
        return naive.replace(tzinfo=timezone(timedelta(minutes=ZONE_OFFSETS[zone]))).astimezone(UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise HearsayError(f"{prefix}unreadable MTurk time {text!r}") from None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def later_status(old: str, new: str) -> str:
    """The state of an assignment seen as `old` and then as `new`: a decision is never undone by an older download."""
    return new if STATUS_RANK.get(new, 0) >= STATUS_RANK.get(old, 0) else old


def whole_number(text: str) -> int:
    """'3', ' 3 ', '3.0' or '3E+0' (how spreadsheets and data frames rewrite numbers) as 3; ValueError otherwise."""
    text = (text or "").strip()
    try:
        return int(text)
    except ValueError:
        value = float(text)  # ValueError for text that is no number
    if not value.is_integer():
        raise ValueError(f"{text!r} is not a whole number")
    return int(value)


def _flatten(prefix: str, value, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(value, bool):
        out[prefix] = "true" if value else "false"
    elif value is None:
        out[prefix] = ""
    elif isinstance(value, list):
        out[prefix] = ",".join(str(v) for v in value)
    else:
        out[prefix] = str(value)


def _task_answers(text: str, where: str) -> dict[str, str]:
    """Answer.taskAnswers: a JSON list holding one object per assignment, flattened like flatten-objects does."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{TASK_ANSWERS} is not JSON ({exc.msg})") from None
    if isinstance(data, list):
        if len(data) != 1 or not isinstance(data[0], dict):
            raise ValueError(f"{TASK_ANSWERS} holds {len(data)} answer objects, expected one")
        data = data[0]
    if not isinstance(data, dict):
        raise ValueError(f"{TASK_ANSWERS} is not an object of answers")
    out: dict[str, str] = {}
    for k, v in data.items():
        _flatten(k, v, out)
    return out


@dataclass(frozen=True)
class ResultRow:
    """One assignment of a results file, answers flattened to names like 'heard-word.label'."""

    line: int
    hit_id: str
    assignment_id: str
    worker_id: str
    status: str
    accepted: datetime | None
    submitted: datetime | None
    inputs: dict[str, str]
    answers: dict[str, str]
    problem: str = ""  # why the answers could not be read ('' when they could)
    source: str = ""  # the file's name, where answers come from several files ('' for one file)

    @property
    def where(self) -> str:
        """'line 7', or 'Batch_2.csv line 7' where several files are read together."""
        return f"{self.source} line {self.line}" if self.source else f"line {self.line}"

    @property
    def audio_url(self) -> str:
        return self.inputs.get("audio_url", "")

    @property
    def audio_path(self) -> str:
        """The audio URL's path, percent-decoded (query strings and hosts ignored)."""
        return unquote(urlsplit(self.audio_url).path)

    @property
    def audio_name(self) -> str:
        """The file name the audio URL ends in."""
        return PurePosixPath(self.audio_path).name

    @property
    def is_batch_audio(self) -> bool:
        return f"/{BATCH_AUDIO_PATH}/" in urlsplit(self.audio_url).path

    def answer(self, name: str) -> str:
        """The answer `name` in whichever shape it came: .label, plain, or exactly one radio option set to true."""
        for key in (f"{name}.label", name):
            if self.answers.get(key, "").strip():
                return self.answers[key].strip()
        prefix = f"{name}."
        chosen = [k[len(prefix):] for k, v in self.answers.items() if k.startswith(prefix) and is_true(v)]
        return chosen[0] if len(chosen) == 1 else ""

    def has_answer_field(self, name: str) -> bool:
        return any(k == name or k.startswith(f"{name}.") for k in self.answers)


@dataclass(frozen=True)
class ResultsFile:
    path: Path
    columns: tuple[str, ...]
    rows: tuple[ResultRow, ...]

    def task(self) -> str:
        """identification or rating, from the answer fields present."""
        names = {k.split(".")[0] for r in self.rows for k in r.answers}
        if IDENTIFICATION_FIELD in names:
            return "identification"
        if RATING_FIELD in names:
            return "rating"
        raise HearsayError(
            f"{self.path}: no answer column Answer.{IDENTIFICATION_FIELD} or Answer.{RATING_FIELD} "
            f"(nor {TASK_ANSWERS} holding one); is this the results file of a Hearsay batch?"
        )


def _spreadsheet_table(path: Path, what: str):
    """(header, records) of a CSV this tool wrote or MTurk gave, as it comes back from a spreadsheet too (see
    csvread.spreadsheet_records), less the header repeated where two downloads were joined with `cat`."""
    header, records = csvread.spreadsheet_records(path, what)
    if header is None:
        return None, records
    return header, ((line, record) for line, record in records
                    if len(record) != len(header) or [csvread.header_cell(c) for c in record] != header)


def read_results(path: str | Path) -> ResultsFile:
    """Read a results CSV; structural problems raise HearsayError naming the file and line.

    Besides the requester website's CSV, the same file after a spreadsheet round trip (see _spreadsheet_table).
    """
    path = Path(path).expanduser()
    header, records = _spreadsheet_table(path, "MTurk results file")
    if header is None:
        raise HearsayError(f"{path} is empty")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise HearsayError(f"{path} is not an MTurk results file: it lacks column(s) {', '.join(missing)}")
    if "Input.audio_url" not in header:
        raise HearsayError(f"{path} lacks column(s) Input.audio_url: the rows cannot be joined to their clips")
    rows: list[ResultRow] = []
    seen: dict[str, int] = {}
    for line, where, record in csvread.body(path, header, records):
        cells = dict(zip(header, record))
        ids = {c: cells.get(c, "").strip() for c in ("HITId", "AssignmentId", "WorkerId", "AssignmentStatus")}
        if not ids["AssignmentId"] or not ids["WorkerId"]:
            raise HearsayError(f"{where}: empty AssignmentId or WorkerId")
        too_long = [c for c, v in ids.items() if len(v) > MAX_PLATFORM_ID_LENGTH]
        if too_long:
            raise HearsayError(f"{where}: the {too_long[0]} is longer than {MAX_PLATFORM_ID_LENGTH} characters (no MTurk ID is)")
        if ids["AssignmentId"] in seen:
            raise HearsayError(f"{where}: AssignmentId {ids['AssignmentId']} already appeared on line {seen[ids['AssignmentId']]}")
        seen[ids["AssignmentId"]] = line
        status = ids["AssignmentStatus"].capitalize()
        if status not in STATUSES:
            raise HearsayError(f"{where}: unknown AssignmentStatus {ids['AssignmentStatus']!r} (expected {', '.join(STATUSES)})")
        if status == "Submitted" and cells.get(REJECT_COLUMN, "").strip():
            status = "Rejected"
        answers = {k[len("Answer."):]: v for k, v in cells.items() if k.startswith("Answer.") and k != TASK_ANSWERS}
        problem = ""
        if cells.get(TASK_ANSWERS, "").strip():
            try:
                answers.update(_task_answers(cells[TASK_ANSWERS], where))
            except ValueError as exc:
                problem = str(exc)
        worker_id = ids["WorkerId"]
        try:  # the form a study link or the API gives for the same worker, so both routes see one listener
            worker_id = canonical_worker_id(worker_id, "mturk")
        except InvalidWorkerId as exc:
            problem = problem or str(exc)
        rows.append(ResultRow(
            line=line, hit_id=ids["HITId"], assignment_id=ids["AssignmentId"], worker_id=worker_id, status=status,
            accepted=parse_mturk_time(cells.get("AcceptTime", ""), where),
            submitted=parse_mturk_time(cells.get("SubmitTime", ""), where),
            inputs={k[len("Input."):]: v.strip() for k, v in cells.items() if k.startswith("Input.")},
            answers=answers, problem=problem,
        ))
    if not rows:
        raise HearsayError(f"{path} has no assignments")
    return ResultsFile(path=path, columns=tuple(header), rows=tuple(rows))


def _same_work(a: ResultRow, b: ResultRow) -> bool:
    """Two downloads of one assignment: the same worker, clip and answers (a spreadsheet's TRUE or WAHR for true aside)."""
    def cell(v: str) -> str:
        v = v.strip().casefold()
        return "true" if is_true(v) else "" if v in FALSE_WORDS else v

    def norm(d: dict[str, str]) -> dict[str, str]:
        return {k: c for k, v in d.items() if (c := cell(v))}

    shared = set(a.answers) & set(b.answers)
    return (a.worker_id == b.worker_id and a.audio_url == b.audio_url
            and {k: v for k, v in norm(a.answers).items() if k in shared} == {k: v for k, v in norm(b.answers).items() if k in shared})


def read_results_files(paths: Iterable[str | Path]) -> ResultsFile:
    """Several results files of one study (a re-run batch, a later download) read as one, in the order given.

    An assignment in more than one file (a later download, or the same file twice) counts once, with its most
    final status (see later_status); one that holds other answers in another file refuses the files. Answers of
    one worker to one clip in several assignments follow `interpret`'s rule: the first counts.
    """
    paths = [Path(p).expanduser() for p in paths]
    if not paths:
        raise HearsayError("no MTurk results file given")
    if len(paths) == 1:
        return read_results(paths[0])
    files = [read_results(p) for p in paths]
    tasks = [results.task() for results in files]
    if len(set(tasks)) > 1:
        other = next(i for i, t in enumerate(tasks) if t != tasks[0])
        raise HearsayError(f"{paths[other]} holds {tasks[other]} answers but {paths[0]} holds {tasks[0]} answers: "
                           "not the results of one study")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):  # two files of the same name in different folders: name them by path
        names = [str(p) for p in paths]
    rows: list[ResultRow] = []
    at: dict[str, int] = {}
    columns: list[str] = []
    for name, results in zip(names, files):
        columns += [c for c in results.columns if c not in columns]
        for row in results.rows:
            row = replace(row, source=name)
            if row.assignment_id not in at:
                at[row.assignment_id] = len(rows)
                rows.append(row)
                continue
            earlier = rows[at[row.assignment_id]]
            if not _same_work(earlier, row):
                raise HearsayError(f"{name}:{row.line}: assignment {row.assignment_id} holds another worker, clip or answer "
                                   f"than in {earlier.source}:{earlier.line}; these are not downloads of one batch")
            status = later_status(earlier.status, row.status)
            if status != earlier.status:
                rows[at[row.assignment_id]] = replace(earlier, status=status)
    return ResultsFile(path=paths[0], columns=tuple(columns), rows=tuple(rows))


@dataclass(frozen=True)
class Answer:
    """A readable answer of one assignment: what both routes store and analyse."""

    row: ResultRow
    key: str  # the clip, as the resolver named it (a stimulus id)
    answer: str  # identification: a word or "none"; rating: ""
    rating: int | None
    play_count: int
    played_to_end: bool


@dataclass(frozen=True)
class Invalid:
    row: ResultRow
    reason: str

    def describe(self) -> str:
        return f"{self.row.where} ({self.row.assignment_id}): {self.reason}"


@dataclass
class Reading:
    task: str
    answers: list[Answer] = field(default_factory=list)
    invalid: list[Invalid] = field(default_factory=list)

    def summary(self) -> str:
        several = any(i.row.source for i in self.invalid)
        lines = ", ".join(i.row.where if several else str(i.row.line) for i in self.invalid[:20])
        lines += " ..." if len(self.invalid) > 20 else ""
        return f"{len(self.invalid)} invalid row(s), file lines {lines}" if self.invalid else "no invalid rows"


def interpret(results: ResultsFile, task: str, words: list[str], resolve: Callable[[ResultRow], str | None],
              experiment: str | None = None, clips: str = "the study's clips") -> Reading:
    """Each row's clip (through `resolve`, None = unknown) and answer; unreadable rows become Invalid.

    Invalid too: a row of another experiment (Input.experiment naming a different one), and a worker's
    second answer to a clip already answered (only the first counts, on both routes).
    """
    reading = Reading(task=task)
    name = RATING_FIELD if task == "rating" else IDENTIFICATION_FIELD
    answered: dict[tuple[str, str], str] = {}
    for row in results.rows:
        reason = row.problem
        key = None
        answer, score, plays = "", None, 0
        if not reason and experiment and row.inputs.get("experiment") and row.inputs["experiment"] != experiment:
            reason = f"row belongs to experiment {row.inputs['experiment']!r}, not {experiment!r}"
        if not reason:
            key = resolve(row)
            if key is None:
                reason = f"audio {row.audio_name or row.audio_url!r} is not in {clips}"
            elif (row.worker_id, key) in answered:
                reason = f"{row.worker_id} answered this clip before ({answered[row.worker_id, key]})"
            else:
                answered[row.worker_id, key] = row.where
        if not reason:
            label = row.answer(name)
            try:
                if not label:
                    raise HearsayError(f"no answer in Answer.{name}")
                if task == "rating":
                    score = parse_rating(label)
                else:
                    answer = parse_identification(label, words)
                plays = whole_number(row.answer(PLAY_COUNT_FIELD) or "0")
                if not 0 <= plays <= MAX_PLAY_COUNT:
                    raise ValueError
            except HearsayError as exc:
                reason = str(exc)
            except ValueError:
                reason = f"play count {row.answer(PLAY_COUNT_FIELD)!r} is not a whole number from 0 to {MAX_PLAY_COUNT}"
        if reason:
            reading.invalid.append(Invalid(row, reason))
            continue
        reading.answers.append(Answer(row=row, key=key, answer=answer, rating=score, play_count=plays,
                                      played_to_end=is_true(row.answer(PLAYED_TO_END_FIELD))))
    return reading


# The researcher's key from each opaque batch audio name to its stimulus; written by export-batch beside
# batch.csv, never uploaded (workers see only the opaque names).
BATCH_KEY = "batch_key.csv"
KEY_COLUMNS = ("audio_name", "stimulus_id")


def batch_key_bytes(pairs: Iterable[tuple[str, str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(KEY_COLUMNS)
    writer.writerows(pairs)
    return buf.getvalue().encode("utf-8")


def read_batch_key(path: str | Path) -> dict[str, str]:
    """audio name -> stimulus id, from a key file export-batch wrote."""
    path = Path(path).expanduser()
    header, records = _spreadsheet_table(path, "batch key file")
    if header is None or tuple(header) != KEY_COLUMNS:
        raise HearsayError(f"{path} is not a batch key file (expected the columns {', '.join(KEY_COLUMNS)})")
    key: dict[str, str] = {}
    for line, record in records:
        if len(record) != 2 or not all(c.strip() for c in record):
            raise HearsayError(f"{path}:{line}: expected an audio name and a stimulus id")
        name, sid = (c.strip() for c in record)
        if name in key:
            raise HearsayError(f"{path}:{line}: audio name {name!r} appears twice")
        key[name] = sid
    return key
