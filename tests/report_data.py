"""A small but complete listening experiment as a long answer table, for the report's tests.

All six cells of the paper's design plus the originals, answered by people and by
machine listeners; accuracy (or rating) falls with each cell's p. No Django here.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.table import COLUMNS

WORDS = ["yes", "no", "up", "down"]
CELLS = [("1-classifier-noise", "classifier", "noise", "after", 0.25),
         ("2-classifier-test", "classifier", "test", "before", 0.8),
         ("2-classifier-test", "classifier", "test", "after", 0.7),
         ("3-decoder-noise", "decoder", "noise", "after", 0.45),
         ("4-decoder-test", "decoder", "test", "before", 0.75),
         ("4-decoder-test", "decoder", "test", "after", 0.6),
         ("original", "natural", "none", "original", 0.95)]


def stimuli():
    out = []
    for w in WORDS:
        for cond, method, init, stage, p in CELLS:
            pair = f"{w}-{'decoder' if method == 'natural' else method}" if init != "noise" else ""
            out.append(dict(stimulus=f"s{len(out):03d}", stimulus_kind="test", pair_id=pair, method=method, init=init,
                            stage=stage, condition=cond, word=w, p=p))
    out.append(dict(stimulus="gold", stimulus_kind="gold", pair_id="", method="natural", init="none",
                    stage="original", condition="", word="yes", p=0.95))
    out.append(dict(stimulus="practice", stimulus_kind="practice", pair_id="", method="natural", init="none",
                    stage="original", condition="", word="no", p=0.5))
    return out


MACHINES = ["machine:evaluator:0123456789ab", "machine:asr:pocketsphinx"]


def small_table(task="identification", listeners=8, machines=1, seed=0, machine_names=None) -> pd.DataFrame:
    """Every listener answers every clip; accuracy/rating falls with the condition's p.

    People are L0..L<listeners-1>; machines are L<listeners>.. unless machine_names names them.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for li in range(listeners + machines):
        kind = "machine" if li >= listeners else "human"
        name = machine_names[li - listeners] if machine_names and kind == "machine" else f"L{li}"
        for s in stimuli():
            right = rng.random() < s["p"]
            if task == "identification":
                ans = s["word"] if right else str(rng.choice([w for w in WORDS if w != s["word"]] + ["none"]))
                correct, rating = ans == s["word"], np.nan
            else:
                ans, correct = "", None
                rating = float(np.clip(np.round(4 * s["p"] + rng.normal(0, 0.8)), 0, 4))
            rows.append(dict(listener=name, listener_kind=kind, listener_source="machine" if kind == "machine" else "web",
                             **{k: v for k, v in s.items() if k != "p"}, answer=ans, correct=correct, rating=rating,
                             play_count=1, listened_to_end=True, response_ms=1200.0, pay_ok=True, analyse_ok=True,
                             analyse_reasons="", answered_at="2026-01-01T00:00:00+00:00"))
    return pd.DataFrame(rows, columns=COLUMNS)


