"""Prolific: the two URLs a study needs.

Prolific opens the survey with PROLIFIC_PID, STUDY_ID and SESSION_ID in the query (the survey
views store them on the Participant) and expects the listener back at its completion URL,
which carries the study's completion code.
"""
from __future__ import annotations

import re
from urllib.parse import urlencode, urlsplit, urlunsplit

from django.core.validators import RegexValidator

from hearsay.errors import HearsayError

COMPLETE_URL = "https://app.prolific.com/submissions/complete"
URL_PARAMETERS = ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID")
CODE_CHARACTERS = "[A-Za-z0-9_-]"  # what Prolific takes in a completion code (completion and screen-out codes alike)
MAX_CODE_LENGTH = 64
CODE_RULE = RegexValidator(f"^{CODE_CHARACTERS}*$", "Letters, digits, '_' or '-' only (Prolific's rule).")


def completion_url(code: str) -> str:
    """Where a finished Prolific listener is sent; Prolific matches the code to mark the submission complete."""
    code = (code or "").strip()
    if not re.fullmatch(f"{CODE_CHARACTERS}{{1,{MAX_CODE_LENGTH}}}", code):
        raise HearsayError(f"Prolific completion code {code!r} must be 1-{MAX_CODE_LENGTH} letters, digits, '_' or '-'")
    return f"{COMPLETE_URL}?{urlencode({'cc': code})}"


def study_url(survey_url: str) -> str:
    """The survey URL to paste into Prolific, with its placeholders that Prolific fills per participant."""
    parts = urlsplit(survey_url)
    if parts.scheme != "https" or not parts.netloc:
        raise HearsayError(f"survey URL {survey_url!r} must be an absolute https:// URL")
    placeholders = "&".join(f"{name}={{{{%{name}%}}}}" for name in URL_PARAMETERS)
    query = f"{parts.query}&{placeholders}" if parts.query else placeholders
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
