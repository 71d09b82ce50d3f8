"""Benchmark manage.py analyze: 1,000,000 synthetic answers through every table, figure and model.

Synthesizes a clustered listening test in memory (35 words, the paper's four conditions
with before/after stages plus originals, ~2000 listeners with their own skill and clips
with their own difficulty). Every answer carries both a word and a rating, so one run
exercises the identification and the rating stages. Prints wall time per stage (normalize =
checking and typing the long table; write = tables, figures and the page, with tables and
figures also apart), total, the issue's target, and peak resident memory, plus the mixed
model's Laplace fit beside statsmodels' variational Bayes on a small subsample.

    .venv/bin/python bench/analyze.py [--answers 1000000] [--listeners 2000] [--pdf] [--keep DIR]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis import report, stats  # noqa: E402
from analysis.table import COLUMNS, Exclusion  # noqa: E402

WORDS = ["backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go", "happy",
         "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila", "six",
         "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero"]
CELLS = [("1-classifier-noise", "classifier", "noise", "after", -1.2),
         ("2-classifier-test", "classifier", "test", "before", 1.2),
         ("2-classifier-test", "classifier", "test", "after", 0.8),
         ("3-decoder-noise", "decoder", "noise", "after", -0.4),
         ("4-decoder-test", "decoder", "test", "before", 1.0),
         ("4-decoder-test", "decoder", "test", "after", 0.5),
         ("original", "natural", "none", "original", 2.5)]


def synthesize(n_answers: int, n_listeners: int, clips_per_cell: int, seed: int) -> pd.DataFrame:
    """A clustered long table: logit(right) = condition + listener skill + clip difficulty."""
    rng = np.random.default_rng(seed)
    stim = []
    for w in WORDS:
        for rep in range(clips_per_cell):
            for cond, method, init, stage, base in CELLS:
                pair = f"{w}-{rep}-{'decoder' if method == 'natural' else method}" if init != "noise" else ""
                stim.append((f"s{len(stim):05d}", pair, method, init, stage, cond, w, base))
    stim = pd.DataFrame(stim, columns=["stimulus", "pair_id", "method", "init", "stage", "condition", "word", "base"])
    gold = pd.DataFrame([(f"g-{w}", "", "natural", "none", "original", "gold", w, 3.0) for w in WORDS[:10]],
                        columns=stim.columns)
    n_test = len(stim)
    per_listener = int(np.ceil(n_answers / n_listeners))
    if per_listener > n_test + len(gold):
        raise SystemExit(f"{per_listener} answers per listener exceed the {n_test + len(gold)} clips")
    all_stim = pd.concat([stim, gold], ignore_index=True)
    n_gold = min(4, len(gold))
    picks = np.empty((n_listeners, per_listener), dtype=np.int64)
    for i in range(n_listeners):
        picks[i, :n_gold] = n_test + rng.choice(len(gold), n_gold, replace=False)
        picks[i, n_gold:] = rng.choice(n_test, per_listener - n_gold, replace=False)
    listener = np.repeat(np.arange(n_listeners), per_listener)[:n_answers]
    idx = picks.ravel()[:n_answers]
    s = all_stim.iloc[idx].reset_index(drop=True)
    skill = rng.normal(0, 0.6, n_listeners)[listener]
    difficulty = rng.normal(0, 0.7, len(all_stim))[idx]
    eta = s["base"].to_numpy() + skill + difficulty
    right = rng.random(n_answers) < 1 / (1 + np.exp(-eta))
    word_idx = pd.Index(WORDS).get_indexer(s["word"])
    wrong = (word_idx + rng.integers(1, len(WORDS) + 1, n_answers)) % (len(WORDS) + 1)
    options = np.array(WORDS + ["none"], dtype=object)
    answer = np.where(right, s["word"].to_numpy(dtype=object), options[wrong])
    rating = np.clip(np.round(2 + 0.8 * eta + rng.normal(0, 0.9, n_answers)), 0, 4)
    machine = listener >= n_listeners - 5
    names = np.array([f"L{i:05d}" for i in range(n_listeners)], dtype=object)
    table = pd.DataFrame({
        "listener": names[listener], "listener_kind": np.where(machine, "machine", "human"),
        "listener_source": np.where(machine, "machine", "web"), "stimulus": s["stimulus"],
        "stimulus_kind": np.where(s["condition"] == "gold", "gold", "test"), "pair_id": s["pair_id"],
        "method": s["method"], "init": s["init"], "stage": s["stage"], "condition": s["condition"], "word": s["word"],
        "answer": answer, "correct": answer == s["word"].to_numpy(dtype=object), "rating": rating,
        "play_count": 1, "listened_to_end": True, "response_ms": rng.gamma(4, 400, n_answers),
        "pay_ok": True, "analyse_ok": True, "analyse_reasons": "", "answered_at": "2026-01-01T00:00:00+00:00",
    })
    return table[list(COLUMNS)]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def estimator_check(table: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """The mixed model on a small subsample: our sparse Laplace fit beside statsmodels' variational Bayes."""
    sub = table[(table.stimulus_kind == "test") & (table.stage == "after") & (table.listener_kind == "human")]
    sub = sub[sub["listener"].isin(sorted(sub["listener"].unique())[:50])]
    sub = sub.sample(n=min(n, len(sub)), random_state=seed)
    X = pd.DataFrame({"decoder": sub["method"].eq("decoder"), "test_start": sub["init"].eq("test")})
    y = sub["correct"].astype(float).to_numpy()
    rows = []
    for name, fit in (("Laplace (report)", lambda: stats.mixed_logistic_laplace(y, X, sub["listener"], sub["stimulus"])),
                      ("statsmodels fit_vb", lambda: stats.bayes_mixed_logistic(y, X, sub["listener"], sub["stimulus"], seed=seed))):
        start = time.perf_counter()
        result, _ = fit()
        seconds = time.perf_counter() - start
        for r in result.itertuples():
            rows.append({"estimator": name, "term": r.term, "estimate": r.posterior_mean, "sd": r.posterior_sd,
                         "seconds": seconds})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=1_000_000)
    parser.add_argument("--listeners", type=int, default=2000)
    parser.add_argument("--clips-per-cell", type=int, default=3, help="clips per word and condition/stage")
    parser.add_argument("--mixed-max-answers", type=int, default=None, help="subsample the mixed model (default: all)")
    parser.add_argument("--check-answers", type=int, default=2000,
                        help="answers of 50 listeners for the mixed-model estimator check; 0 skips it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="write the report here instead of a deleted temp folder")
    parser.add_argument("--pdf", action="store_true", help="also write every figure as a PDF (analyze --pdf)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    table = synthesize(args.answers, args.listeners, args.clips_per_cell, args.seed)
    t_synth = time.perf_counter() - t0
    print(f"synthesized {len(table):,} answers, {table['listener'].nunique():,} listeners, "
          f"{table['stimulus'].nunique():,} clips in {t_synth:.1f} s (not counted below)", flush=True)
    options = report.ReportOptions(exclusion=Exclusion("gold", 0.5, include_machines=True), seed=args.seed,
                                   bayes_max_answers=args.mixed_max_answers)
    info = {"slug": "bench", "task": "identification", "words": WORDS, "ratings_per_stimulus": 0}
    t1 = time.perf_counter()
    result = report.analyse(table, info, options, draw_ahead=True)  # as manage.py analyze does
    workdir = Path(tempfile.mkdtemp(prefix="hearsay-bench-"))
    out = args.keep or workdir / "report"
    try:
        report.write_report(result, out, {"synthetic": f"seed={args.seed} answers={args.answers}"}, pdf=args.pdf)
        total = time.perf_counter() - t1
        n_figs = len(list((out / "figures").glob("*.png")))
        n_tables = len(list((out / "tables").glob("*.csv")))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'stage':<18}{'seconds':>10}{'ms per 1k answers':>20}")
    for stage, seconds in result.timings.items():
        indent = "  " if stage in ("tables", "figures") else ""  # parts of write
        print(f"{indent + stage:<18}{seconds:>10.2f}{1000 * seconds / (len(table) / 1000):>20.2f}")
    print(f"{'total':<18}{total:>10.2f}{1000 * total / (len(table) / 1000):>20.2f}")
    print(f"\n{n_tables} tables, {n_figs} figures (PNG{' + PDF' if args.pdf else '; PDFs only with --pdf'})")
    for note in result.notes:
        print(f"note: {note}")
    peak = peak_rss_mib()
    target = 20.0 if len(table) >= 1_000_000 else 5.0 if len(table) <= 100_000 else float("nan")
    memory = "; target < 2,048 MiB (issue 14.5)" if len(table) >= 1_000_000 else ""
    print(f"peak resident memory: {peak:,.0f} MiB (ru_maxrss, whole process incl. synthesis){memory}")
    if target == target:
        print(f"target for {len(table):,} answers: < {target:g} s (issue 14.5); measured {total:.1f} s = "
              f"{total / target:.2f}x the target on this machine, now (load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs)")
    if args.check_answers:
        check = estimator_check(table, args.check_answers, args.seed)
        print(f"\nmixed model on {args.check_answers:,} answers of 50 listeners, both estimators:")
        print(check.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
