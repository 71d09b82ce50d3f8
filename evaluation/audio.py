"""Audio delivery: wav encoding, HTTP Range responses, and the headphone-screen tones.

Responses carry nothing that could identify a clip (no file name, no ETag, no
Last-Modified) and are never cached, so the only handle a listener has is the
opaque per-listener token in the URL.
"""
from __future__ import annotations

import io
import re
from functools import lru_cache

import numpy as np
import soundfile as sf
from django.http import HttpResponse

RANGE_RE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")  # ASCII digits only (RFC 9110), not any Unicode digit
MAX_POSITION_DIGITS = 18  # a byte position longer than this lies past the end of any clip
HEADPHONE_RATE = 22_050
HEADPHONE_TRIALS = 6
HEADPHONE_PASS = 5


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """16-bit PCM wav: every browser plays it, Safari included."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """(start, end inclusive) for a single byte range, None for no/ignored header, "unsatisfiable" for 416."""
    if not header:
        return None
    match = RANGE_RE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None  # multi-range or malformed: RFC 9110 lets us send the whole file
    first, last = (_position(g) if g else None for g in match.groups())
    if first is not None:
        start = first
        end = min(last, size - 1) if last is not None else size - 1
        if start >= size or (last is not None and last < start):
            return "unsatisfiable"
    else:
        length = last
        if length == 0:
            return "unsatisfiable"
        start, end = max(0, size - length), size - 1
    return start, end


def _position(digits: str) -> int:
    """A byte position as sent; one of more than MAX_POSITION_DIGITS digits is capped (past every clip's end) instead of being
    converted, which Python refuses beyond 4,300 digits (a 500)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= MAX_POSITION_DIGITS else 10**MAX_POSITION_DIGITS


def clip_duration_ms(data: bytes) -> int:
    """How long a clip plays, from its header; 0 when the format is unknown (then only a full serving is required)."""
    try:
        info = sf.info(io.BytesIO(data))
    except (RuntimeError, sf.LibsndfileError):
        return 0
    return int(1000 * info.frames / info.samplerate) if info.samplerate else 0


def audio_response(data: bytes, range_header: str | None, content_type: str = "audio/wav") -> HttpResponse:
    """The clip in `data` (whole, or the one range asked for)."""
    return _ranged(io.BytesIO(data), len(data), parse_range(range_header, len(data)), content_type)


def file_response(handle, size: int, parsed: tuple[int, int] | None | str, content_type: str = "audio/wav") -> HttpResponse:
    """The range `parsed` (see parse_range) of an open stored file of `size` bytes: only those bytes are read."""
    return _ranged(handle, size, parsed, content_type)


def _ranged(handle, size: int, parsed: tuple[int, int] | None | str, content_type: str) -> HttpResponse:
    if parsed == "unsatisfiable":
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
    else:
        start, end = parsed or (0, size - 1)
        handle.seek(start)
        response = HttpResponse(handle.read(end - start + 1), content_type=content_type, status=200 if parsed is None else 206)
        if parsed is not None:
            response["Content-Range"] = f"bytes {start}-{end}/{size}"
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


_DURATIONS: dict[tuple[str, str, int], int] = {}
_DURATIONS_KEPT = 4096


def stored_clip_duration_ms(handle, where: str, name: str, size: int) -> int:
    """clip_duration_ms of an open stored file, read in full once per process and file.

    Keyed by storage location, name and size: stored names are never reused for other audio
    (uploads get fresh names), and the size guards against a file replaced in place.
    """
    key = (where, name, size)
    if key not in _DURATIONS:
        if len(_DURATIONS) >= _DURATIONS_KEPT:
            _DURATIONS.clear()
        handle.seek(0)
        _DURATIONS[key] = clip_duration_ms(handle.read())
    return _DURATIONS[key]


@lru_cache(maxsize=2)
def headphone_trial(quiet: int) -> bytes:
    """One trial of the antiphase headphone screen (Woods et al. 2017).

    Three 1-s 200 Hz tones 0.5 s apart; one (`quiet`, 0-2) is 6 dB softer, another
    is played in antiphase across the two channels. Over loudspeakers the
    antiphase tone cancels and sounds quietest; over headphones the true quiet one does.
    """
    rate = HEADPHONE_RATE
    t = np.arange(rate) / rate
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.1)  # 100 ms raised-linear ramps: no clicks
    tone = 0.5 * np.sin(2 * np.pi * 200 * t) * ramp
    gap = np.zeros((rate // 2, 2))
    antiphase = (quiet + 1) % 3
    parts = []
    for i in range(3):
        gain = 10 ** (-6 / 20) if i == quiet else 1.0
        left = gain * tone
        right = -left if i == antiphase else left
        parts.append(np.stack([left, right], axis=1))
        if i < 2:
            parts.append(gap)
    return wav_bytes(np.concatenate(parts), rate)
