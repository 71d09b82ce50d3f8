"""Disk cache of log-mel features, so retraining never recomputes them.

Utterances are cached in chunks (one word folder, at most CHUNK clips each). A
chunk's key hashes the FeatureConfig fingerprint with the (relative path, size,
mtime_ns) of each of its files: a changed file or a changed config recomputes
only the chunks it touches, and an interrupted extraction keeps every chunk
already written (each is written atomically).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from hearsay import atomic
from hearsay.errors import HearsayError
from hearsay.provenance import library_versions

from .features import FeatureConfig, extract_files

CHUNK = 512
ENV_VAR = "HEARSAY_CACHE_DIR"
DTYPES = {"float16": np.float16, "float32": np.float32}


def default_cache_dir(corpus_root: str | Path) -> Path:
    """`$HEARSAY_CACHE_DIR` when set, else `<corpus>/.hearsay-cache` (ignored by the corpus reader)."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path(corpus_root) / ".hearsay-cache"


def user_cache_dir(corpus_root: str | Path) -> Path:
    """The cache of a corpus that cannot hold one (a shared, read-only copy): in the user's cache folder
    (`$XDG_CACHE_HOME`, else ~/.cache), one folder per corpus path."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "hearsay" / "features" / hashlib.sha256(str(Path(corpus_root).resolve()).encode()).hexdigest()[:16]


def _open_folder(folder: Path, cfg: FeatureConfig, dtype: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _describe(folder, cfg, dtype)


def _stat_line(utt) -> str:
    try:
        st = utt.path.stat()
    except OSError as exc:
        raise HearsayError(f"cannot read {utt.path}: {exc.strerror}") from None
    return f"{utt.word}/{utt.path.name}\t{st.st_size}\t{st.st_mtime_ns}\n"


def _chunks(utterances: Sequence) -> list[list[int]]:
    """Indices grouped by word folder, then cut to CHUNK: a changed file recomputes at most CHUNK clips."""
    by_word: dict[str, list[int]] = {}
    for i, u in enumerate(utterances):
        by_word.setdefault(u.word, []).append(i)
    return [idx[s : s + CHUNK] for _, idx in sorted(by_word.items()) for s in range(0, len(idx), CHUNK)]


def _save_npy(array: np.ndarray, path: Path) -> None:
    atomic.write_with(path, lambda fh: np.save(fh, array))


def _load_npy(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """A cached chunk, or None when absent, unreadable or of the wrong shape (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return array if array.shape == shape else None


def _describe(folder: Path, cfg: FeatureConfig, dtype: str) -> None:
    """Record what produced the cached arrays, next to them."""
    info = folder / "config.json"
    if info.is_file():
        return
    text = json.dumps({"feature_config": cfg.to_dict(), "dtype": dtype, "versions": library_versions()}, indent=2)
    atomic.write_text(info, text)


def features_for(
    utterances: Sequence,
    cfg: FeatureConfig,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    *,
    dtype: str = "float16",
    progress: bool = True,
) -> np.ndarray:
    """Features [N, n_frames, n_mels] float32 for `utterances`, computed once and then read from disk.

    float16 storage halves the disk space for values in [0, 1] (error <= 2.5e-4).
    Without `cache_dir` the cache lives in the corpus folder of the first utterance, or in the user's cache folder
    where the corpus folder cannot be written.
    """
    if dtype not in DTYPES:
        raise HearsayError(f"cache dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    out = np.zeros((len(utterances), cfg.n_frames, cfg.n_mels), dtype=np.float32)
    if not utterances:
        return out
    corpus_root = Path(utterances[0].path).parent.parent
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir(corpus_root)
    folder = root / f"{cfg.fingerprint()}-{dtype}"
    try:
        _open_folder(folder, cfg, dtype)
    except OSError as exc:
        if cache_dir is not None or os.environ.get(ENV_VAR):  # a folder the user chose: say so rather than go elsewhere
            raise HearsayError(f"cannot write the feature cache at {folder}: {exc.strerror} (set {ENV_VAR} to a writable folder)") from None
        folder = user_cache_dir(corpus_root) / folder.name  # the corpus folder is read-only: the user's own cache
        try:
            _open_folder(folder, cfg, dtype)
        except OSError as exc:
            raise HearsayError(f"cannot write the feature cache in the corpus folder nor at {folder}: {exc.strerror} "
                               f"(set {ENV_VAR} to a writable folder)") from None
    chunks = _chunks(utterances)
    bar = tqdm(total=len(utterances), desc="features", unit="clip", disable=not progress, leave=False)
    for idx in chunks:
        key = hashlib.sha256((cfg.fingerprint() + "".join(_stat_line(utterances[i]) for i in idx)).encode()).hexdigest()[:32]
        path = folder / f"{key}.npy"
        cached = _load_npy(path, (len(idx), cfg.n_frames, cfg.n_mels))
        if cached is None:
            cached = extract_files([utterances[i].path for i in idx], cfg, device=device).astype(DTYPES[dtype])
            try:
                _save_npy(cached, path)
            except OSError as exc:
                raise HearsayError(f"cannot write the feature cache at {folder}: {exc.strerror} (set {ENV_VAR} to a writable folder)") from None
        out[idx] = cached
        bar.update(len(idx))
    bar.close()
    return out
