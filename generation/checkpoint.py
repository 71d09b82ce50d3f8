"""One file per trained model: weights plus everything needed to use it correctly.

A checkpoint carries its FeatureConfig, class list, architecture, training
configuration, held-out metrics and a fingerprint of the data, so loading needs
nothing else and mismatched models are refused before they produce nonsense.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import nets
from hearsay import atomic
from hearsay.errors import HearsayError, with_article
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
    _check_fields(path, raw)
    if kind is not None and raw["kind"] != kind:
        raise HearsayError(f"{path} holds {with_article(raw['kind'])}, but {with_article(kind)} is needed here")
    cfg = _feature_config(path, raw["feature_config"])
    try:
        model = build(raw["kind"], raw["arch"], dict(raw["arch_kwargs"]))
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as exc:
        raise HearsayError(f"{path}: cannot build architecture {raw['arch']!r} from its recorded settings ({_first_line(exc)}); "
                           "the file is damaged or was edited") from None
    try:
        model.load_state_dict(raw["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise HearsayError(f"{path}: weights do not fit architecture {raw['arch']!r} ({_first_line(exc)})") from None
    model.to(device).eval()
    _check_consistent(path, raw, model, cfg, device)
    return Checkpoint(
        kind=raw["kind"],
        arch=raw["arch"],
        arch_kwargs=dict(raw["arch_kwargs"]),
        model=model,
        feature_config=cfg,
        classes=list(raw["classes"]),
        train_config=dict(raw.get("train_config") or {}),
        metrics=dict(raw.get("metrics") or {}),
        data_fingerprint=raw.get("data_fingerprint", ""),
        versions=dict(raw.get("versions", {})),
        sha256=file_sha256(path),
        path=str(path),
    )


_FIELDS = {"kind": str, "arch": str, "arch_kwargs": dict, "state_dict": dict, "feature_config": dict, "classes": list}


def _check_fields(path: Path, raw: dict) -> None:
    """Every field `load` reads is there with the right type (a truncated dict or a hand edit is one line, not a KeyError)."""
    for key, typ in _FIELDS.items():
        if not isinstance(raw.get(key), typ):
            what = "lacks" if key not in raw else "has a malformed"
            raise HearsayError(f"{path} {what} {key!r} ({typ.__name__} expected): the file is damaged or was edited")
    classes = raw["classes"]
    if not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise HearsayError(f"{path} has a malformed class list (words must be distinct, non-empty names): the file is damaged or was edited")
    for key in ("train_config", "metrics"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise HearsayError(f"{path} has a malformed {key!r} (dict expected): the file is damaged or was edited")


def _feature_config(path: Path, data: dict) -> FeatureConfig:
    """The recorded FeatureConfig, refused in one line when its values could not describe any features."""
    try:
        cfg = FeatureConfig.from_dict(dict(data))
    except TypeError as exc:
        raise HearsayError(f"{path} has malformed feature settings ({_first_line(exc)})") from None
    values = cfg.to_dict()
    whole = ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels", "n_frames")
    numbers = (*whole, "f_min", "f_max", "ref_level_db", "min_level_db", "amp_floor", "clip_seconds", "peak")
    if not all(isinstance(values[k], (int, float)) and not isinstance(values[k], bool) and math.isfinite(values[k]) for k in numbers):
        raise HearsayError(f"{path} has malformed feature settings (every value must be a finite number)")
    problems = [k for k in whole if values[k] != int(values[k]) or values[k] < 1]
    if cfg.win_length > cfg.n_fft:
        problems.append("win_length > n_fft")
    if not 0 <= cfg.f_min < cfg.f_max:
        problems.append("f_min/f_max")
    problems += [k for k in ("amp_floor", "clip_seconds", "peak") if values[k] <= 0]
    if cfg.min_level_db >= 0:
        problems.append("min_level_db")
    if problems:
        raise HearsayError(f"{path} has impossible feature settings ({', '.join(problems)}): the file is damaged or was edited")
    return cfg


def _check_consistent(path: Path, raw: dict, model: nn.Module, cfg: FeatureConfig, device) -> None:
    """The net fits the recorded features and words: shapes recorded in its settings, and a classifier's outputs."""
    kw = raw["arch_kwargs"]
    recorded = kw.get("feature_config")
    if isinstance(recorded, dict) and recorded != cfg.to_dict():
        raise HearsayError(f"{path}: the network was built for other features than the checkpoint records; the file is damaged or was edited")
    for key in ("shape", "input_shape"):
        if key in kw and tuple(kw[key]) != cfg.shape:
            raise HearsayError(f"{path}: the network expects {tuple(kw[key])} inputs but the features are {cfg.shape}; "
                               "the file is damaged or was edited")
    n_classes = getattr(model, "n_classes", 0)
    if raw["kind"] != "classifier" and isinstance(n_classes, int) and n_classes and n_classes != len(raw["classes"]):
        raise HearsayError(f"{path}: the network knows {n_classes} words but the checkpoint names {len(raw['classes'])}; "
                           "the file is damaged or was edited")
    if raw["kind"] in ("classifier", "autoencoder"):
        try:
            with torch.no_grad():
                y = model(torch.zeros(1, *cfg.shape, device=device))
        except RuntimeError as exc:
            raise HearsayError(f"{path}: the network does not take its own features {cfg.shape} ({_first_line(exc)}); "
                               "the file is damaged or was edited") from None
        if raw["kind"] == "classifier" and y.shape[-1] != len(raw["classes"]):
            raise HearsayError(f"{path}: the network has {y.shape[-1]} outputs but the checkpoint names {len(raw['classes'])} words; "
                               "the file is damaged or was edited")


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
