"""The long answer table (one row per answer): validation, the MTurk batch reader, exclusions.

The database route gets the table from evaluation.export.long_table; the batch route
builds the same columns here from an MTurk results CSV joined to the stimulus manifest,
so everything downstream sees one format. No Django here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from generation.errors import HearsayError

COLUMNS = [
    "listener", "listener_kind", "listener_source", "stimulus", "stimulus_kind", "pair_id", "method", "init",
    "stage", "condition", "word", "answer", "correct", "rating", "play_count", "listened_to_end", "response_ms",
    "pay_ok", "analyse_ok", "analyse_reasons", "answered_at",
]
MANIFEST_REQUIRED = ["stimulus_id", "file", "word", "method", "init", "stage", "pair_id"]
RATING_LABELS = {"bad": 0.0, "poor": 1.0, "fair": 2.0, "good": 3.0, "excellent": 4.0}
NONE_ANSWERS = {"none", "can't tell", "cant tell", "can’t tell", "unknown", "?"}
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
        return low in {"1", "true", "yes"}
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
    df = table[COLUMNS].copy()
    for col in ["listener", "listener_kind", "listener_source", "stimulus", "stimulus_kind", "pair_id", "method",
                "init", "stage", "condition", "word", "answer", "analyse_reasons", "answered_at"]:
        df[col] = _text(df[col])
    df["answer"] = df["answer"].str.lower()
    df.loc[df["answer"].isin(NONE_ANSWERS), "answer"] = "none"
    df["word"] = df["word"].str.lower()
    df["rating"] = pd.to_numeric(df["rating"], errors="coerce").astype(float)
    df["response_ms"] = pd.to_numeric(df["response_ms"], errors="coerce").astype(float)
    df["play_count"] = pd.to_numeric(df["play_count"], errors="coerce").fillna(0).astype(int)
    df["listened_to_end"] = _bool_column(df["listened_to_end"]).eq(True)
    for col in ("correct", "pay_ok", "analyse_ok"):
        df[col] = _bool_column(df[col])
    bad_kind = sorted(set(df["listener_kind"]) - {"human", "machine"})
    if bad_kind:
        raise HearsayError(f"listener_kind must be human or machine, got {bad_kind[0]!r}")
    bad_stim = sorted(set(df["stimulus_kind"]) - {"test", "gold", "trap", "practice"})
    if bad_stim:
        raise HearsayError(f"stimulus_kind must be test, gold, trap or practice, got {bad_stim[0]!r}")
    bad_rating = df["rating"].dropna()
    if ((bad_rating < 0) | (bad_rating > 4)).any():
        raise HearsayError("ratings must lie between 0 (Bad) and 4 (Excellent)")
    df["condition"] = np.where(df["condition"] == "", df["method"] + "-" + df["init"], df["condition"])
    return df.reset_index(drop=True)


def read_manifest(path: Path) -> pd.DataFrame:
    """Load a stimulus manifest (the generation contract) with its required columns checked."""
    path = Path(path)
    if not path.is_file():
        raise HearsayError(f"manifest not found: {path}")
    try:
        manifest = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise HearsayError(f"cannot read manifest {path}: {str(exc).splitlines()[0]}") from exc
    missing = [c for c in MANIFEST_REQUIRED if c not in manifest.columns]
    if missing:
        raise HearsayError(f"manifest {path} lacks column(s): {', '.join(missing)}")
    if manifest.empty:
        raise HearsayError(f"manifest {path} lists no stimuli")
    dup = manifest["stimulus_id"][manifest["stimulus_id"].duplicated()]
    if not dup.empty:
        raise HearsayError(f"manifest {path} repeats stimulus_id {dup.iloc[0]!r}")
    manifest["basename"] = manifest["file"].map(lambda f: PurePosixPath(f.replace("\\", "/")).name)
    dup = manifest["basename"][manifest["basename"].duplicated()]
    if not dup.empty:
        raise HearsayError(f"manifest {path} has two stimuli with the file name {dup.iloc[0]!r}")
    return manifest


def _rating_value(label: str) -> float:
    match = re.match(r"\s*([A-Za-z]+)", label or "")
    if not match or match.group(1).lower() not in RATING_LABELS:
        raise HearsayError(f"unknown rating label {label!r} (expected Excellent, Good, Fair, Poor or Bad)")
    return RATING_LABELS[match.group(1).lower()]


def _submit_time(value: str) -> str:
    if not value:
        return ""
    parts = value.split()
    if len(parts) == 6:  # MTurk: "Sun Nov 22 04:04:22 PST 2026"; the zone name is not parseable, keep local time
        value = " ".join(parts[:4] + parts[5:])
    stamp = pd.to_datetime(value, errors="coerce")
    return "" if pd.isna(stamp) else stamp.isoformat()


def read_mturk(csv_path: Path, manifest_path: Path) -> tuple[pd.DataFrame, dict]:
    """Turn an MTurk batch results CSV plus its manifest into the long table and experiment info.

    Rows join the manifest by an `Input.stimulus_id` column when present, otherwise by
    the audio URL's file name. Approved assignments are fit to pay; rejected ones are
    neither paid nor analysed (reason recorded); submitted ones are undecided.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise HearsayError(f"MTurk results CSV not found: {csv_path}")
    manifest = read_manifest(manifest_path)
    try:
        raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise HearsayError(f"cannot read MTurk CSV {csv_path}: {str(exc).splitlines()[0]}") from exc
    has_rating = "Answer.audio-naturalness.label" in raw.columns
    has_ident = "Answer.heard-word" in raw.columns
    key_col = "Input.stimulus_id" if "Input.stimulus_id" in raw.columns else "Input.audio_url"
    required = ["WorkerId", "AssignmentId", "AssignmentStatus", key_col]
    missing = [c for c in required if c not in raw.columns]
    if not (has_rating or has_ident):
        missing.append("Answer.audio-naturalness.label or Answer.heard-word")
    if missing:
        raise HearsayError(f"MTurk CSV {csv_path} lacks column(s): {', '.join(missing)}")
    if raw.empty:
        raise HearsayError(f"MTurk CSV {csv_path} has no answers")
    if key_col == "Input.stimulus_id":
        keys = _text(raw[key_col])
        lookup = manifest.set_index("stimulus_id")
    else:
        keys = _text(raw[key_col]).map(lambda u: PurePosixPath(urlparse(u).path).name)
        lookup = manifest.set_index("basename")
    unknown = keys[~keys.isin(lookup.index)]
    if not unknown.empty:
        raise HearsayError(f"{len(unknown)} MTurk answer(s) refer to audio not in the manifest, e.g. {unknown.iloc[0]!r}")
    stim = lookup.loc[keys.to_numpy()].reset_index()
    status = _text(raw["AssignmentStatus"]).str.lower()
    kind_col = next((c for c in ("stimulus_kind", "kind") if c in manifest.columns), None)
    df = pd.DataFrame({
        "listener": _text(raw["WorkerId"]).to_numpy(),
        "listener_kind": "human",
        "listener_source": "mturk",
        "stimulus": stim["stimulus_id"].to_numpy(),
        "stimulus_kind": (_text(stim[kind_col]).replace("", "test") if kind_col else pd.Series("test", index=stim.index)).to_numpy(),
        "pair_id": stim["pair_id"].to_numpy(),
        "method": stim["method"].to_numpy(),
        "init": stim["init"].to_numpy(),
        "stage": stim["stage"].to_numpy(),
        "condition": (stim["condition"] if "condition" in stim.columns else pd.Series("", index=stim.index)).to_numpy(),
        "word": stim["word"].str.lower().to_numpy(),
        "play_count": 0,
        "listened_to_end": False,
        "response_ms": (pd.to_numeric(raw["WorkTimeInSeconds"], errors="coerce") * 1000.0).to_numpy()
        if "WorkTimeInSeconds" in raw.columns else np.nan,
        "pay_ok": status.map(lambda s: True if s == "approved" else (False if s == "rejected" else None)).to_numpy(),
        "analyse_ok": status.map(lambda s: False if s == "rejected" else None).astype(object).to_numpy(),
        "analyse_reasons": status.map(lambda s: "assignment rejected on MTurk" if s == "rejected" else "").to_numpy(),
        "answered_at": _text(raw["SubmitTime"]).map(_submit_time).to_numpy() if "SubmitTime" in raw.columns else "",
    })
    if df["listener"].eq("").any():
        raise HearsayError(f"MTurk CSV {csv_path} has rows without a WorkerId")
    if has_ident and _text(raw["Answer.heard-word"]).ne("").any():
        task = "identification"
        answers = _text(raw["Answer.heard-word"]).str.lower()
        df["answer"] = answers.map(lambda a: "none" if a in NONE_ANSWERS else a).to_numpy()
        df["correct"] = (df["answer"] == df["word"]).astype(object)
        df["rating"] = np.nan
    else:
        task = "rating"
        df["answer"] = ""
        df["correct"] = None
        df["rating"] = _text(raw["Answer.audio-naturalness.label"]).map(_rating_value).to_numpy()
    words = sorted(set(manifest["word"].str.lower()))
    counts = df.groupby("stimulus").size()
    info = {"slug": csv_path.stem, "task": task, "words": words,
            "ratings_per_stimulus": int(counts.median()) if not counts.empty else 0}
    return normalize(df), info


@dataclass(frozen=True)
class Exclusion:
    """Which listeners to drop before analysis, and why (for the report's exclusion table)."""

    rule: str = "gold"
    min_gold_accuracy: float = 0.5
    include_machines: bool = False


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
    rows = [_count_row("before exclusions", df, len(set(df["listener"])))]
    dropped: set[str] = set()
    for reason, listeners in reasons.items():
        part = df[df["listener"].isin(listeners)]
        rows.append({"step": reason, "listeners": len(listeners), "answers": len(part),
                     "test_answers": int((part["stimulus_kind"] == "test").sum())})
        dropped |= listeners
    kept = df[~df["listener"].isin(dropped)]
    rows.append(_count_row("after exclusions", kept, len(set(kept["listener"]))))
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
    scored = df.assign(_c=df["correct"].map(lambda v: np.nan if v is None else float(v)).astype(float))
    gold = scored[scored["stimulus_kind"] == "gold"].groupby("listener")["_c"].agg(["sum", "count"])
    trap = scored[scored["stimulus_kind"] == "trap"].groupby("listener")["_c"].agg(["sum", "count"])
    base = df.groupby("listener").agg(listener_kind=("listener_kind", "first"),
                                      listener_source=("listener_source", "first"),
                                      answers=("stimulus", "size"),
                                      test_answers=("stimulus_kind", lambda s: int((s == "test").sum())),
                                      analyse_ok=("analyse_ok", "first"),
                                      analyse_reasons=("analyse_reasons", "first"))
    base["gold_answers"] = gold["count"].reindex(base.index).fillna(0).astype(int)
    base["gold_correct"] = gold["sum"].reindex(base.index).fillna(0).astype(int)
    with np.errstate(invalid="ignore", divide="ignore"):
        base["gold_accuracy"] = base["gold_correct"] / base["gold_answers"].where(base["gold_answers"] > 0)
    base["trap_answers"] = trap["count"].reindex(base.index).fillna(0).astype(int)
    base["trap_failed"] = (trap["count"] - trap["sum"]).reindex(base.index).fillna(0).astype(int)
    return base.reset_index()
