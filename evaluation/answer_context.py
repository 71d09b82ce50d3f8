"""Template context with the answer contract, so every page words the "none" answer and the rating scale
as hearsay.answers declares them (the same words listeners read in MTurk batch layouts)."""
from __future__ import annotations

from hearsay.answers import NONE_ANSWER, NONE_LABEL, RATING_SCALE


def answer_contract(request) -> dict:
    return {"none_label": NONE_LABEL, "none_value": NONE_ANSWER, "rating_scale": RATING_SCALE}
