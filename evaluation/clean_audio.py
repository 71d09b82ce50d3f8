"""Every clip a listener can fetch, stored the same way: bare PCM wav, one rate, one sample format, mono.

Why: a wav file as a researcher's tools wrote it may carry metadata chunks (LIST/INFO, id3, bext, cue)
naming its word, condition or source file, and clips made by different tools differ in sample rate and
length: natural gold words are 16 kHz and exactly 1.00 s, synthesized traps are as long as their
sentence, test clips are whatever the vocoder made. Any of these lets a listener, or a bot, tell a check
from a test clip without listening, and answer only the checks with care. So every clip of a load is
decoded, mixed to mono, resampled to the experiment's rate (that of its test clips), and written as
`RIFF` + `fmt ` + `data` with 16-bit samples; check clips are padded to lengths drawn from the test
clips' lengths, and test clips are padded only when a check clip is longer than every one of them.

Padding is quantization-level dither, not digital zeros, which a script could find as easily as a tag.
Plain module: no Django.
"""
from __future__ import annotations

import hashlib
import io
import random
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from hearsay.errors import HearsayError

SAMPLE_WIDTH = 2  # bytes: 16-bit signed PCM, which every browser plays, Safari included
FULL_SCALE = 32767
TEST = "test"


@dataclass(frozen=True)
class Source:
    """One clip to store: `key` names it in the result, `kind` is test, gold, trap, practice or anchor."""

    key: str
    kind: str
    samples: np.ndarray  # float, mono or (frames, channels)
    rate: int


class ManifestRow(Protocol):
    stimulus_id: str
    kind: str
    data: bytes


class SynthesizedClip(Protocol):
    stimulus_id: str
    kind: str
    samples: np.ndarray


def decode(data: bytes, where: str = "clip") -> tuple[np.ndarray, int]:
    """Float samples in [-1, 1], mixed to mono, and the file's sample rate."""
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise HearsayError(f"{where}: not a readable audio file ({exc})") from None
    if samples.shape[0] == 0:
        raise HearsayError(f"{where}: holds no samples")
    if not np.isfinite(samples).all():
        raise HearsayError(f"{where}: is corrupt: it holds NaN or infinite samples")
    return samples.mean(axis=1), int(rate)


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased), exact for rational ratios such as 16 000 -> 22 050."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if rate == target:
        return samples
    g = np.gcd(int(rate), int(target))
    return resample_poly(samples, target // g, rate // g)


def bare_wav(samples: np.ndarray, rate: int) -> bytes:
    """Mono 16-bit PCM wav holding exactly the `fmt ` and `data` chunks, written byte by byte."""
    pcm = np.round(np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0) * FULL_SCALE).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * SAMPLE_WIDTH, SAMPLE_WIDTH, 8 * SAMPLE_WIDTH)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    if len(pcm) % 2:
        body += b"\0"  # RIFF chunks are word-aligned (never hit with 16-bit mono, kept for correctness)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def chunk_ids(data: bytes) -> list[str]:
    """The top-level chunk ids of a RIFF/WAVE file, in order (what a curious listener's tool would list)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise HearsayError("not a RIFF/WAVE file")
    ids, offset = [], 12
    while offset + 8 <= len(data):
        cid, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        ids.append(cid.decode("latin-1"))
        offset += 8 + size + (size % 2)
    return ids


def experiment_rate(sources: Sequence[Source]) -> int:
    """The test clips' rate (the most common one; the highest on a tie), or all clips' when there are no tests."""
    pool = [s.rate for s in sources if s.kind == TEST] or [s.rate for s in sources]
    if not pool:
        raise HearsayError("no clips to store")
    counts = Counter(pool)
    return max(counts, key=lambda r: (counts[r], r))


def target_lengths(lengths: dict[str, tuple[str, int]], seed: int = 0) -> dict[str, int]:
    """Frames each clip is stored with: checks take a test clip's length (one at least as long as the check).

    `lengths` maps key -> (kind, frames at the common rate). Test clips keep their length unless some
    check clip is longer than all of them; then the shorter test clips are padded to that check's length,
    so no length belongs to checks alone. The draw depends only on `seed` and the key, so a reload is stable.
    """
    tests = sorted(n for kind, n in lengths.values() if kind == TEST)
    checks = [n for kind, n in lengths.values() if kind != TEST]
    if not tests or not checks:
        return {key: n for key, (_, n) in lengths.items()}
    floor = max(checks) if max(checks) > tests[-1] else 0
    result = {key: max(n, floor) for key, (kind, n) in lengths.items() if kind == TEST}
    test_lengths = sorted(result.values())
    for key, (kind, n) in lengths.items():
        if kind != TEST:
            longer = [t for t in test_lengths if t >= n]
            result[key] = random.Random(f"{seed}:{key}").choice(longer)
    return result


def _pad(samples: np.ndarray, frames: int, key: str, seed: int) -> np.ndarray:
    """Append `frames - len` samples of triangular dither one quantization step wide (never exact zeros)."""
    extra = frames - samples.size
    if extra <= 0:
        return samples
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little"))
    dither = (rng.random(extra) - rng.random(extra)) / FULL_SCALE
    return np.concatenate([samples, dither])


def resampled_length(frames: int, rate: int, target: int) -> int:
    """How many samples `resample` returns for `frames` input samples (scipy's resample_poly rule)."""
    g = np.gcd(int(rate), int(target))
    return -(-frames * (target // g) // (rate // g))


def conform(sources: Sequence[Source], seed: int = 0) -> dict[str, bytes]:
    """Every source as bare wav at the experiment's rate, checks as long as test clips (see module doc).

    Clips are resampled one at a time, so memory holds the encoded results, not every float copy.
    """
    keys = [s.key for s in sources]
    if len(set(keys)) != len(keys):
        raise HearsayError("two clips of one load share a key")
    if not sources:
        return {}
    rate = experiment_rate(sources)
    lengths = target_lengths({s.key: (s.kind, resampled_length(len(s.samples), s.rate, rate)) for s in sources}, seed)
    stored = {}
    for source in sources:
        samples = resample(source.samples, source.rate, rate)
        peak = float(np.max(np.abs(samples))) if samples.size else 0.0
        if peak > 1.0:  # resampling can overshoot a full-scale clip slightly: scale rather than clip
            samples = samples / peak
        stored[source.key] = bare_wav(_pad(samples, lengths[source.key], source.key, seed), rate)
    return stored


def for_load(
    rows: Iterable[ManifestRow], clips: Iterable[SynthesizedClip], anchors: Iterable[tuple[int, np.ndarray]], clip_rate: int
) -> dict[str, bytes]:
    """The stored bytes of one load_stimuli run: manifest rows and corpus gold by stimulus id, synthesized
    traps and practice words by stimulus id, rating anchors by `anchor_key(value)`.

    Rate and lengths are decided over the clips of this run; a later run that adds clips to an
    experiment decides them over its own clips (load test clips and checks together to match them all).
    """
    sources = [Source(r.stimulus_id, r.kind, *decode(r.data, r.stimulus_id)) for r in rows]
    sources += [Source(c.stimulus_id, c.kind, c.samples, clip_rate) for c in clips]
    sources += [Source(anchor_key(value), "anchor", samples, clip_rate) for value, samples in anchors]
    return conform(sources)


def longest_test_seconds(rows: Iterable[ManifestRow]) -> float | None:
    """The duration of the longest test clip among `rows` (None without test clips): what a trap should fit in."""
    durations = [sf.info(io.BytesIO(r.data)).duration for r in rows if r.kind == TEST]
    return max(durations) if durations else None


def anchor_key(value: int) -> str:
    return f"anchor:{value}"
