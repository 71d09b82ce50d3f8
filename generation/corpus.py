"""Speech Commands V2 layout: a reader for any copy, and a writer of the built-in espeak corpus.

ROOT/<word>/<speaker>_nohash_<n>.wav, with ROOT/validation_list.txt and
ROOT/testing_list.txt naming held-out files ("word/file.wav"); everything
else trains. Folders whose name starts with "_" (``_background_noise_``) or
"." are not words. The class list is the sorted folder names, so class
indices never depend on directory-listing order (the original's mistake).
"""
from __future__ import annotations

import hashlib
import queue
import re
import time
import unicodedata
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Iterable

import numpy as np
import soundfile as sf
from tqdm import tqdm

from hearsay import atomic
from hearsay.errors import HearsayError
from hearsay.runs import RunFolder
from generation.espeak import LANGUAGES, SAMPLE_RATE, VARIANTS, Synthesizer, Voice

SPLITS = ("train", "validation", "test")
LIST_FILES = {"validation": "validation_list.txt", "test": "testing_list.txt"}
SPEAKER_MARK = "_nohash_"


@dataclass(frozen=True)
class Utterance:
    path: Path
    word: str
    speaker: str
    split: str

    @property
    def relpath(self) -> str:
        """The "word/file.wav" form used by the split lists."""
        return f"{self.word}/{self.path.name}"


@dataclass
class Corpus:
    root: Path
    classes: list[str]
    utterances: list[Utterance]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index = {word: i for i, word in enumerate(self.classes)}

    def split(self, name: str) -> list[Utterance]:
        if name not in SPLITS:
            raise HearsayError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
        return [u for u in self.utterances if u.split == name]

    def labels(self, utterances: Iterable[Utterance]) -> list[int]:
        try:
            return [self._index[u.word] for u in utterances]
        except KeyError as exc:
            raise HearsayError(f"word {exc.args[0]!r} is not a class of the corpus at {self.root}") from None

    def speakers(self, name: str) -> set[str]:
        """Speaker ids of one split: lets callers check that held-out speakers are unseen."""
        return {u.speaker for u in self.split(name)}

    def shared_speakers_warning(self) -> str | None:
        """One line when test speakers also speak in training (lists made by file, not by speaker), else None."""
        test = self.speakers("test")
        shared = sorted(test & self.speakers("train"))
        if not shared:
            return None
        return (f"warning: {len(shared)} of the {len(test)} test speakers of {self.root} also speak in the training split "
                f"(e.g. {shared[0]!r}): the test results are not on unseen speakers")

    def fingerprint(self) -> str:
        """Identify the data a model was trained on, cheaply (sizes, not contents) but split-aware.

        Built-in corpora have equal-sized clips whatever their content, so their corpus.json
        (seed, settings, generator version) is hashed too.
        """
        digest = hashlib.sha256()
        for u in self.utterances:
            digest.update(f"{u.relpath}\t{u.path.stat().st_size}\t{u.split}\n".encode())
        manifest = self.root / MANIFEST
        if manifest.is_file():
            digest.update(manifest.read_bytes())
        return digest.hexdigest()


def speaker_of(filename: str) -> str:
    """Speaker id = the file-name prefix before "_nohash_" (the whole stem when absent)."""
    stem = filename[: -len(".wav")] if filename.lower().endswith(".wav") else filename
    return stem.split(SPEAKER_MARK, 1)[0]


def nfc(name: str) -> str:
    """One spelling per name: macOS keeps file names decomposed (NFD), lists and other systems composed (NFC)."""
    return unicodedata.normalize("NFC", name)


def _list_entry(line: str) -> str:
    """A split-list line as "word/file.wav": Windows separators, a leading "./" and the Unicode form do not count."""
    entry = nfc(line.strip().replace("\\", "/"))
    while entry.startswith("./"):
        entry = entry[2:]
    return entry


def _read_list(root: Path, split: str, known: set[str], words: set[str]) -> set[str]:
    """The entries of one split list that name files of this corpus.

    Entries of words this copy does not hold are skipped: a copy of Speech Commands V2 keeping only
    some word folders keeps the original lists. An entry in a word folder that is here must name a file
    that is here, and an entry whose word differs from a folder here only in letter case is a mistake.
    """
    path = root / LIST_FILES[split]
    if not path.is_file():
        return set()
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM (Windows editors) is not part of a name
    except (OSError, UnicodeDecodeError) as exc:
        raise HearsayError(f"cannot read {path}: {exc}") from None
    if any("\x00" in line for line in lines):
        raise HearsayError(f"cannot read {path}: it contains a NUL byte (not a text file)")
    entries = {_list_entry(line) for line in lines if line.strip()}
    folded = {word.casefold(): word for word in words}
    kept, missing = set(), []
    for entry in sorted(entries):
        word = entry.split("/", 1)[0] if "/" in entry else None
        if entry in known:
            kept.add(entry)
        elif word is None or word in words:
            missing.append(entry)
        elif word.casefold() in folded:
            raise HearsayError(f"{path} names {entry}, but the word folder is {folded[word.casefold()]!r} "
                               "(letter case differs): correct the list or rename the folder")
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise HearsayError(f"{path} names a file that does not exist in a word folder: {missing[0]}{more}")
    return kept


def read_corpus(root: str | Path) -> Corpus:
    """Read a Speech Commands V2-layout folder; any layout problem is one HearsayError line.

    Hidden files (".DS_Store", macOS "._name.wav" resource forks) are not clips.
    """
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise HearsayError(f"corpus folder {root} does not exist")
    if not root.is_dir():
        raise HearsayError(f"corpus path {root} is not a folder")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))), key=lambda p: nfc(p.name))
    if not folders:
        raise HearsayError(f"{root} is not in the Speech Commands V2 layout: no word folders (ROOT/<word>/*.wav)")
    names = Counter(nfc(f.name) for f in folders)
    twice = sorted(name for name, n in names.items() if n > 1)
    if twice:
        raise HearsayError(f"{root} holds two word folders named {twice[0]!r} (in different Unicode forms): merge them")
    found = {f: [p for p in f.iterdir() if p.is_file() and p.suffix.lower() == ".wav" and not p.name.startswith(".")] for f in folders}
    if not any(found.values()):
        raise HearsayError(f"{root} is not in the Speech Commands V2 layout: no .wav files in its word folders")
    files: dict[str, tuple[str, Path]] = {}
    for folder, wavs in found.items():
        if not wavs:
            raise HearsayError(f"word folder {folder} holds no .wav files")
        word = nfc(folder.name)
        for wav in wavs:
            files[f"{word}/{nfc(wav.name)}"] = (word, wav)
    known = set(files)
    words = set(names)
    validation = _read_list(root, "validation", known, words)
    test = _read_list(root, "test", known, words)
    both = sorted(validation & test)
    if both:
        raise HearsayError(f"{both[0]} is listed in both {LIST_FILES['validation']} and {LIST_FILES['test']}")
    utterances = []
    for rel in sorted(files):
        word, path = files[rel]
        split = "validation" if rel in validation else "test" if rel in test else "train"
        utterances.append(Utterance(path=path, word=word, speaker=speaker_of(nfc(path.name)), split=split))
    if not any(u.split == "test" for u in utterances):
        raise HearsayError(f"{root} has no test utterances: {LIST_FILES['test']} is missing or empty")
    if not any(u.split == "train" for u in utterances):
        raise HearsayError(f"{root} has no training utterances: every file is in a validation or testing list")
    return Corpus(root=root, classes=sorted(words), utterances=utterances)


# ---------------------------------------------------------------- the built-in corpus

SPEECH_COMMANDS_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward",
    "four", "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on",
    "one", "right", "seven", "sheila", "six", "stop", "three", "tree", "two", "up",
    "visual", "wow", "yes", "zero",
)
CORPUS_FORMAT = "hearsay-espeak-corpus/2"
MANIFEST = "corpus.json"
PENDING = ".make_corpus.json"  # settings of an unfinished run; replaced by corpus.json at the end
CLIP_SAMPLES = SAMPLE_RATE  # exactly 1 s
MAX_WORD_SAMPLES = 15_200  # leave room for the random offset
MAX_CLIPS = 10_000_000  # 100x Speech Commands V2; the job list and speaker draw are made in memory up front
_WORD_RE = re.compile(r"^[a-z]+(?:['-][a-z]+)*$")


@dataclass(frozen=True)
class Speaker:
    id: str
    voice: Voice
    split: str


@dataclass(frozen=True)
class CorpusSettings:
    words: tuple[str, ...] = SPEECH_COMMANDS_WORDS
    speakers: int = 60
    seed: int = 0
    noise_db: tuple[float, float] | None = (20.0, 40.0)
    takes: int = 1

    def validate(self) -> None:
        if not self.words:
            raise HearsayError("no words given: pass a comma-separated list such as yes,no,up")
        for word in self.words:
            if not _WORD_RE.match(word):
                raise HearsayError(f"cannot use {word!r} as a word: use lowercase letters (a-z), optionally joined by ' or -")
        dupes = sorted({w for w in self.words if self.words.count(w) > 1})
        if dupes:
            raise HearsayError(f"word {dupes[0]!r} is given more than once")
        if self.speakers < 3:
            raise HearsayError(f"need at least 3 speakers (one each for training, validation and test), got {self.speakers}")
        if self.takes < 1:
            raise HearsayError(f"takes per speaker must be at least 1, got {self.takes}")
        clips = len(self.words) * self.speakers * self.takes
        if clips > MAX_CLIPS:
            raise HearsayError(f"{len(self.words)} words x {self.speakers} speakers x {self.takes} takes is {clips:,} clips; "
                               f"at most {MAX_CLIPS:,} can be made")
        if self.seed < 0:
            raise HearsayError(f"the seed must be a non-negative integer, got {self.seed}")
        if self.noise_db is not None and not (0 <= self.noise_db[0] <= self.noise_db[1] <= 120):
            raise HearsayError(f"noise SNR range {self.noise_db[0]},{self.noise_db[1]} dB must satisfy 0 <= low <= high <= 120")

    def to_dict(self) -> dict:
        return {
            "words": list(self.words), "speakers": self.speakers, "seed": self.seed,
            "noise_db": list(self.noise_db) if self.noise_db is not None else None, "takes": self.takes,
        }


@dataclass
class BuildReport:
    out: Path
    written: int
    skipped: int
    seconds: float

    @property
    def clips_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def draw_speakers(count: int, seed: int) -> list[Speaker]:
    """Distinct synthetic speakers, split ~80/10/10 by speaker; a prefix of a larger draw is the same.

    Variants cycle through a shuffled list (accent, pitch, range and rate are drawn freely), and
    held-out speakers are preferably ones whose voice variant also trains under another accent,
    pitch and rate: they are unseen people from the same population, as in Speech Commands.
    """
    rng = np.random.default_rng([seed, 1])
    variants = [VARIANTS[i] for i in rng.permutation(len(VARIANTS))]
    drawn: list[tuple[str, Voice]] = []
    ids: set[str] = set()
    for i in range(count):
        language = LANGUAGES[int(rng.integers(len(LANGUAGES)))]
        voice = Voice(language, variants[i % len(variants)], int(rng.integers(25, 76)), int(rng.integers(15, 86)), int(rng.integers(130, 211)))
        sid = f"{int(rng.integers(0, 2**32)):08x}"
        while sid in ids:
            sid = f"{int(rng.integers(0, 2**32)):08x}"
        ids.add(sid)
        drawn.append((sid, voice))
    held = max(1, round(count * 0.1))
    order = [int(j) for j in np.random.default_rng([seed, 2]).permutation(count)]
    left = Counter(voice.variant for _, voice in drawn)
    chosen: list[int] = []
    for j in order:
        if len(chosen) < 2 * held and left[drawn[j][1].variant] > 1:
            chosen.append(j)
            left[drawn[j][1].variant] -= 1
    chosen += [j for j in order if j not in chosen][: 2 * held - len(chosen)]
    split_of = {j: "test" for j in chosen[:held]} | {j: "validation" for j in chosen[held:]}
    return [Speaker(sid, voice, split_of.get(i, "train")) for i, (sid, voice) in enumerate(drawn)]


def _trim(wave: np.ndarray, floor_db: float = -50.0) -> np.ndarray:
    """Cut leading/trailing silence (below `floor_db` re peak), keeping 10 ms and fading the edges."""
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak == 0.0:
        return wave[:0]
    loud = np.flatnonzero(np.abs(wave) > peak * 10 ** (floor_db / 20))
    pad = 160
    out = wave[max(0, loud[0] - pad): loud[-1] + pad + 1].copy()
    fade = min(80, len(out) // 4)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        out[:fade] *= ramp
        out[-fade:] *= ramp[::-1]
    return out


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-RMS white or pink (1/f power) noise."""
    white = rng.standard_normal(n)
    if rng.random() < 0.5:
        spectrum = np.fft.rfft(white)
        freqs = np.arange(spectrum.size, dtype=np.float64)
        freqs[0] = 1.0
        white = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    return white / np.sqrt(np.mean(white ** 2))


def render_clip(synth: Synthesizer, word: str, speaker: Speaker, settings: CorpusSettings, take: int) -> np.ndarray:
    """One 1 s, 16 kHz int16 clip; depends only on (seed, speaker, word, take), never on run order."""
    rng = np.random.default_rng([settings.seed, int(speaker.id, 16), zlib.crc32(word.encode()), take])
    voice = speaker.voice
    espeak_seed = int(rng.integers(0, 2**31))
    if take:  # further takes of a speaker vary their speaking rate a little
        voice = replace(voice, rate=int(np.clip(voice.rate * rng.uniform(0.9, 1.1), 80, 450)))
    speech = _trim(synth.synthesize(word, voice, espeak_seed))
    while len(speech) > MAX_WORD_SAMPLES and voice.rate < 450:  # too slow to fit 1 s: speak faster
        voice = replace(voice, rate=min(450, int(voice.rate * len(speech) / (0.9 * MAX_WORD_SAMPLES)) + 1))
        speech = _trim(synth.synthesize(word, voice, espeak_seed))
    if speech.size == 0:
        raise HearsayError(f"libespeak-ng produced silence for {word!r} with voice {voice.name}")
    speech = speech[:MAX_WORD_SAMPLES]
    clip = np.zeros(CLIP_SAMPLES, dtype=np.float64)
    offset = int(rng.integers(0, CLIP_SAMPLES - len(speech) + 1))
    clip[offset: offset + len(speech)] = speech / np.abs(speech).max()
    if settings.noise_db is not None:
        snr = rng.uniform(*settings.noise_db)
        speech_rms = np.sqrt(np.mean(speech.astype(np.float64) ** 2)) / np.abs(speech).max()
        clip += _noise(rng, CLIP_SAMPLES) * speech_rms * 10 ** (-snr / 20)
    clip *= 10 ** (rng.uniform(-12.0, -1.0) / 20) / np.abs(clip).max()
    return np.clip(np.round(clip * 32767), -32768, 32767).astype(np.int16)


def _write_wav(path: Path, samples: np.ndarray) -> None:
    with atomic.replacing(path) as tmp:
        sf.write(tmp, samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def _complete(path: Path) -> bool:
    try:
        info = sf.info(str(path))
    except Exception:  # soundfile raises several types for truncated files
        return False
    return info.frames == CLIP_SAMPLES and info.samplerate == SAMPLE_RATE and info.channels == 1


def _identity(settings: CorpusSettings, espeak_version: str) -> dict:
    """What must match for an existing folder to be resumed rather than refused."""
    return {"format": CORPUS_FORMAT, "settings": settings.to_dict(), "espeak_version": espeak_version}


def _open_out(out: Path, identity: dict) -> RunFolder:
    """The output folder, resumed when it holds an unfinished or finished corpus of the same identity."""
    folder = RunFolder(out, identity, what="corpus", identity_key=None, records=(MANIFEST, PENDING))
    previous = folder.previous() if out.is_dir() else None
    if previous is not None and previous.get("format") != identity["format"]:
        raise HearsayError(f"{out} holds a corpus from another make_corpus version ({previous.get('format')}); "
                           "delete it or choose another output folder")
    folder.open()
    return folder


def _hearsay_version() -> str:
    try:
        return metadata.version("hearsay")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_corpus(out: str | Path, settings: CorpusSettings = CorpusSettings(), jobs: int = 1, progress: bool = True) -> BuildReport:
    """Write the built-in espeak corpus in the Speech Commands V2 layout; resumes an interrupted run."""
    settings.validate()
    if jobs < 1:
        raise HearsayError(f"parallel jobs must be at least 1, got {jobs}")
    out = Path(out).expanduser().resolve()
    synths = [Synthesizer() for _ in range(jobs)]
    try:
        identity = _identity(settings, synths[0].version)
        folder = _open_out(out, identity)
        folder.write_record({}, name=PENDING)
        for stale in out.glob("*/.*.part"):
            stale.unlink()
        speakers = draw_speakers(settings.speakers, settings.seed)
        for word in settings.words:
            (out / word).mkdir(exist_ok=True)
        jobs_todo = [(w, s, t) for w in settings.words for s in speakers for t in range(settings.takes)]
        todo = [j for j in jobs_todo if not _complete(out / j[0] / f"{j[1].id}_nohash_{j[2]}.wav")]
        start = time.perf_counter()
        free = queue.SimpleQueue()
        for synth in synths:
            free.put(synth)

        def make(job: tuple[str, Speaker, int]) -> None:
            word, speaker, take = job
            synth = free.get()
            try:
                _write_wav(out / word / f"{speaker.id}_nohash_{take}.wav", render_clip(synth, word, speaker, settings, take))
            finally:
                free.put(synth)

        with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(jobs_todo), initial=len(jobs_todo) - len(todo), unit="clip", desc="make_corpus", disable=not progress) as bar:
            futures = [pool.submit(make, job) for job in todo]
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        seconds = time.perf_counter() - start
        for split, list_name in LIST_FILES.items():
            rel = sorted(f"{w}/{s.id}_nohash_{t}.wav" for w, s, t in jobs_todo if s.split == split)
            atomic.write_text(out / list_name, "".join(line + "\n" for line in rel))
        folder.write_record({
            "description": "Synthetic Speech Commands V2-layout corpus made offline with eSpeak NG by Hearsay's make_corpus.",
            "license": "Generated audio; eSpeak NG is GPL-3.0-or-later.",
            "hearsay_version": _hearsay_version(),
            "libraries": {"numpy": np.__version__, "soundfile": sf.__version__},
            "sample_rate": SAMPLE_RATE,
            "clip_samples": CLIP_SAMPLES,
            "speakers": [{"id": s.id, "split": s.split, "voice": s.voice.to_dict()} for s in speakers],
            "counts": {split: sum(1 for s in speakers if s.split == split) for split in SPLITS},
        }, name=MANIFEST)
        (out / PENDING).unlink(missing_ok=True)
        return BuildReport(out=out, written=len(todo), skipped=len(jobs_todo) - len(todo), seconds=seconds)
    finally:
        for synth in synths:
            synth.close()
