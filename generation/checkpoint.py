"""One file per trained model: weights plus everything needed to use it correctly.

A checkpoint carries its FeatureConfig, class list, architecture, training
configuration, held-out metrics and a fingerprint of the data, so loading needs
nothing else and mismatched models are refused before they produce nonsense.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import nets
from hearsay import atomic
from hearsay.errors import HearsayError
from hearsay.provenance import file_sha256, library_versions
from .features import FeatureConfig

FORMAT = "hearsay-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    kind: str
    arch: str
    arch_kwargs: dict[str, Any]
    model: nn.Module
    feature_config: FeatureConfig
    classes: list[str]
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    sha256: str = ""
    path: str = ""

    def class_index(self, word: str) -> int:
        try:
            return self.classes.index(word)
        except ValueError:
            raise HearsayError(f"unknown word {word!r}; {Path(self.path).name or 'the model'} knows: {', '.join(self.classes)}") from None


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """An interrupted save never leaves half a checkpoint."""
    with atomic.replacing(path) as tmp:
        torch.save(obj, tmp)


def save(path: str | Path, ckpt: Checkpoint) -> None:
    atomic_torch_save(
        {
            "format": FORMAT,
            "version": VERSION,
            "kind": ckpt.kind,
            "arch": ckpt.arch,
            "arch_kwargs": ckpt.arch_kwargs,
            "state_dict": {k: v.detach().cpu() for k, v in ckpt.model.state_dict().items()},
            "feature_config": ckpt.feature_config.to_dict(),
            "classes": list(ckpt.classes),
            "train_config": ckpt.train_config,
            "metrics": ckpt.metrics,
            "data_fingerprint": ckpt.data_fingerprint,
            "versions": ckpt.versions or library_versions(),
            "created": datetime.now(timezone.utc).isoformat(),
        },
        path,
    )


def load(path: str | Path, device: torch.device | str = "cpu", kind: str | None = None, build=nets.build) -> Checkpoint:
    """Load a checkpoint; a missing, foreign or corrupt file is a one-line HearsayError.

    `build(kind, arch, arch_kwargs)` makes the empty net: modules with their own kinds (GAN, vocoder) pass theirs.
    """
    path = Path(path)
    if path.is_dir():
        raise HearsayError(f"checkpoint {path} is a folder, not a file")
    if not path.is_file():
        raise HearsayError(f"checkpoint not found: {path}")
    raw = _read_raw(path)
    if raw.get("version") != VERSION:
        raise HearsayError(f"{path} has checkpoint format version {raw.get('version')}, this Hearsay reads {VERSION}")
    if kind is not None and raw["kind"] != kind:
        raise HearsayError(f"{path} holds {with_article(raw['kind'])}, but {with_article(kind)} is needed here")
    model = build(raw["kind"], raw["arch"], dict(raw["arch_kwargs"]))
    try:
        model.load_state_dict(raw["state_dict"])
    except RuntimeError as exc:
        raise HearsayError(f"{path}: weights do not fit architecture {raw['arch']!r} ({_first_line(exc)})") from None
    model.to(device).eval()
    return Checkpoint(
        kind=raw["kind"],
        arch=raw["arch"],
        arch_kwargs=dict(raw["arch_kwargs"]),
        model=model,
        feature_config=FeatureConfig.from_dict(dict(raw["feature_config"])),
        classes=list(raw["classes"]),
        train_config=dict(raw.get("train_config", {})),
        metrics=dict(raw.get("metrics", {})),
        data_fingerprint=raw.get("data_fingerprint", ""),
        versions=dict(raw.get("versions", {})),
        sha256=file_sha256(path),
        path=str(path),
    )


def _read_raw(path: Path) -> dict:
    """The saved dict of a Hearsay checkpoint file; one line when the file is unreadable or something else."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        detail = "not written by torch.save, or damaged" if isinstance(exc, (KeyError, EOFError)) else _first_line(exc)
        raise HearsayError(f"{path} is not a readable checkpoint ({detail})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise HearsayError(f"{path} is not a Hearsay checkpoint")
    return raw


def kind_of(path: Path) -> str | None:
    """The kind of net a file holds when it is a Hearsay checkpoint, else None (an output a rerun may replace)."""
    try:
        return _read_raw(path).get("kind")
    except HearsayError:
        return None


def with_article(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _first_line(exc: BaseException) -> str:
    """The gist of a library error for a one-line message (some carry no text at all)."""
    return (str(exc).splitlines() or [type(exc).__name__])[0][:120]


def require_compatible(*ckpts: Checkpoint) -> None:
    """Refuse models that would see different features or mean different words by the same index."""
    first = ckpts[0]
    for other in ckpts[1:]:
        if other.feature_config != first.feature_config:
            diff = [
                f"{k}: {v} vs {other.feature_config.to_dict()[k]}"
                for k, v in first.feature_config.to_dict().items()
                if other.feature_config.to_dict()[k] != v
            ]
            raise HearsayError(f"{Path(first.path).name} and {Path(other.path).name} use different features ({'; '.join(diff)})")
        if other.kind == "classifier" and first.kind == "classifier" and other.classes != first.classes:
            raise HearsayError(f"{Path(first.path).name} and {Path(other.path).name} have different class lists")
