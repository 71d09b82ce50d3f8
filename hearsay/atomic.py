"""Writing files so that an interruption never leaves half of one: write beside the target, then rename.

Readers (a resumed run, the survey, a user) therefore see either the old file or the
complete new one. The finished file gets the usual permissions (mkstemp makes 0600).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it becomes `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_with(path: str | Path, write: Callable[[IO[Any]], Any], binary: bool = True) -> None:
    """Call `write` with an open temporary file (text mode: UTF-8, newlines untranslated, as csv wants)."""
    with replacing(path) as tmp:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline="") as fh:
            write(fh)


def write_bytes(path: str | Path, data: bytes) -> None:
    write_with(path, lambda fh: fh.write(data))


def write_text(path: str | Path, text: str) -> None:
    write_with(path, lambda fh: fh.write(text), binary=False)


def nearest_existing(path: Path) -> Path:
    """`path` itself when it exists, else its nearest ancestor that does: where creating it would start (and fail,
    when that is a file or cannot be written)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
