"""The long answer table (one row per answer): validation, the MTurk batch route, exclusions.

The database route gets the table from evaluation.export.long_table; the batch route
builds the same columns here from an MTurk results CSV (read by hearsay.mturk_results,
the reader `mturk import-results` uses too) joined to the stimulus manifest, so both
routes give the same table. A table saved as CSV (the admin's download) is read back by
read_answers. No Django here.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hearsay.answers import ANSWER_COLUMNS as COLUMNS
from hearsay.answers import (
    ANSWER_NUMBER_COLUMNS, ANSWER_TEXT_COLUMNS, LISTENER_KINDS, NONE_ALIASES, NONE_ANSWER, RATING_MAX, RATING_MIN, STIMULUS_KINDS,
)
from hearsay import csvread
from hearsay.csvsafe import FORMULA_STARTS
from hearsay.errors import HearsayError
from hearsay.manifest import ORIGINAL_CONDITION, read_manifest
from hearsay.mturk_results import Reading, interpret, read_batch_key, read_results_files

EXCLUDE_RULES = ("none", "traps", "gold", "paper")


def _text(series: pd.Series) -> pd.Series:
    return series.fillna("").astype(str).str.strip()


def _as_bool_or_none(value):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        low = value.strip().lower()
        if low in {"", "none", "nan"}:
            return None
        return low in {"1", "yes"} or csvread.is_true(low)
    return bool(value)


def _bool_column(series: pd.Series) -> pd.Series:
    """True/False/None per row, converting each distinct value once (fast on a million rows)."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    values = np.array([_as_bool_or_none(u) for u in uniques] + [None], dtype=object)
    return pd.Series(values[codes], index=series.index, dtype=object)


def normalize(table: pd.DataFrame) -> pd.DataFrame:
    """Check the long table has every column and coerce types, so both routes look alike."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise HearsayError(f"answer table lacks column(s): {', '.join(missing)}")
    if table.empty:
        raise HearsayError("answer table is empty: no answers to analyse")
    df = table[list(COLUMNS)].copy()
    for col in ANSWER_TEXT_COLUMNS:
        df[col] = _text(df[col])
    df["answer"] = df["answer"].str.lower()
    df.loc[df["answer"].isin(NONE_ALIASES), "answer"] = NONE_ANSWER
    df["word"] = df["word"].str.lower()
    df["rating"] = pd.to_numeric(df["rating"], errors="coerce").astype(float)
    df["response_ms"] = pd.to_numeric(df["response_ms"], errors="coerce").astype(float)
    df["play_count"] = pd.to_numeric(df["play_count"], errors="coerce").fillna(0).astype(int)
    df["listened_to_end"] = _bool_column(df["listened_to_end"]).eq(True)
    for col in ("correct", "pay_ok", "analyse_ok"):
        df[col] = _bool_column(df[col])
    bad_kind = sorted(set(df["listener_kind"].unique()) - set(LISTENER_KINDS))
    if bad_kind:
        raise HearsayError(f"listener_kind must be {' or '.join(LISTENER_KINDS)}, got {bad_kind[0]!r}")
    bad_stim = sorted(set(df["stimulus_kind"].unique()) - set(STIMULUS_KINDS))
    if bad_stim:
        raise HearsayError(f"stimulus_kind must be one of {', '.join(STIMULUS_KINDS)}, got {bad_stim[0]!r}")
    bad_rating = df["rating"].dropna()
    if ((bad_rating < RATING_MIN) | (bad_rating > RATING_MAX)).any():
        raise HearsayError(f"ratings must lie between {RATING_MIN} (Bad) and {RATING_MAX} (Excellent)")
    blank = df["condition"] == ""
    if blank.any():  # derived only where the table leaves it out (gold, trap and practice clips)
        part = df.loc[blank]
        df.loc[blank, "condition"] = np.where(part["stage"] == "original", ORIGINAL_CONDITION,
                                              part["method"] + "-" + part["init"])
    return df.reset_index(drop=True)


def as_categories(df: pd.DataFrame) -> pd.DataFrame:
    """The text columns as categoricals with sorted categories: filtering and grouping a million answers then moves
    small integer codes instead of Arrow strings, and groups still come out in the strings' sorted order."""
    return df.astype({col: "category" for col in ANSWER_TEXT_COLUMNS})


def plain(df: pd.DataFrame) -> pd.DataFrame:
    """A (small, derived) table with categorical columns turned back into strings, as the report's tables hold."""
    cats = [c for c in df.columns if isinstance(df[c].dtype, pd.CategoricalDtype)]
    return df.astype({c: str for c in cats}) if cats else df


def read_mturk(csv_path: Path | Sequence[Path], manifest_path: Path, key_path: Path | None = None,
               strict: bool = False,
               key_provider: Callable[[], Mapping[str, str]] | None = None) -> tuple[pd.DataFrame, dict]:
    """Turn an MTurk results CSV (or several of one study, read as one: see read_results_files) plus its manifest
    into the long table and experiment info.

    Rows join the manifest through the batch key (opaque audio name -> stimulus id) when given: the
    key file export-batch wrote, or, for URLs of Hearsay's batch audio, `key_provider` (the database's
    key); else by an `Input.stimulus_id` column, else by the audio URL's path (Manifest.row_for_path). The rules are
    those of the database route (`mturk import-results`): rejected assignments are left out and
    counted, never dragging the worker's other answers out; unreadable rows are left out and
    counted, or refuse the file when `strict`.
    """
    paths = [Path(csv_path)] if isinstance(csv_path, (str, Path)) else [Path(p) for p in csv_path]
    csv_path = paths[0] if len(paths) == 1 else ", ".join(str(p) for p in paths)
    manifest = read_manifest(manifest_path)
    results = read_results_files(paths)
    task = results.task()
    by_id = manifest.by_id()
    key = read_batch_key(key_path) if key_path else None
    if key is None and key_provider is not None and any(row.is_batch_audio for row in results.rows):
        key = dict(key_provider())

    def resolve(row) -> str | None:
        if key is not None:
            sid = key.get(row.audio_name)
        elif row.inputs.get("stimulus_id"):
            sid = row.inputs["stimulus_id"]
        else:
            entry = manifest.row_for_path(row.audio_path)
            sid = entry.stimulus_id if entry else None
        return sid if sid in by_id else None

    clips = "the manifest" + (" or the batch key" if key is not None else "")
    reading: Reading = interpret(results, task, manifest.words, resolve, clips=clips)
    if strict and reading.invalid:
        raise HearsayError(f"{csv_path}: {reading.summary()}; first: {reading.invalid[0].describe()}")
    unresolved = [i for i in reading.invalid if f"is not in {clips}" in i.reason]
    if unresolved and len(unresolved) == len(results.rows):
        hint = "" if key is not None else " (give the batch key file that export-batch wrote beside batch.csv)"
        raise HearsayError(f"{len(unresolved)} MTurk answer(s) refer to audio not in the manifest, "
                           f"e.g. {unresolved[0].row.audio_name!r}{hint}")
    kept = [a for a in reading.answers if a.row.status != "Rejected"]
    rejected = len(reading.answers) - len(kept)
    if not kept:
        first = f"; first: {reading.invalid[0].describe()}" if reading.invalid else ""
        raise HearsayError(f"{csv_path}: no answers to analyse ({rejected} rejected, {reading.summary()}){first}")
    records = []
    for a in kept:
        s = by_id[a.key]
        records.append({
            "listener": a.row.worker_id, "listener_kind": "human", "listener_source": "mturk",
            "stimulus": s.stimulus_id, "stimulus_kind": s.kind, "pair_id": s.pair_id, "method": s.method,
            "init": s.init, "stage": s.stage, "condition": s.condition, "word": s.word,
            "answer": a.answer if task == "identification" else "",
            "correct": (a.answer == s.word) if task == "identification" else None,
            "rating": float(a.rating) if a.rating is not None else np.nan,
            "play_count": a.play_count, "listened_to_end": a.played_to_end, "response_ms": np.nan,
            "pay_ok": True if a.row.status == "Approved" else None, "analyse_ok": None, "analyse_reasons": "",
            "answered_at": a.row.submitted.isoformat() if a.row.submitted else "",
        })
    df = pd.DataFrame(records, columns=list(COLUMNS))
    counts = df.groupby("stimulus").size()
    info = {"slug": paths[0].stem, "task": task, "words": [w.lower() for w in manifest.words],
            "ratings_per_stimulus": int(counts.median()) if not counts.empty else 0,
            "rejected_answers": rejected, "invalid_rows": [i.describe() for i in reading.invalid]}
    return normalize(df), info


@dataclass(frozen=True)
class Exclusion:
    """Which listeners to drop before analysis, and why (for the report's exclusion table)."""

    rule: str = "gold"
    min_gold_accuracy: float = 0.5
    include_machines: bool = False


def read_answers(path: Path, manifest_path: Path | None = None) -> tuple[pd.DataFrame, dict]:
    """The long answer table from a CSV (the admin's responses download, or any tool that writes these columns),
    and the experiment info it implies, so a study can be analysed away from its database.

    A listener's second answer to a clip is left out (the first kept) and named in info["invalid_rows"].
    The answer options are the manifest's words when given, else every word the table names as a target or an
    answer (chance is 1 / (options + 1), so give the manifest when some option was never a target nor answered).
    Cells the export neutralized for spreadsheets ('=... written as \'=...) are read back as they were.
    """
    path = Path(path).expanduser()
    text, delimiter = csvread.spreadsheet_text(path, "answer table")
    try:
        raw = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise HearsayError(f"{path} is not a CSV answer table: {str(exc).strip().splitlines()[0]}") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise HearsayError(f"{path} is not an answer table: it lacks column(s) {', '.join(missing)}")
    for col in raw.columns:  # the export's quote before a formula start taken off (csvsafe), vectorized for big tables
        quoted = raw[col].str.startswith("'") & raw[col].str[1:2].isin(FORMULA_STARTS)
        if quoted.any():
            raw.loc[quoted, col] = raw.loc[quoted, col].str[1:]
    for col in ANSWER_NUMBER_COLUMNS:  # a number column must hold numbers (or nothing): never a silent NaN
        values = raw[col].str.strip()
        numbers = pd.to_numeric(values.where(values != ""), errors="coerce")
        bad = values[(values != "") & numbers.isna()]
        if not bad.empty:
            raise HearsayError(f"{path}: answer {bad.index[0] + 1}: {col} {bad.iloc[0][:40]!r} is not a number")
        if not np.isfinite(numbers.dropna()).all():
            raise HearsayError(f"{path}: {col} holds an infinite number")
    try:
        df = normalize(raw)
    except HearsayError as exc:
        raise HearsayError(f"{path}: {exc}") from None
    df, repeats = _first_answers(df)
    rated = df["rating"].notna()
    task = "rating" if rated.any() else "identification"
    if task == "rating" and (df["answer"] != "").any() and not rated.all():
        raise HearsayError(f"{path} mixes identification answers and ratings: not the answers of one experiment")
    if manifest_path is not None:
        manifest = read_manifest(manifest_path)
        words = [w.lower() for w in manifest.words]
        unknown = sorted(set(df.loc[df["stimulus_kind"] == "test", "word"].unique()) - set(words))  # a manifest of another study
        if unknown:
            raise HearsayError(f"{path}: word {unknown[0]!r} is not in the manifest {manifest_path}")
        tested = df.loc[df["stimulus_kind"] == "test", "stimulus"]
        missing = tested[~tested.isin(set(manifest.by_id()))]
        if not missing.empty:  # another version of the study's stimuli: its words may not be the options heard
            raise HearsayError(f"{path}: answer {missing.index[0] + 1}: clip {missing.iloc[0]!r} is not in the "
                               f"manifest {manifest_path} ({missing.nunique()} clip(s) missing): give the manifest "
                               "the study was run with, or leave --manifest out to take the words from the table")
    else:
        answered = set(df["answer"].unique()) if task == "identification" else set()
        words = sorted((set(df["word"].unique()) | answered) - {NONE_ANSWER, ""} - set(NONE_ALIASES))
    counts = df.groupby("stimulus").size()
    return df.reset_index(drop=True), {"slug": path.stem, "task": task, "words": words,
                                       "ratings_per_stimulus": int(counts.median()), "rejected_answers": 0,
                                       "invalid_rows": repeats}


REPEATS_LISTED = 3


def _first_answers(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Each listener's first answer to each clip (in table order), and one line per kind of repeat left out.

    The survey stores one answer per listener and clip, so a second one comes from tables joined by hand (a
    download pasted twice, two exports merged). Counting it would weigh that listener's clip twice and break
    the pairing of McNemar's test, so it is left out, as the results-file reader leaves out a worker's second
    answer to a clip; the lines say how many and where.
    """
    later = df.duplicated(["listener", "stimulus"], keep="first")
    if not later.any():
        return df, []
    same = df.duplicated(keep="first") & later  # the same row again, every column alike
    lines = []
    if same.any():
        lines.append(f"{int(same.sum())} answer(s) repeat an earlier row exactly (the table holds some answers "
                     "twice): each counted once")
    differing = later & ~same
    if differing.any():
        first = df.reset_index().drop_duplicates(["listener", "stimulus"]).set_index(["listener", "stimulus"])["index"]
        for i in np.flatnonzero(differing.to_numpy())[:REPEATS_LISTED]:
            row = df.iloc[i]
            kept = int(first.loc[(row["listener"], row["stimulus"])]) + 1
            lines.append(f"answer {i + 1}: listener {row['listener']!r} answered clip {row['stimulus']!r} again "
                         f"(answer {kept} is kept, later ones left out)")
        if differing.sum() > REPEATS_LISTED:
            lines.append(f"... {int(differing.sum()) - REPEATS_LISTED} more repeated answer(s) left out the same way")
    return df[~later], lines  # the index stays the table's answer number for later messages


def is_paper_noise_clip(df: pd.DataFrame) -> pd.Series:
    """The paper's condition 1: classifier maximization started from noise."""
    return (df["method"] == "classifier") & (df["init"] == "noise") & (df["stimulus_kind"] == "test")


def apply_exclusions(table: pd.DataFrame, rule: Exclusion) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Drop practice trials and excluded listeners; return (kept, exclusion counts, per-listener QC).

    Rules: "none" drops no listener; "traps" drops listeners whose verdict says not fit
    to analyse or who failed any trap; "gold" also drops listeners whose gold accuracy
    is below the threshold; "paper" drops only those who rated any classifier-noise clip
    Good or Excellent (the original study's rule). Machines are never excluded by these
    human-quality rules; without include_machines they are left out of the report.
    """
    if rule.rule not in EXCLUDE_RULES:
        raise HearsayError(f"unknown exclusion rule {rule.rule!r} (choose from {', '.join(EXCLUDE_RULES)})")
    df = table[table["stimulus_kind"] != "practice"]
    if df.empty:
        raise HearsayError("no answers left after dropping practice trials")
    qc = per_listener_qc(df)
    reasons: dict[str, set[str]] = {}
    humans = set(qc.loc[qc["listener_kind"] == "human", "listener"])
    if rule.rule in ("traps", "gold"):
        reasons["verdict: not fit to analyse"] = set(qc.loc[qc["analyse_ok"].eq(False), "listener"]) & humans
        reasons["failed a trap"] = set(qc.loc[qc["trap_failed"] > 0, "listener"]) & humans
    if rule.rule == "gold":
        low = qc["gold_accuracy"] < rule.min_gold_accuracy
        reasons[f"gold accuracy below {rule.min_gold_accuracy:g}"] = set(qc.loc[low, "listener"]) & humans
    if rule.rule == "paper":
        bad = df[is_paper_noise_clip(df) & (df["rating"] >= 3)]
        reasons["paper rule: rated a classifier-noise clip Good or Excellent"] = set(bad["listener"]) & humans
    machines = set(qc.loc[qc["listener_kind"] == "machine", "listener"])
    if not rule.include_machines:
        reasons["machine listener (use --include-machines)"] = machines
    rows = [_count_row("before exclusions", df, df["listener"].nunique())]
    dropped: set[str] = set()
    for reason, listeners in reasons.items():
        part = df[df["listener"].isin(listeners)]
        rows.append({"step": reason, "listeners": len(listeners), "answers": len(part),
                     "test_answers": int((part["stimulus_kind"] == "test").sum())})
        dropped |= listeners
    kept = df[~df["listener"].isin(dropped)]
    rows.append(_count_row("after exclusions", kept, kept["listener"].nunique()))
    qc["excluded"] = qc["listener"].isin(dropped)
    qc["exclusion_reasons"] = qc["listener"].map(lambda l: "; ".join(r for r, ls in reasons.items() if l in ls))
    if kept.empty:
        if humans:
            hint = "--exclude none keeps every human listener"
        else:
            hint = "only machine listeners answered: add --include-machines"
        raise HearsayError(f"every listener was excluded: nothing left to analyse ({hint})")
    return kept.reset_index(drop=True), pd.DataFrame(rows).rename_axis("order").reset_index(), qc


def _count_row(step: str, df: pd.DataFrame, listeners: int) -> dict:
    return {"step": step, "listeners": listeners, "answers": len(df),
            "test_answers": int((df["stimulus_kind"] == "test").sum())}


def per_listener_qc(df: pd.DataFrame) -> pd.DataFrame:
    """Per-listener answer counts, gold accuracy, trap failures and verdict."""
    codes, names = pd.factorize(df["listener"], sort=True)
    correct = pd.to_numeric(df["correct"]).to_numpy(dtype=float)
    scored = ~np.isnan(correct)

    def per_listener(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(codes[mask], None if weights is None else weights[mask], minlength=len(names))

    base = df.groupby("listener").agg(listener_kind=("listener_kind", "first"),
                                      listener_source=("listener_source", "first"),
                                      answers=("stimulus", "size"),
                                      analyse_ok=("analyse_ok", "first"),
                                      analyse_reasons=("analyse_reasons", "first"))
    at = pd.Index(np.asarray(names, dtype=object)).get_indexer(np.asarray(base.index, dtype=object))
    base.insert(3, "test_answers", per_listener((df["stimulus_kind"] == "test").to_numpy())[at])
    gold = (df["stimulus_kind"] == "gold").to_numpy() & scored
    trap = (df["stimulus_kind"] == "trap").to_numpy() & scored
    base["gold_answers"] = per_listener(gold)[at]
    base["gold_correct"] = per_listener(gold, correct)[at].astype(int)
    with np.errstate(invalid="ignore", divide="ignore"):
        base["gold_accuracy"] = base["gold_correct"] / base["gold_answers"].where(base["gold_answers"] > 0)
    base["trap_answers"] = per_listener(trap)[at]
    base["trap_failed"] = (per_listener(trap) - per_listener(trap, correct))[at].astype(int)
    return plain(base.reset_index())
