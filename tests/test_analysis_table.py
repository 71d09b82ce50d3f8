"""The long table: MTurk batch reader, manifest join, validation and exclusion rules."""
import numpy as np
import pandas as pd
import pytest

from analysis.table import COLUMNS, Exclusion, apply_exclusions, normalize, read_mturk
from hearsay.errors import HearsayError

MANIFEST = pd.DataFrame([
    {"stimulus_id": "s1", "file": "wav/3f9c1a2b7d.wav", "word": "yes", "method": "classifier", "init": "noise",
     "stage": "after", "pair_id": "", "condition": "1-classifier-noise"},
    {"stimulus_id": "s2", "file": "wav/a0b1c2d3e4.wav", "word": "no", "method": "decoder", "init": "noise",
     "stage": "after", "pair_id": "", "condition": "3-decoder-noise"},
    {"stimulus_id": "s3", "file": "wav/ffee001122.wav", "word": "up", "method": "natural", "init": "none",
     "stage": "original", "pair_id": "p1", "condition": "original"},
])


def write_batch(tmp_path, rows, manifest=MANIFEST):
    manifest_path = tmp_path / "manifest.csv"
    manifest.to_csv(manifest_path, index=False)
    csv_path = tmp_path / "Batch_123_batch_results.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    return csv_path, manifest_path


def rating_row(worker, url, label, status="Approved"):
    return {"HITId": "H", "AssignmentId": f"A-{worker}-{url}", "WorkerId": worker, "AssignmentStatus": status,
            "SubmitTime": "Sun Nov 22 04:04:22 PST 2026", "WorkTimeInSeconds": "12",
            "Input.experiment": "exp1", "Input.class_label": "yes",
            "Input.audio_url": f"https://bucket.example/{url}?sig=1", "Answer.audio-naturalness.label": label}


def test_mturk_rating_batch_joins_manifest_by_file_name(tmp_path):
    csv_path, manifest_path = write_batch(tmp_path, [
        rating_row("W1", "3f9c1a2b7d.wav", "Excellent (completely clear speech)"),
        rating_row("W1", "a0b1c2d3e4.wav", "Poor"),
        rating_row("W2", "ffee001122.wav", "Fair (equally clear and unclear)", status="Rejected"),
    ])
    table, info = read_mturk(csv_path, manifest_path)
    assert list(table.columns) == list(COLUMNS)
    # the rejected assignment (W2) is left out and counted; W1's answers stay
    assert table["stimulus"].tolist() == ["s1", "s2"]
    assert table["rating"].tolist() == [4.0, 1.0]
    assert table["listener_source"].eq("mturk").all() and table["listener_kind"].eq("human").all()
    assert table["pay_ok"].tolist() == [True, True]
    assert table["analyse_ok"].tolist() == [None, None]
    assert table["answered_at"].iloc[0] == "2026-11-22T12:04:22+00:00"  # PST is UTC-8
    assert info["task"] == "rating" and info["words"] == ["no", "up", "yes"] and info["rejected_answers"] == 1


def test_mturk_identification_batch_scores_answers(tmp_path):
    rows = [dict(rating_row("W1", "3f9c1a2b7d.wav", ""), **{"Answer.heard-word": "yes"}),
            dict(rating_row("W1", "a0b1c2d3e4.wav", ""), **{"Answer.heard-word": "can't tell"})]
    for r in rows:
        del r["Answer.audio-naturalness.label"]
    csv_path, manifest_path = write_batch(tmp_path, rows)
    table, info = read_mturk(csv_path, manifest_path)
    assert info["task"] == "identification"
    assert table["answer"].tolist() == ["yes", "none"] and table["correct"].tolist() == [True, False]
    assert table["rating"].isna().all()


def test_mturk_stimulus_id_column_takes_precedence(tmp_path):
    row = rating_row("W1", "not-in-manifest.wav", "Good")
    row["Input.stimulus_id"] = "s2"
    csv_path, manifest_path = write_batch(tmp_path, [row])
    table, _ = read_mturk(csv_path, manifest_path)
    assert table["stimulus"].tolist() == ["s2"] and table["rating"].tolist() == [3.0]


@pytest.mark.parametrize("drop, message", [("WorkerId", "lacks column"), ("Input.audio_url", "lacks column"),
                                           ("Answer.audio-naturalness.label", "no answer column")])
def test_mturk_csv_missing_column_is_one_clear_error(tmp_path, drop, message):
    row = rating_row("W1", "3f9c1a2b7d.wav", "Good")
    del row[drop]
    csv_path, manifest_path = write_batch(tmp_path, [row])
    with pytest.raises(HearsayError, match=message):
        read_mturk(csv_path, manifest_path)


def test_manifest_not_matching_csv_is_one_clear_error(tmp_path):
    csv_path, manifest_path = write_batch(tmp_path, [rating_row("W1", "deadbeef00.wav", "Good")])
    with pytest.raises(HearsayError, match="not in the manifest.*deadbeef00.wav"):
        read_mturk(csv_path, manifest_path)


def test_rows_of_unknown_audio_are_left_out_and_counted_or_refused_when_strict(tmp_path):
    csv_path, manifest_path = write_batch(tmp_path, [rating_row("W1", "3f9c1a2b7d.wav", "Good"),
                                                     rating_row("W1", "deadbeef00.wav", "Good")])
    table, info = read_mturk(csv_path, manifest_path)
    assert table["stimulus"].tolist() == ["s1"]
    assert len(info["invalid_rows"]) == 1 and "line 3" in info["invalid_rows"][0] and "deadbeef00.wav" in info["invalid_rows"][0]
    with pytest.raises(HearsayError, match="1 invalid row.*lines 3"):
        read_mturk(csv_path, manifest_path, strict=True)


def test_manifest_missing_required_column(tmp_path):
    csv_path, manifest_path = write_batch(tmp_path, [rating_row("W1", "3f9c1a2b7d.wav", "Good")],
                                          manifest=MANIFEST.drop(columns=["pair_id"]))
    with pytest.raises(HearsayError, match="manifest .* lacks required column.*pair_id"):
        read_mturk(csv_path, manifest_path)


def test_unknown_rating_label(tmp_path):
    csv_path, manifest_path = write_batch(tmp_path, [rating_row("W1", "3f9c1a2b7d.wav", "Superb")])
    with pytest.raises(HearsayError, match="line 2.*'Superb' is not one of the five ratings"):
        read_mturk(csv_path, manifest_path)


def answer(listener, stimulus, kind="test", method="classifier", init="noise", word="yes", ans="", correct=None,
           rating=np.nan, listener_kind="human", analyse_ok=True):
    return {"listener": listener, "listener_kind": listener_kind, "listener_source": "web", "stimulus": stimulus,
            "stimulus_kind": kind, "pair_id": "", "method": method, "init": init, "stage": "after",
            "condition": f"{method}-{init}", "word": word, "answer": ans, "correct": correct, "rating": rating,
            "play_count": 1, "listened_to_end": True, "response_ms": 900.0, "pay_ok": True,
            "analyse_ok": analyse_ok, "analyse_reasons": "" if analyse_ok else "too fast",
            "answered_at": "2026-01-01T00:00:00"}


def test_paper_rule_drops_whole_listener_who_rated_noise_clip_good():
    table = normalize(pd.DataFrame([
        answer("A", "s1", rating=3.0), answer("A", "s2", method="decoder", rating=4.0),
        answer("B", "s1", rating=2.0), answer("B", "s2", method="decoder", rating=4.0),
        answer("C", "s2", method="decoder", rating=4.0), answer("C", "s3", method="classifier", init="test", rating=4.0),
        answer("D", "p", kind="practice", rating=4.0),
    ]))
    kept, counts, _ = apply_exclusions(table, Exclusion("paper"))
    assert sorted(kept["listener"].unique()) == ["B", "C"]
    counts = counts.set_index("step")
    assert counts.loc["before exclusions", "listeners"] == 3  # the practice-only listener is never analysed
    assert counts.loc["paper rule: rated a classifier-noise clip Good or Excellent", "answers"] == 2
    assert counts.loc["after exclusions", "answers"] == 4
    kept_none, _, _ = apply_exclusions(table, Exclusion("none"))
    assert sorted(kept_none["listener"].unique()) == ["A", "B", "C"]


def test_trap_gold_and_verdict_rules():
    rows = [
        answer("ok", "g1", kind="gold", ans="yes", correct=True), answer("ok", "t1", kind="trap", ans="yes", correct=True),
        answer("ok", "s1", ans="yes", correct=True),
        answer("trap", "t1", kind="trap", ans="no", correct=False), answer("trap", "s1", ans="yes", correct=True),
        answer("deaf", "g1", kind="gold", ans="no", correct=False), answer("deaf", "s1", ans="no", correct=False),
        answer("flag", "s1", ans="yes", correct=True, analyse_ok=False),
        answer("bot", "s1", ans="yes", correct=True, listener_kind="machine"),
    ]
    table = normalize(pd.DataFrame(rows))
    kept, counts, qc = apply_exclusions(table, Exclusion("traps"))
    assert sorted(kept["listener"].unique()) == ["deaf", "ok"]
    kept, counts, qc = apply_exclusions(table, Exclusion("gold", min_gold_accuracy=0.5))
    assert sorted(kept["listener"].unique()) == ["ok"]
    qc = qc.set_index("listener")
    assert qc.loc["deaf", "gold_accuracy"] == 0.0 and qc.loc["deaf", "excluded"]
    assert qc.loc["trap", "exclusion_reasons"] == "failed a trap"
    kept, _, _ = apply_exclusions(table, Exclusion("gold", include_machines=True))
    assert sorted(kept["listener"].unique()) == ["bot", "ok"]


def test_everyone_excluded_is_a_clear_error():
    table = normalize(pd.DataFrame([answer("A", "s1", analyse_ok=False, ans="yes", correct=True)]))
    with pytest.raises(HearsayError, match="every listener was excluded.*--exclude none"):
        apply_exclusions(table, Exclusion("traps"))
    machines_only = normalize(pd.DataFrame([answer("bot", "s1", listener_kind="machine", ans="yes", correct=True)]))
    with pytest.raises(HearsayError, match="only machine listeners answered: add --include-machines"):
        apply_exclusions(machines_only, Exclusion("gold"))


def test_normalize_rejects_missing_columns_and_bad_values():
    with pytest.raises(HearsayError, match="lacks column.*rating"):
        normalize(pd.DataFrame([answer("A", "s1")]).drop(columns=["rating"]))
    with pytest.raises(HearsayError, match="empty"):
        normalize(pd.DataFrame(columns=COLUMNS))
    with pytest.raises(HearsayError, match="between 0"):
        normalize(pd.DataFrame([answer("A", "s1", rating=7.0)]))


def test_the_original_studys_batch_format_is_read(tmp_path):
    manifest_path = tmp_path / "manifest.csv"
    MANIFEST.to_csv(manifest_path, index=False)
    csv_path = tmp_path / "original.csv"
    csv_path.write_text(
        "HITId,AssignmentId,WorkerId,AssignmentStatus,SubmitTime,Input.experiment,Input.timestamp,Input.class_label,"
        "Input.audio_url,Input.pred_1_class,Input.pred_2_class,Answer.audio-naturalness.label\n"
        "H1,A1,W1,Approved,Tue Mar 05 10:20:30 PST 2019,exp1,1551810000,yes,https://s3.example/3f9c1a2b7d.wav,yes,no,"
        "Excellent - Completely clear speech\n"
        "H2,A2,W1,Approved,Tue Mar 05 10:21:30 PST 2019,exp1,1551810000,no,https://s3.example/a0b1c2d3e4.wav,no,no,"
        "Bad - Completely unclear speech\n"
    )
    table, info = read_mturk(csv_path, manifest_path)
    assert info["task"] == "rating" and table["rating"].tolist() == [4.0, 0.0]
    assert table["answered_at"].tolist() == ["2019-03-05T18:20:30+00:00", "2019-03-05T18:21:30+00:00"]
