"""One exception type for problems with what the user gave us.

Management commands turn it into a one-line CommandError; anything else is a bug. Messages name
the file, line, value or setting at fault, never a command-line flag: the same functions serve
several commands and the web.
"""


class HearsayError(Exception):
    """Bad input (path, file, checkpoint, option): reported as one line, never a traceback."""


def with_article(noun: str) -> str:
    """'a classifier', 'an explain run': nouns in messages."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"
