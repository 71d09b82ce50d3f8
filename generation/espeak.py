"""Offline word synthesis through libespeak-ng (shipped by the espeakng-loader wheel), via ctypes.

libespeak-ng keeps global state: one voice, one parameter set, and wave-generator
state (pitch-flutter phase, resonator memory, noise generator) that carries over
from one utterance to the next, so the same word and voice give different samples
depending on what was said before. To make every clip depend only on its own
(word, voice, seed), the library lives in a small worker process that initialises
it once and forks a fresh copy of that pristine state for every utterance. The
worker also keeps the C library's globals out of the caller's process; it imports
nothing but the standard library (numpy and scipy are imported where the client
needs them), which keeps each fork cheap.
"""
from __future__ import annotations

import atexit
import ctypes
import json
import os
import signal
import struct
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hearsay.errors import HearsayError

if TYPE_CHECKING:
    import numpy as np

SAMPLE_RATE = 16_000

# espeak-ng/speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7

# English voices in espeak-ng-data/lang/gmw (en-Shaw is a Shavian-script voice, not an accent).
LANGUAGES = ("en", "en-us", "en-us-nyc", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
# Variants from espeak-ng-data/voices/!v that sound like a person; whisper, croak and the
# robot voices are left out because they make words unvoiced or unintelligible, and zac
# because its 1.45x formant scaling is a cartoon voice no other variant resembles.
VARIANTS = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "Alex", "Andy", "Annie", "adam", "anika", "aunty", "benjamin",
    "david", "ed", "edward", "linda", "max", "paul", "quincy", "rob", "robert", "steph",
    "travis", "victor",
)
_FRAME = struct.Struct("<iI")  # status (0 ok, 1 error), payload length


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: accent, voice variant, and espeak's pitch/range (0-100) and rate (words/min)."""

    language: str = "en-us"
    variant: str = ""
    pitch: int = 50
    pitch_range: int = 50
    rate: int = 175

    @property
    def name(self) -> str:
        return f"{self.language}+{self.variant}" if self.variant else self.language

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if self.language not in LANGUAGES:
            raise HearsayError(f"unknown espeak voice {self.language!r}; choose one of {', '.join(LANGUAGES)}")
        if self.variant not in VARIANTS:
            raise HearsayError(f"unknown espeak variant {self.variant!r}; choose one of {', '.join(v for v in VARIANTS if v)}")
        for label, value, low, high in (("pitch", self.pitch, 0, 100), ("pitch range", self.pitch_range, 0, 100), ("rate", self.rate, 80, 450)):
            if not low <= value <= high:
                raise HearsayError(f"espeak {label} {value} is outside {low}-{high}")


# ---------------------------------------------------------------- worker process side

def _send(fd: int, status: int, payload: bytes) -> None:
    data = _FRAME.pack(status, len(payload)) + payload
    while data:
        data = data[os.write(fd, data):]


def _load_library():
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    data = espeakng_loader.get_data_path()
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    lib.espeak_Info.restype = ctypes.c_char_p
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), _INITIALIZE_DONT_EXIT)
    if rate <= 0:
        raise RuntimeError(f"espeak_Initialize failed with data at {data}")
    return lib, rate


def _speak(lib, request: dict) -> tuple[int, bytes]:
    """Runs in a forked child: synthesize one utterance from the pristine post-initialisation state."""
    chunks: list[bytes] = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def collect(wav, numsamples, _events):
        if wav and numsamples > 0:
            chunks.append(ctypes.string_at(wav, 2 * numsamples))
        return 0

    callback = callback_type(collect)
    lib.espeak_SetSynthCallback.argtypes = [callback_type]
    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(request["voice"].encode()) != _EE_OK:
        return 1, f"libespeak-ng has no voice {request['voice']!r}".encode()
    for param, value in ((_RATE, request["rate"]), (_PITCH, request["pitch"]), (_RANGE, request["range"]), (_VOLUME, 100), (_WORDGAP, 0)):
        lib.espeak_SetParameter(param, value, 0)
    lib.espeak_ng_SetRandSeed(request["seed"])
    text = request["text"].encode("utf-8") + b"\0"
    status = lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if status != _EE_OK:
        return 1, f"libespeak-ng failed to synthesize {request['text']!r} (error {status})".encode()
    return 0, b"".join(chunks)


def _serve() -> None:
    """Worker main loop: one JSON request per stdin line, one frame per reply on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the client's to handle; we exit when stdin closes
    out = sys.stdout.fileno()
    try:
        lib, rate = _load_library()
    except Exception as exc:  # any loading failure is reported to the client as one line
        _send(out, 1, f"libespeak-ng is not usable (is the espeakng-loader wheel installed?): {exc}".encode())
        return
    _send(out, 0, json.dumps({"version": lib.espeak_Info(None).decode(), "rate": rate}).encode())
    for line in sys.stdin.buffer:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                _send(out, *_speak(lib, request))
            finally:
                os._exit(0)
        _, code = os.waitpid(pid, 0)
        if code != 0:
            _send(out, 1, f"libespeak-ng crashed synthesizing {request['text']!r}".encode())


# ---------------------------------------------------------------- client side

class Synthesizer:
    """One espeak worker process. Not thread-safe by itself; use one per thread for parallel synthesis."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from generation.espeak import _serve; _serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=root,
        )
        hello = json.loads(self._receive())
        self.version: str = hello["version"]
        self.native_rate: int = hello["rate"]

    def _receive(self) -> bytes:
        header = self._proc.stdout.read(_FRAME.size)
        if len(header) < _FRAME.size:
            self.close()
            raise HearsayError("the espeak worker process exited unexpectedly")
        status, length = _FRAME.unpack(header)
        payload = self._proc.stdout.read(length)
        if status != 0:
            message = payload.decode("utf-8", "replace")
            if self._proc.poll() is not None:
                self.close()
            raise HearsayError(message)
        return payload

    def synthesize_native(self, word: str, voice: Voice, seed: int = 0) -> np.ndarray:
        """int16 samples at the library's native rate (22,050 Hz), exactly as espeak produced them."""
        import numpy as np

        voice.validate()
        text = word.strip()
        if not text:
            raise HearsayError("cannot synthesize an empty word")
        if self._proc.poll() is not None:
            raise HearsayError("the espeak worker process is not running")
        request = {"text": text, "voice": voice.name, "pitch": voice.pitch, "range": voice.pitch_range, "rate": voice.rate, "seed": int(seed)}
        try:
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            self.close()
            raise HearsayError("the espeak worker process exited unexpectedly") from None
        return np.frombuffer(self._receive(), dtype="<i2").copy()

    def synthesize(self, word: str, voice: Voice, seed: int = 0) -> np.ndarray:
        """The word spoken by `voice`: float32 in [-1, 1] at 16 kHz (polyphase resampling 22,050 -> 16,000)."""
        import numpy as np
        from scipy.signal import resample_poly

        native = self.synthesize_native(word, voice, seed).astype(np.float32) / 32768.0
        if self.native_rate == SAMPLE_RATE:
            return native
        g = np.gcd(SAMPLE_RATE, self.native_rate)
        return resample_poly(native, SAMPLE_RATE // g, self.native_rate // g).astype(np.float32)

    def close(self) -> None:
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass  # the worker is already gone; nothing left to tell it
        self._proc.wait()
        self._proc.stdout.close()

    def __enter__(self) -> "Synthesizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_shared: Synthesizer | None = None
_shared_lock = threading.Lock()


def _default() -> Synthesizer:
    global _shared
    if _shared is None or _shared._proc.poll() is not None:
        _shared = Synthesizer()
        atexit.register(_shared.close)
    return _shared


def synthesize(word: str, voice: Voice, seed: int = 0) -> np.ndarray:
    """The word spoken by `voice` as float32 at 16 kHz; depends only on (word, voice, seed)."""
    with _shared_lock:
        return _default().synthesize(word, voice, seed)


def version() -> str:
    """The libespeak-ng version string, recorded in every corpus made with it."""
    with _shared_lock:
        return _default().version
