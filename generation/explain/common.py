"""What every explanation command shares: loading a classifier and clips, the run folder, figures and CSV.

A run folder is pinned by its `identity` (everything the results depend on);
rerunning with the same identity resumes, another identity is refused, so a
folder never mixes results of different settings.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from hearsay import atomic, runs
from hearsay.errors import HearsayError
from hearsay.provenance import DEFAULT_LIBRARIES, library_versions

from .. import checkpoint
from ..checkpoint import Checkpoint
from ..corpus import Corpus, Utterance, read_corpus
from ..features import extract_files, prepare_waves, read_wave
from ..objective import save_figure, write_csv

__all__ = ["save_figure", "write_csv", "Clips", "load_classifier", "load_clips", "pick", "RunFolder", "save_npz", "load_npz"]


@dataclass
class Clips:
    """Clips with their features [N, T, M], labels, and the classifier's predictions."""

    utterances: list[Utterance]
    features: torch.Tensor
    labels: torch.Tensor
    predicted: torch.Tensor
    probs: torch.Tensor

    def __len__(self) -> int:
        return len(self.utterances)

    def waves(self, cfg, device: torch.device | str = "cpu") -> torch.Tensor:
        """Peak-normalized source waves at the feature rate [N, clip_samples] (what the features were computed from)."""
        out = []
        for u in self.utterances:
            wave, rate = read_wave(u.path)
            out.append(prepare_waves([wave], rate, cfg, device)[0])
        return torch.stack(out) if out else torch.zeros(0, cfg.clip_samples)


def load_classifier(path: str | Path, device: torch.device) -> Checkpoint:
    """The classifier to explain; one whose weights hold NaN/inf (a diverged training) would only give NaN explanations."""
    ckpt = checkpoint.load(path, device=device, kind="classifier")
    bad = [name for name, v in ckpt.model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise HearsayError(f"{path} holds non-finite (NaN/inf) weights in {bad[0]}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}: "
                           "its training diverged or the file is damaged; there is nothing to explain")
    return ckpt


def check_corpus(corpus: Corpus, ckpt: Checkpoint) -> None:
    """Every corpus word must be one of the classifier's (labels go by name); a corpus of some of its words is fine."""
    unknown = sorted(set(corpus.classes) - set(ckpt.classes))
    if unknown:
        raise HearsayError(f"the corpus at {corpus.root} has other words than {Path(ckpt.path).name} was trained on "
                           f"(not among its words: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''})")


def pick(utterances: Sequence[Utterance], n: int, seed: int, words: Sequence[str] | None = None) -> list[Utterance]:
    """Up to `n` clips, words taking turns (each word's clips in a seeded order), so every word is represented."""
    pools: dict[str, list[Utterance]] = {}
    for u in sorted(utterances, key=lambda u: u.relpath):
        if words is None or u.word in words:
            pools.setdefault(u.word, []).append(u)
    rng = np.random.default_rng(seed)
    for word in pools:
        pools[word] = [pools[word][i] for i in rng.permutation(len(pools[word]))]
    chosen: list[Utterance] = []
    depth = 0
    while len(chosen) < n and any(depth < len(p) for p in pools.values()):
        for word in sorted(pools):
            if depth < len(pools[word]) and len(chosen) < n:
                chosen.append(pools[word][depth])
        depth += 1
    return chosen


def load_clips(ckpt: Checkpoint, utterances: list[Utterance], device: torch.device, batch_size: int = 256) -> Clips:
    cfg = ckpt.feature_config
    feats = torch.from_numpy(extract_files([u.path for u in utterances], cfg, device=device, batch_size=batch_size))
    labels = torch.tensor([ckpt.classes.index(u.word) for u in utterances], dtype=torch.long)
    probs = predict(ckpt.model, feats, device, batch_size)
    return Clips(utterances, feats, labels, probs.argmax(1) if len(probs) else labels.clone(), probs)


def predict(model: torch.nn.Module, feats: torch.Tensor, device: torch.device | str, batch_size: int = 256) -> torch.Tensor:
    """Softmax [N, classes] on CPU."""
    model.eval()
    parts = []
    with torch.no_grad():
        for lo in range(0, len(feats), batch_size):
            parts.append(torch.softmax(model(feats[lo : lo + batch_size].to(device)), dim=1).cpu())
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def read_split(corpus_root: str | Path, ckpt: Checkpoint, split: str) -> tuple[Corpus, list[Utterance]]:
    corpus = read_corpus(corpus_root)
    check_corpus(corpus, ckpt)
    return corpus, corpus.split(split)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic.write_bytes(path, buf.getvalue())


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """A finished array file, or None if absent or unreadable (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError):
        return None


def write_json(path: Path, data: Any) -> None:
    atomic.write_bytes(path, (json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n").encode())


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class RunFolder:
    """An explanation run's output folder: hearsay.runs' identity check and record, the command part of the identity."""

    def __init__(self, out: str | Path, command: str, identity: dict[str, Any]):
        self.out = Path(out)
        self.command = command
        self.identity = _plain(identity)  # as it reads back from run.json, so a resumed run compares equal
        self.key = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()
        self.folder = runs.RunFolder(self.out, {"command": command, **self.identity}, what=f"{command} run")

    def open(self, paths: dict[str, str], device: torch.device, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Refuse a folder holding another run; otherwise (re)write run.json as incomplete and return the record."""
        self.folder.open()
        for stale in self.out.rglob(".*.tmp"):
            stale.unlink()
        record = {
            "command": self.command,
            "key": self.key,
            "paths": paths,
            "device": str(device),
            "versions": versions(),
            "started": datetime.now(timezone.utc).isoformat(),
            "complete": False,
            **(extra or {}),
        }
        self.folder.write_record(_plain(record))
        return record

    def finish(self, record: dict[str, Any], **outcome: Any) -> None:
        record.update(outcome, complete=True, finished=datetime.now(timezone.utc).isoformat())
        self.folder.write_record(_plain(record))


def _plain(data: Any) -> Any:
    """JSON-ready copy: numpy numbers and arrays, and paths, as JSON numbers, lists and text."""
    return json.loads(json.dumps(data, default=_jsonable))


def versions() -> dict[str, str]:
    """The checkpoint libraries' versions plus those the explanations use."""
    return library_versions((*DEFAULT_LIBRARIES, "captum", "lime", "scikit-learn", "matplotlib"))


def plt():
    """pyplot on the non-interactive backend (commands run headless), with fonts for words in any installed script."""
    from hearsay import fonts

    return fonts.pyplot()


def render(fig):
    """The figure as it looks now, as a PIL image (one animation frame)."""
    from PIL import Image

    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("P", palette=Image.ADAPTIVE)


def write_gif(path: Path, frames: list, ms_per_frame: int = 120) -> None:
    """An animated GIF (looping, the last frame held), written atomically."""
    buf = io.BytesIO()
    durations = [ms_per_frame] * (len(frames) - 1) + [ms_per_frame * 10]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    atomic.write_bytes(path, buf.getvalue())
