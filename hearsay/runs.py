"""The resumable run folder every long job writes into (corpus, stimuli, objective, training).

A run is known by its *identity*: the settings and input checksums that decide its result. The
identity is written into a record file (run.json) before any work; a later run into the same folder
resumes only when its identity is the same, and otherwise is refused with the keys that differ.
Finished units of work go to an append-only journal, one JSON line each, flushed to disk; a last
line cut short by an interruption is dropped, so that unit is simply redone.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hearsay import atomic
from hearsay.errors import HearsayError, with_article

RUN_RECORD = "run.json"


def identity_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ between two identities (either side may lack a key)."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Pretty, key-sorted JSON written atomically."""
    atomic.write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


class RunFolder:
    """A folder a job may be interrupted in and resumed from.

    `what` names the job's output in messages ("stimulus set"); `identity_key` is the record's key
    holding the identity (None: the identity's keys sit at the record's top level); `records` are the
    file names a previous run may have left its identity in, checked in order (the first is written).
    """

    def __init__(self, out: str | Path, identity: Mapping[str, Any], *, what: str = "run",
                 identity_key: str | None = "identity", records: Iterable[str] = (RUN_RECORD,)):
        self.out = Path(out)
        self.identity = dict(identity)
        self.what = what
        self.identity_key = identity_key
        self.records = tuple(records)

    @property
    def record_path(self) -> Path:
        return self.out / self.records[0]

    def _identity_in(self, record: Mapping[str, Any]) -> Mapping[str, Any] | None:
        if self.identity_key is None:
            return {k: record.get(k) for k in self.identity}
        found = record.get(self.identity_key)
        return found if isinstance(found, Mapping) else None

    def previous(self) -> dict[str, Any] | None:
        """The record a previous run left (None when there is none); unreadable records are refused."""
        for name in self.records:
            path = self.out / name
            if path.is_file():
                try:
                    record = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    raise HearsayError(f"{path} is unreadable; delete {self.out} or choose another output folder") from None
                if not isinstance(record, dict) or self._identity_in(record) is None:
                    raise HearsayError(f"{path} is not a record of {with_article(self.what)}; choose another output folder")
                return record
        return None

    def open(self) -> bool:
        """Check the folder and create it; True when a previous run with the same identity is resumed."""
        if self.out.exists() and not self.out.is_dir():
            raise HearsayError(f"output {self.out} exists and is not a folder")
        previous = self.previous() if self.out.is_dir() else None
        if previous is not None:
            found = self._identity_in(previous)
            if "command" in self.identity and found.get("command") != self.identity["command"]:
                other = f"the output of {found['command']}" if found.get("command") else "another command's output"
                raise HearsayError(f"{self.out} holds {other}, not {with_article(self.what)}; choose another output folder")
            differ = identity_differences(found, self.identity)
            if differ:
                raise HearsayError(
                    f"{self.out} holds {with_article(self.what)} made with other settings (differs in: {', '.join(differ)}); "
                    "choose another output folder"
                )
        elif self.out.is_dir() and any(self.out.iterdir()):
            raise HearsayError(f"{self.out} is not empty and is not {with_article(self.what)} made here; "
                               "choose a new or empty output folder")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HearsayError(f"cannot create {self.out}: {exc.strerror}") from None
        return previous is not None

    def write_record(self, fields: Mapping[str, Any], name: str | None = None) -> None:
        """The record: the identity (under identity_key, or spread at the top) plus `fields`."""
        head = dict(self.identity) if self.identity_key is None else {self.identity_key: self.identity}
        write_json(self.out / (name or self.records[0]), {**head, **fields})

    def journal(self, name: str) -> Journal:
        return Journal(self.out / name)


class Journal:
    """Append-only JSON lines of finished units: {"unit": ..., <payload>}."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]]:
        """Finished units by name; a torn last line is cut off the file (that unit is redone)."""
        done: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return done
        raw = self.path.read_bytes()
        good = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            done[entry["unit"]] = entry
            good += len(line)
        if good != len(raw):
            with open(self.path, "r+b") as fh:
                fh.truncate(good)
        return done

    def append(self, unit: str, payload: Mapping[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"unit": unit, **payload}, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
