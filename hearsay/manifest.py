"""The stimulus manifest (manifest.csv beside its wav files): generation writes it, the survey loads it,
the batch analysis joins results to it. Columns, vocabularies, the one reader and the one writer.

`method` and `condition` are open (new explanation methods and priors add values); they must be
plain lower-case tokens so they are safe in file names, URLs and report tables. `init` and `stage`
are closed: the analysis pairs clips by them.
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from hearsay import atomic, csvread
from hearsay.answers import is_none
from hearsay.errors import HearsayError

MANIFEST_NAME = "manifest.csv"
REQUIRED_COLUMNS: tuple[str, ...] = ("stimulus_id", "file", "word", "method", "init", "stage", "pair_id")
PROVENANCE_COLUMNS: tuple[str, ...] = (
    "condition", "source_file", "speaker", "seed", "attempts", "pred_a", "prob_a", "pred_b", "prob_b",
    "target_prob_a", "classifier_sha256", "evaluator_sha256", "decoder_sha256", "status",
)
MANIFEST_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + PROVENANCE_COLUMNS
# An optional column: test / gold / trap / practice. Without it an original recording is gold, the rest test.
KIND_COLUMN = "kind"

# Vocabularies. METHODS lists the methods Hearsay itself produces; others are accepted (see above).
METHODS: tuple[str, ...] = ("classifier", "decoder", "natural", "espeak")
INITS: tuple[str, ...] = ("noise", "test", "none")
STAGES: tuple[str, ...] = ("original", "before", "after")
KINDS: tuple[str, ...] = ("test", "gold", "trap", "practice")


@dataclass(frozen=True)
class PaperCondition:
    """One of the paper's four maximization conditions."""

    name: str
    method: str
    init: str

    @property
    def paired(self) -> bool:
        """Started from a test utterance: the clip has a 'before' twin (and, for the decoder, an original)."""
        return self.init == "test"


PAPER_CONDITIONS: tuple[PaperCondition, ...] = (
    PaperCondition("1-classifier-noise", "classifier", "noise"),
    PaperCondition("2-classifier-test", "classifier", "test"),
    PaperCondition("3-decoder-noise", "decoder", "noise"),
    PaperCondition("4-decoder-test", "decoder", "test"),
)
ORIGINAL_CONDITION = "original"
CONDITIONS: tuple[str, ...] = tuple(c.name for c in PAPER_CONDITIONS) + (ORIGINAL_CONDITION,)
# Words that describe a clip; opaque names and ids must not contain them.
REVEALING_WORDS: tuple[str, ...] = METHODS + INITS + STAGES

_TOKEN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
MAX_ID_LENGTH = 64


def default_condition(method: str, init: str, stage: str) -> str:
    """The condition of a row that names none: 'original' for original recordings, else method-init."""
    return ORIGINAL_CONDITION if stage == "original" else f"{method}-{init}"


@dataclass(frozen=True)
class ManifestRow:
    stimulus_id: str
    file: str
    word: str
    method: str
    init: str
    stage: str
    pair_id: str
    condition: str
    kind: str
    line: int
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def basename(self) -> str:
        return PurePosixPath(self.file.replace("\\", "/")).name

    @property
    def parts(self) -> tuple[str, ...]:
        """The path's folders and name, "/" or Windows' "\\" separating them (a manifest made on Windows)."""
        return tuple(part for part in PurePosixPath(self.file.replace("\\", "/")).parts if part != ".")


@dataclass(frozen=True)
class Manifest:
    path: Path
    columns: tuple[str, ...]
    rows: tuple[ManifestRow, ...]

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def words(self) -> list[str]:
        return sorted({r.word for r in self.rows})

    def by_id(self) -> dict[str, ManifestRow]:
        return {r.stimulus_id: r for r in self.rows}

    @cached_property
    def _by_basename(self) -> dict[str, list[ManifestRow]]:
        index: dict[str, list[ManifestRow]] = {}
        for r in self.rows:
            index.setdefault(r.basename, []).append(r)
        return index

    def row_for_path(self, path: str) -> ManifestRow | None:
        """The row whose file a clip's URL path ends with: its file name where no other row's has it, else its folders
        too ('.../cond1/clip01.wav' beside 'cond2/clip01.wav'); None for no row. Two rows that both fit are one
        HearsayError, since answers must never be joined to the wrong clip."""
        candidates = self._by_basename.get(PurePosixPath(path).name, [])
        if len(candidates) > 1:
            segments = [part for part in path.split("/") if part]
            fitting = [r for r in candidates if list(r.parts) == segments[-len(r.parts):]]
            if len(fitting) != 1:
                files = ", ".join(r.file for r in candidates[:3])
                raise HearsayError(f"clip path {path!r} fits several files of manifest {self.path} ({files}): join the "
                                   "results by the batch key (--batch-key) or an Input.stimulus_id column")
            candidates = fitting
        return candidates[0] if candidates else None


def _check_row(values: dict[str, str], where: str) -> None:
    sid = values["stimulus_id"]
    if not sid or len(sid) > MAX_ID_LENGTH:
        raise HearsayError(f"{where}: stimulus_id must be 1-{MAX_ID_LENGTH} characters")
    if not values["word"]:
        raise HearsayError(f"{where}: empty word")
    if is_none(values["word"]):  # answers of that word would be stored and analysed as can't tell
        raise HearsayError(f"{where}: word {values['word']!r} is how answers say can't tell; give that class another name")
    if not values["method"]:
        raise HearsayError(f"{where}: empty method")
    if not _TOKEN.fullmatch(values["method"]):
        raise HearsayError(f"{where}: method {values['method']!r} must be a lower-case token (letters, digits, _ . -)")
    if values["init"] not in INITS:
        raise HearsayError(f"{where}: init {values['init']!r} is not one of {', '.join(INITS)}")
    if values["stage"] not in STAGES:
        raise HearsayError(f"{where}: stage {values['stage']!r} is not one of {', '.join(STAGES)}")
    condition = values.get("condition", "")
    if condition and not _TOKEN.fullmatch(condition):
        raise HearsayError(f"{where}: condition {condition!r} must be a lower-case token (letters, digits, _ . -)")
    kind = values.get(KIND_COLUMN, "")
    if kind and kind not in KINDS:
        raise HearsayError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
    rel = values["file"]
    parts = PurePosixPath(rel.replace("\\", "/"))
    if not rel or parts.is_absolute() or Path(rel).is_absolute() or PureWindowsPath(rel).drive or ".." in parts.parts:
        raise HearsayError(f"{where}: file {rel!r} must be a path inside the manifest's folder")


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest: every problem is one line naming the file and its line.

    A manifest saved again by a spreadsheet reads the same: BOM, CRLF, ";" or tab separators, UTF-16
    "Unicode text", blank columns past the last named one.
    """
    path = Path(path).expanduser()
    header, records = csvread.spreadsheet_records(path, "manifest")
    header = header or []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise HearsayError(f"manifest {path} lacks required column(s): {', '.join(missing)}")
    rows: list[ManifestRow] = []
    ids: set[str] = set()
    for start, where, record in csvread.body(path, header, records):
        values = {k: v.strip() for k, v in zip(header, record)}
        _check_row(values, where)
        sid = values["stimulus_id"]
        if sid in ids:
            raise HearsayError(f"{where}: duplicate stimulus_id {sid!r}")
        ids.add(sid)
        condition = values.get("condition") or default_condition(values["method"], values["init"], values["stage"])
        kind = values.get(KIND_COLUMN) or ("gold" if values["stage"] == "original" else "test")
        row = ManifestRow(
            stimulus_id=sid, file=values["file"], word=values["word"], method=values["method"], init=values["init"],
            stage=values["stage"], pair_id=values["pair_id"], condition=condition, kind=kind, line=start,
            provenance={k: v for k, v in values.items() if k not in REQUIRED_COLUMNS and k not in ("condition", KIND_COLUMN)},
        )
        rows.append(row)
    if not rows:
        raise HearsayError(f"manifest {path} has no rows")
    return Manifest(path=path, columns=tuple(header), rows=tuple(rows))


def manifest_bytes(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """The CSV text of a manifest: the declared columns first, then any further ones in first-seen order."""
    rows = list(rows)
    extra: list[str] = []
    for r in rows:
        missing = [c for c in REQUIRED_COLUMNS if c not in r]
        if missing:
            raise HearsayError(f"manifest row {r.get('stimulus_id', '?')!r} lacks {', '.join(missing)}")
        extra += [k for k in r if k not in MANIFEST_COLUMNS and k not in extra]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS) + extra, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def write_manifest(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write manifest.csv atomically: a reader sees the old file or the whole new one."""
    atomic.write_bytes(path, manifest_bytes(rows))
