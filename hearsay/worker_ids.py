"""A crowd worker's ID in its platform's canonical form: one rule for study links, the MTurk API and results files,
so the same worker is one listener whichever way their answers arrive (and however a spreadsheet or a hand edit
spaced or cased the ID). No Django here."""
from __future__ import annotations

import re
import unicodedata

from hearsay.errors import HearsayError

# The longest ID of a worker, assignment, HIT or study any platform hands us that we keep: the database's columns
# hold 128 characters (MTurk's IDs are about 30).
MAX_PLATFORM_ID_LENGTH = 128
# Platform -> (its name for messages, its case, the IDs it issues). MTurk worker IDs are upper-case letters and digits;
# Prolific IDs are lower-case hex (24 digits today). Other sources (our pages, machine listeners) keep their case.
PLATFORM_RULES = {
    "mturk": ("Mechanical Turk", str.upper, re.compile(r"[A-Z0-9]{1,64}")),
    "prolific": ("Prolific", str.lower, re.compile(r"[a-z0-9]{1,64}")),
}


class InvalidWorkerId(HearsayError):
    """Text that no platform issues as a worker ID (a NUL byte, characters outside its alphabet, too long)."""


def canonical_worker_id(raw: str, platform: str) -> str:
    """NFKC, no whitespace or invisible characters, the platform's case; InvalidWorkerId for an impossible ID."""
    if "\x00" in raw:
        raise InvalidWorkerId("the worker ID contains a NUL byte")
    text = unicodedata.normalize("NFKC", raw)
    text = "".join(ch for ch in text if not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf", "Zs", "Zl", "Zp"))
    rule = PLATFORM_RULES.get(platform)
    if rule is not None:
        label, case, pattern = rule
        text = case(text)
        if not pattern.fullmatch(text):
            raise InvalidWorkerId(f"{raw!r} is not a {label} worker ID")
    return text
