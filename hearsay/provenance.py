"""Provenance helpers shared by every long job and report: library versions and file checksums.

Versions are read from package metadata, so recording them imports neither torch nor Django.
"""
from __future__ import annotations

import hashlib
import platform
from collections.abc import Iterable
from pathlib import Path

DEFAULT_LIBRARIES = ("torch", "torchaudio", "numpy", "librosa", "django")


def library_versions(names: Iterable[str] = DEFAULT_LIBRARIES) -> dict[str, str]:
    """Python's version and each named distribution's ("not installed" when absent)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
