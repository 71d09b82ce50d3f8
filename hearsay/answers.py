"""The answer contract: the long answer table's columns, the 5-point rating scale and the "none" answer.

Every route that produces answers (the survey, machine listeners, MTurk batch results) and every
reader (export, analysis, traps, layouts) takes these from here, so listeners on every route read
the same words and the analysis counts the same values.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from hearsay.errors import HearsayError

# One row per answer: the table evaluation.export writes and analysis.table reads.
ANSWER_COLUMNS = (
    "listener", "listener_kind", "listener_source", "stimulus", "stimulus_kind", "pair_id", "method", "init",
    "stage", "condition", "word", "answer", "correct", "rating", "play_count", "listened_to_end", "response_ms",
    "pay_ok", "analyse_ok", "analyse_reasons", "answered_at",
)
ANSWER_NUMBER_COLUMNS = ("rating", "play_count", "response_ms")
ANSWER_FLAG_COLUMNS = ("correct", "listened_to_end", "pay_ok", "analyse_ok")  # True / False / None
ANSWER_TEXT_COLUMNS = tuple(c for c in ANSWER_COLUMNS if c not in ANSWER_NUMBER_COLUMNS + ANSWER_FLAG_COLUMNS)
LISTENER_KINDS = ("human", "machine")
STIMULUS_KINDS = ("test", "gold", "trap", "practice")


@dataclass(frozen=True)
class Rating:
    """One option of the paper's rating question; `value` is what the analysis averages."""

    value: int
    label: str
    hint: str

    @property
    def text(self) -> str:
        """What a listener reads on every route, e.g. 'Excellent (completely clear speech)'."""
        return f"{self.label} ({self.hint})"


# The paper's wording (Soomro et al.), best first: "How clear and audible is the word X in this recording?"
RATING_SCALE: tuple[Rating, ...] = (
    Rating(4, "Excellent", "completely clear speech"),
    Rating(3, "Good", "mostly clear"),
    Rating(2, "Fair", "equally clear and unclear"),
    Rating(1, "Poor", "mostly unclear"),
    Rating(0, "Bad", "completely unclear"),
)
RATING_MIN, RATING_MAX = 0, 4
RATING_LABELS: tuple[str, ...] = tuple(r.label for r in sorted(RATING_SCALE, key=lambda r: r.value))  # index = value
RATING_HINTS: dict[str, str] = {r.label: r.hint for r in RATING_SCALE}

# Identification: the answer stored when a listener hears none of the words, and what the listener reads.
NONE_ANSWER = "none"
NONE_LABEL = "None of these / can't tell"
# Spellings of "none" found in results files written by hand or by other tools.
NONE_ALIASES = frozenset({NONE_ANSWER, NONE_LABEL.lower(), "none of these", "can't tell", "cant tell", "can’t tell",
                          "unknown", "?"})


def rating_by_value(value: int) -> Rating:
    for r in RATING_SCALE:
        if r.value == value:
            return r
    raise HearsayError(f"rating {value!r} is not on the scale {RATING_MIN} (Bad) to {RATING_MAX} (Excellent)")


def parse_rating(text: str) -> int:
    """A rating answer in any wording a results file carries: 'Excellent', 'Excellent (completely clear speech)',
    the original study's 'Excellent - Completely clear speech', or the value '4' (or '4.0', as a spreadsheet or a
    data frame may rewrite it)."""
    cleaned = (text or "").strip()
    if re.fullmatch(r"[0-4](?:\.0*)?", cleaned):
        return int(cleaned[0])
    head = re.match(r"[A-Za-z]+", cleaned)
    if head:
        for r in RATING_SCALE:
            if head.group(0).lower() == r.label.lower():
                return r.value
    raise HearsayError(f"{text!r} is not one of the five ratings (Excellent, Good, Fair, Poor, Bad)")


# Typographic apostrophes a word processor or spreadsheet may put in "can't tell".
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\uff07": "'"})


def is_none(text: str) -> bool:
    return (text or "").strip().lower().translate(_APOSTROPHES) in NONE_ALIASES


def parse_identification(text: str, words) -> str:
    """The experiment's word (its own spelling) or NONE_ANSWER; anything else is refused."""
    lowered = (text or "").strip().lower()
    if is_none(lowered):
        return NONE_ANSWER
    for w in words:
        if lowered == str(w).strip().lower():
            return w
    raise HearsayError(f"{text!r} is not a word of this experiment nor {NONE_LABEL!r}")
