"""Features back to audio, so listeners hear what the network saw.

The paper used a WaveNet trained on LJSpeech, which cannot be rebuilt offline.
The built-in `GriffinLimVocoder` needs no training: mel magnitudes are mapped
back to a linear spectrogram by non-negative least squares against the same
filterbank the features use, and Griffin-Lim finds a phase. Anything with the
`Vocoder` call signature (a neural vocoder, say) can replace it.
"""
from __future__ import annotations

import functools
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import soundfile as sf
import torch
import torchaudio

from hearsay import atomic
from hearsay.errors import HearsayError
from .features import PAPER, FeatureConfig, unit_to_amp


@runtime_checkable
class Vocoder(Protocol):
    """What every caller of a vocoder relies on (stimulus generation, the round trip, the benches).

    `sample_rate` of the audio; `device` it computes on; `target_rms_db` and
    `fade_ms`, the loudness and fades of its output (natural clips shown beside
    vocoded ones are finished the same way, so loudness is never a cue);
    `config()`, a JSON-able record of what produced the audio, for provenance;
    and the batch call.
    """

    sample_rate: int
    device: torch.device
    target_rms_db: float
    fade_ms: float

    def config(self) -> dict:
        """What produced the audio (name, settings, sample rate), for run records."""
        ...

    def __call__(self, features: torch.Tensor) -> np.ndarray:
        """[B, n_frames, n_mels] in [0, 1] -> float32 waves [B, samples], loudness-normalized and faded."""
        ...


class MelFilterbank:
    """The features' mel filterbank [freq, mels] as two sparse products over the bins it covers.

    Each frequency bin lies in at most two triangular bands and bins outside
    [f_min, f_max] lie in none, so spectrum -> mel and mel -> spectrum are
    sparse products (a few hundred non-zeros) over spectra laid out
    [covered bins, frames], instead of dense [frames, freq] x [freq, mels]
    products: the mel inversion costs a few memory passes per iteration rather
    than most of the vocoder's time.
    """

    def __init__(self, fb: torch.Tensor):
        covered = (fb > 0).any(dim=1).nonzero()
        self.n_freq, self.n_mels = fb.shape
        self.low, self.high = (int(covered.min()), int(covered.max()) + 1) if len(covered) else (0, 0)
        self.forward = _sparse_csr(fb[self.low : self.high].T.contiguous())  # [mels, covered bins]
        self.backward = _sparse_csr(fb[self.low : self.high].contiguous())  # [covered bins, mels]

    def to(self, device: torch.device) -> "MelFilterbank":
        self.forward, self.backward = self.forward.to(device), self.backward.to(device)
        return self

    def to_mel(self, spec: torch.Tensor) -> torch.Tensor:
        """[covered bins, R] -> [mels, R] (= fb[low:high].T @ spec)."""
        return self.forward @ spec

    def from_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """[mels, R] -> [covered bins, R] (= fb[low:high] @ mel)."""
        return self.backward @ mel

    def fit(self, spec: torch.Tensor, mel: torch.Tensor, n_iter: int, fused: bool | None = None) -> torch.Tensor:
        """n_iter multiplicative NNLS updates of spec [covered bins, R] towards mel [mels, R], in place.

        spec *= (fb @ mel) / (fb @ fb.T @ spec) keeps spec >= 0 and lowers ||fb.T @ spec - mel||^2
        monotonically. `fused` (the default on a CPU): each block of frames runs all its updates in one compiled
        loop (`_cpu_kernels`), in cache; otherwise two sparse products and two passes per update.
        """
        numer = self.from_mel(mel)
        if not (spec.device.type == "cpu" if fused is None else fused):
            for _ in range(n_iter):
                fitted = self.from_mel(self.to_mel(spec)).clamp_(min=1e-12)
                spec.mul_(numer).div_(fitted)
            return spec
        into_mel = [x.numpy() for x in (self.forward.crow_indices(), self.forward.col_indices(), self.forward.values())]
        into_bins = [x.numpy() for x in (self.backward.crow_indices(), self.backward.col_indices(), self.backward.values())]
        spec_np, numer_np = spec.numpy(), numer.numpy()
        fit = _cpu_kernels()[2]
        floor = spec_np.dtype.type(1e-12)
        _split(spec.shape[1], lambda a, b: fit(spec_np, numer_np, a, b, *into_mel, *into_bins, n_iter, floor))
        return spec


def _sparse_csr(dense: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is long-standing
        warnings.simplefilter("ignore", UserWarning)
        return dense.to_sparse_csr()


class Stft:
    """A batched STFT/iSTFT pair equal to torch.stft/istft (center=True, reflect padding, onesided).

    Both directions work in one buffer laid out like the reflect-padded signal.
    Synthesis multiplies each frame by window / (overlap-added squared window)
    at the samples it lands on (precomputed per frame count and length, 0 over
    the padding) while overlap-adding it in a few shifted multiply-adds; the
    padding is then reflected in place and analysis windows the frames straight
    out of that buffer. A Griffin-Lim iteration (`project`) is so two FFTs and,
    on a CPU, one compiled pass over each clip's frames in between, with none
    of torch.istft's per-call set-up.
    """

    def __init__(self, n_fft: int, hop_length: int, win_length: int, device: torch.device):
        self.n_fft, self.hop, self.pad = n_fft, hop_length, n_fft // 2
        window = torch.hann_window(win_length, periodic=True, device=device)
        left = (n_fft - win_length) // 2
        self.window = torch.nn.functional.pad(window, (left, n_fft - win_length - left))
        self._synthesis: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}

    def _blocks(self, n_frames: int, length: int) -> int:
        """Hop-sized blocks of the buffer: the padded signal, and every sample a frame lands on."""
        return max(n_frames - 1 + -(-self.n_fft // self.hop), -(-(length + 2 * self.pad) // self.hop))

    def _synthesis_factors(self, n_frames: int, length: int, dtype: torch.dtype) -> torch.Tensor:
        """[frames, n_fft]: window / (overlap-added squared window, clamped as torch.istft does) at each frame sample."""
        key = (n_frames, length, dtype)
        if key not in self._synthesis:
            window = self.window.to(dtype)
            squares = (window**2).expand(1, n_frames, -1).contiguous()
            envelope = self._overlap_add(squares, torch.ones_like(squares[0]),
                                         window.new_empty(1, self._blocks(n_frames, length) * self.hop))[0]
            at = torch.arange(n_frames, device=window.device)[:, None] * self.hop + torch.arange(self.n_fft, device=window.device)
            kept = (at >= self.pad) & (at < self.pad + length)
            self._synthesis[key] = torch.where(kept, window / envelope[at].clamp(min=1e-11), 0.0)
        return self._synthesis[key]

    def _overlap_add(self, frames: torch.Tensor, factors: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Sum of frames [B, T, n_fft] x factors [T, n_fft] at hop spacing, written over all of out [B, blocks * hop]."""
        batch, n, width = frames.shape
        if width % self.hop:
            added = torch.nn.functional.fold((frames * factors).transpose(1, 2), (1, (n - 1) * self.hop + width),
                                             (1, width), stride=(1, self.hop)).flatten(1)
            out.zero_()[:, : added.shape[1]] = added
            return out
        r = width // self.hop
        parts, weights, blocks = frames.view(batch, n, r, self.hop), factors.view(n, r, self.hop), out.view(batch, -1, self.hop)
        torch.mul(parts[:, :, 0], weights[:, 0], out=blocks[:, :n])
        blocks[:, n:].zero_()
        for k in range(1, r):
            blocks[:, k : k + n].addcmul_(parts[:, :, k], weights[:, k])
        return out

    def _reflect(self, padded: torch.Tensor, length: int) -> None:
        """Fill the padding on both sides of the signal [pad, pad + length) with its reflection, in place."""
        if length <= self.pad:
            raise HearsayError(f"the STFT needs more than {self.pad} samples, got {length}")
        p = self.pad
        padded[:, :p] = padded[:, p + 1 : 2 * p + 1].flip(-1)
        padded[:, p + length : 2 * p + length] = padded[:, length - 1 : p + length - 1].flip(-1)

    def _analyse(self, padded: torch.Tensor, length: int, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Reflect the padding, window every frame of the padded signal (into `frames` if given), FFT."""
        self._reflect(padded, length)
        framed = padded[:, : length + 2 * self.pad].unfold(-1, self.n_fft, self.hop)
        return torch.fft.rfft(torch.mul(framed, self.window, out=frames), dim=-1)

    def buffer(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """Scratch for `project` on spectra shaped like spec: the padded signal and every sample a frame lands on."""
        return spec.real.new_empty(spec.shape[0], self._blocks(spec.shape[1], length) * self.hop)

    def _synthesise(self, spec: torch.Tensor, length: int, padded: torch.Tensor) -> torch.Tensor:
        """iSTFT of spec [B, frames, freq] into padded[:, pad : pad + length]; returns the inverse FFT's frames."""
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=-1)
        self._overlap_add(frames, self._synthesis_factors(spec.shape[1], length, frames.dtype), padded)
        return frames

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, frames, freq] complex."""
        length = wave.shape[1]
        padded = wave.new_empty(wave.shape[0], length + 2 * self.pad)
        padded[:, self.pad : self.pad + length] = wave
        return self._analyse(padded, length)

    def inverse(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """[B, frames, freq] complex -> [B, length] (torch.istft with center=True and `length`)."""
        padded = self.buffer(spec, length)
        self._synthesise(spec, length, padded)
        return padded[:, self.pad : self.pad + length].clone()

    def project(self, spec: torch.Tensor, length: int, padded: torch.Tensor, fused: bool | None = None) -> torch.Tensor:
        """forward(inverse(spec, length)) through the buffer `padded` (from `buffer`), reusing the frames.

        `fused` (the default on a CPU): the overlap-add, reflection and windowing run as one compiled pass per
        clip (see `_cpu_kernels`), split over torch's thread count; otherwise as the tensor ops of
        `_synthesise` and `_analyse`.
        """
        if not (spec.device.type == "cpu" if fused is None else fused):
            frames = self._synthesise(spec, length, padded)
            return self._analyse(padded, length, frames)
        if length <= self.pad:
            raise HearsayError(f"the STFT needs more than {self.pad} samples, got {length}")
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=-1)
        factors = self._synthesis_factors(spec.shape[1], length, frames.dtype).numpy()
        window, frames_np, padded_np = self.window.to(frames.dtype).numpy(), frames.numpy(), padded.numpy()
        frame = _cpu_kernels()[0]
        _split(len(frames_np), lambda a, b: frame(frames_np[a:b], factors, window, padded_np[a:b], length, self.pad, self.hop))
        return torch.fft.rfft(frames, dim=-1)


def griffin_lim(magnitude: torch.Tensor, stft: Stft, n_iter: int, momentum: float, length: int,
                fused: bool | None = None) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013) from zero phase: [B, frames, freq] magnitudes -> [B, length].

    The same iteration as torchaudio.functional.griffinlim(rand_init=False,
    power=1): invert with the current phases, re-analyse, extrapolate by
    momentum / (1 + momentum) (torchaudio's parameterization), keep only the phase.
    Each step's p = rebuilt - alpha * previous becomes the next spectrum
    magnitude * p / (|p| + 1e-16), written over `previous`. `fused` (the
    default on a CPU) runs each step's passes as compiled loops (`_cpu_kernels`),
    over groups of `cpu_group` clips.
    """
    if 1 + length // stft.hop != magnitude.shape[1]:
        raise HearsayError(f"{length} samples make {1 + length // stft.hop} frames, not {magnitude.shape[1]}")
    fused = magnitude.device.type == "cpu" if fused is None else fused
    group = cpu_group(magnitude.shape[1], magnitude.shape[2], magnitude.element_size())
    if fused and len(magnitude) > group:
        return torch.cat([griffin_lim(magnitude[i : i + group], stft, n_iter, momentum, length, fused)
                          for i in range(0, len(magnitude), group)])
    alpha = momentum / (1 + momentum)
    magnitude = magnitude.detach().contiguous()  # the spectrum buffers take its layout, and the FFTs want rows contiguous
    spectrum = magnitude.to(torch.complex64 if magnitude.dtype == torch.float32 else torch.complex128)
    previous = torch.zeros_like(spectrum)  # torchaudio starts previous at 0
    padded = stft.buffer(spectrum, length)
    if fused:
        update = _cpu_kernels()[1]
        rows = magnitude.flatten(0, 1).numpy()
        alpha, eps = rows.dtype.type(alpha), rows.dtype.type(1e-16)  # in the magnitudes' precision, as torch would
        sounding = rows.any(axis=0).nonzero()[0]
        low, high = (int(sounding[0]), int(sounding[-1]) + 1) if len(sounding) else (0, 0)
        for _ in range(n_iter):
            rebuilt = stft.project(spectrum, length, padded, fused=True)
            p, r = (torch.view_as_real(x).flatten(0, 1).flatten(1).numpy() for x in (previous, rebuilt))
            _split(len(rows), lambda a, b: update(r[a:b], p[a:b], rows[a:b], alpha, eps, low, high))
            spectrum, previous = previous, rebuilt
    else:
        # On the real view in passes torch vectorizes: |p|^2 as the sum of the squared view's halves, the factor
        # interleaved twice by torch.complex (complex abs, or broadcasting a real factor over the (re, im) pairs,
        # is several times slower than an FFT).
        squares = torch.empty_like(torch.view_as_real(spectrum))
        factor, scale = torch.empty_like(magnitude), torch.empty_like(spectrum)
        for _ in range(n_iter):
            rebuilt = stft.project(spectrum, length, padded, fused=False)
            p = torch.view_as_real(previous)
            torch.sub(torch.view_as_real(rebuilt), p, alpha=alpha, out=p)
            torch.add(*torch.mul(p, p, out=squares).unbind(-1), out=factor)
            torch.div(magnitude, factor.sqrt_().add_(1e-16), out=factor)
            p.mul_(torch.view_as_real(torch.complex(factor, factor, out=scale)))
            spectrum, previous = previous, rebuilt
    stft._synthesise(spectrum, length, padded)
    return padded[:, stft.pad : stft.pad + length].clone()


def cpu_group(n_frames: int, n_freq: int, real_bytes: int) -> int:
    """Clips Griffin-Lim runs through all its iterations together on a CPU: about 1 MiB of complex spectrum
    per thread, so the spectra, frames and buffers of an iteration stay in cache (16 clips' do not: the FFTs
    alone then ran 1.5 times slower on one thread)."""
    return torch.get_num_threads() * max(1, (1 << 20) // (n_frames * n_freq * 2 * real_bytes))


def _overlap_add_and_frame(frames, factors, window, padded, length, pad, hop):  # pragma: no cover (runs compiled)
    """Per clip: overlap-add frames x factors into its row of padded (the iSTFT), reflect the padding, and
    window every frame of it back into frames (the STFT's input): one pass, in cache, instead of six.

    Inner loops index slices by the loop variable alone, so LLVM vectorizes them.
    """
    n_frames, width = factors.shape
    for b in range(frames.shape[0]):
        row = padded[b]
        row[:] = 0
        for t in range(n_frames):
            into, frame, factor = row[t * hop : t * hop + width], frames[b, t], factors[t]
            for n in range(width):
                into[n] += frame[n] * factor[n]
        for j in range(1, pad + 1):
            row[pad - j] = row[pad + j]
            row[pad + length - 1 + j] = row[pad + length - 1 - j]
        for t in range(n_frames):
            source, frame = row[t * hop : t * hop + width], frames[b, t]
            for n in range(width):
                frame[n] = source[n] * window[n]


def _update_phase(rebuilt, previous, magnitude, alpha, eps, low, high):  # pragma: no cover (runs compiled)
    """previous <- magnitude * p / (|p| + eps) with p = rebuilt - alpha * previous, over rows of (re, im) pairs.

    Bins outside [low, high) have magnitude 0 in every row (from the mel inversion: bins no band covers), so
    they are set to 0 without reading p.
    """
    for i in range(magnitude.shape[0]):
        new, old, mag = rebuilt[i, 2 * low : 2 * high], previous[i, 2 * low : 2 * high], magnitude[i, low:high]
        previous[i, : 2 * low] = 0
        previous[i, 2 * high :] = 0
        for j in range(mag.shape[0]):
            re = new[2 * j] - alpha * old[2 * j]
            im = new[2 * j + 1] - alpha * old[2 * j + 1]
            scale = mag[j] / (np.sqrt(re * re + im * im) + eps)
            old[2 * j] = re * scale
            old[2 * j + 1] = im * scale


def _fit_nnls(spec, numer, first, stop, mel_start, mel_bins, mel_weights, bin_start, bin_mels, bin_weights, n_iter,
              floor):  # pragma: no cover (runs compiled)
    """MelFilterbank.fit over columns [first, stop) of spec [bins, R] (frames), in blocks that get every update
    while they are in cache; the filterbank as CSR rows both ways (mel m = sum of its bins, bin f = sum of its
    <= 2 mels). Whole contiguous arrays come in, so the row slices are contiguous and vectorize."""
    bins = spec.shape[0]
    block = 128
    fitted = np.empty((len(mel_start) - 1, block), spec.dtype)
    total = np.empty(block, spec.dtype)
    for start in range(first, stop, block):
        width = min(block, stop - start)
        for _ in range(n_iter):
            for m in range(len(mel_start) - 1):
                into = fitted[m, :width]
                into[:] = 0
                for k in range(mel_start[m], mel_start[m + 1]):
                    source, weight = spec[mel_bins[k], start : start + width], mel_weights[k]
                    for c in range(width):
                        into[c] += weight * source[c]
            for f in range(bins):
                into = total[:width]
                into[:] = 0
                for k in range(bin_start[f], bin_start[f + 1]):
                    source, weight = fitted[bin_mels[k], :width], bin_weights[k]
                    for c in range(width):
                        into[c] += weight * source[c]
                row, goal = spec[f, start : start + width], numer[f, start : start + width]
                for c in range(width):
                    row[c] = row[c] * goal[c] / max(into[c], floor)


@functools.cache
def _cpu_kernels():
    """Griffin-Lim's per-iteration passes and the NNLS updates compiled by numba (cached on disk).

    As torch ops an iteration's passes are a dozen sweeps over spectra too large
    for the cache (the complex ones over (re, im) pairs, which torch does not
    vectorize) and cost more than its two FFTs; fused per clip they cost a
    fraction of them.
    """
    import numba

    compile_ = numba.njit(nogil=True, cache=True, error_model="numpy")
    return compile_(_overlap_add_and_frame), compile_(_update_phase), compile_(_fit_nnls)


_workers: tuple[int, ThreadPoolExecutor] | None = None
_workers_lock = threading.Lock()


def _split(count: int, run) -> None:
    """run(start, stop) over [0, count) in torch.get_num_threads() contiguous parts, one on this thread."""
    global _workers
    n = max(1, min(torch.get_num_threads(), count))
    if n == 1:
        run(0, count)
        return
    with _workers_lock:
        if _workers is None or _workers[0] != n - 1:
            if _workers is not None:
                _workers[1].shutdown(wait=False)
            _workers = (n - 1, ThreadPoolExecutor(n - 1, thread_name_prefix="griffin-lim"))
        pool = _workers[1]
    bounds = [count * k // n for k in range(n + 1)]
    futures = [pool.submit(run, a, b) for a, b in zip(bounds[1:-1], bounds[2:])]
    run(bounds[0], bounds[1])
    for future in futures:
        future.result()


class GriffinLimVocoder:
    """Inverse mel by NNLS, then Griffin-Lim (power 1: the features are magnitude mels).

    Phase starts at zero rather than at random, so the same features always give
    the same audio, alone or in any batch.
    """

    def __init__(
        self,
        cfg: FeatureConfig = PAPER,
        n_iter: int = 60,
        device: str | torch.device = "cpu",
        target_rms_db: float = -23.0,
        fade_ms: float = 10.0,
        momentum: float = 0.99,
        nnls_iter: int = 30,
        batch_size: int = 64,
    ):
        if n_iter < 1 or nnls_iter < 0 or batch_size < 1:
            raise HearsayError("vocoder iterations and batch size must be positive")
        self.cfg = cfg
        self.sample_rate = cfg.sample_rate
        self.n_iter = n_iter
        self.momentum = momentum
        self.nnls_iter = nnls_iter
        self.batch_size = batch_size
        self.target_rms_db = target_rms_db
        self.fade_ms = fade_ms
        self.device = torch.device(device)
        fb = torchaudio.functional.melscale_fbanks(
            cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate, norm="slaney", mel_scale="slaney"
        )
        self.fb = fb.to(self.device)  # [freq, mels]: mel = spec @ fb
        self.filterbank = MelFilterbank(fb).to(self.device)
        # [covered bins, mels]: the NNLS start; the pseudo-inverse is ~0 at the bins no band covers, which NNLS zeroes.
        self.fb_pinv = torch.linalg.pinv(fb)[:, self.filterbank.low : self.filterbank.high].T.contiguous().to(self.device)
        self.stft = Stft(cfg.n_fft, cfg.hop_length, cfg.win_length, self.device)

    def config(self) -> dict:
        """What produced the audio, for run records."""
        return {
            "vocoder": "griffin-lim",
            "sample_rate": self.sample_rate,
            "n_iter": self.n_iter,
            "momentum": self.momentum,
            "nnls_iter": self.nnls_iter,
            "target_rms_db": self.target_rms_db,
            "fade_ms": self.fade_ms,
            "phase_init": "zero",
        }

    def mel_to_linear(self, features: torch.Tensor) -> torch.Tensor:
        """[B, T, M] features -> [B, T, freq] non-negative magnitudes whose mel projection fits the features."""
        features = features.to(self.device, torch.float32)
        # 0 means "at or below the floor": make it true silence, or loudness normalization would amplify the floor.
        mel = unit_to_amp(features, self.cfg) * (features > 0)  # [B, T, M]
        mel = mel.flatten(0, 1).T.contiguous()  # [M, B*T]
        bank = self.filterbank
        spec = (self.fb_pinv @ mel).clamp_(min=0.0)  # [covered bins, B*T]
        bank.fit(spec, mel, self.nnls_iter)
        linear = spec.new_zeros(mel.shape[1], bank.n_freq)
        linear[:, bank.low : bank.high] = spec.T
        return linear.view(*features.shape[:2], -1)

    def linear_spectrogram(self, features: torch.Tensor) -> torch.Tensor:
        """[B, T, M] features -> [B, freq, T] (torchaudio's layout) non-negative magnitudes."""
        return self.mel_to_linear(features).transpose(1, 2)

    def __call__(self, features: torch.Tensor) -> np.ndarray:
        if features.dim() != 3 or tuple(features.shape[1:]) != self.cfg.shape:
            raise HearsayError(f"vocoder expects features [B, {self.cfg.n_frames}, {self.cfg.n_mels}], got {list(features.shape)}")
        if not torch.isfinite(features).all():
            raise HearsayError("refusing to vocode features that contain NaN or infinity")
        cfg = self.cfg
        length = (cfg.n_frames - 1) * cfg.hop_length
        out = np.zeros((features.shape[0], length), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, features.shape[0], self.batch_size):
                spec = self.mel_to_linear(features[start : start + self.batch_size])
                wave = griffin_lim(spec, self.stft, self.n_iter, self.momentum, length)
                out[start : start + len(wave)] = finish(wave, self.sample_rate, self.target_rms_db, self.fade_ms).cpu().numpy()
        return out


def finish(wave: torch.Tensor, sample_rate: int, target_rms_db: float = -23.0, fade_ms: float = 10.0, peak: float = 0.99) -> torch.Tensor:
    """Same loudness for every stimulus (RMS to target, never clipping), and fades so no clip starts with a click.

    Loudness must not be a cue to the condition in a listening test; silence stays silence.
    """
    wave = wave.to(torch.float32)
    n_fade = min(int(round(fade_ms / 1000.0 * sample_rate)), wave.shape[-1] // 2)
    if n_fade > 0:
        ramp = torch.linspace(0.0, 1.0, n_fade, device=wave.device)
        wave = wave.clone()
        wave[..., :n_fade] *= ramp
        wave[..., -n_fade:] *= ramp.flip(0)
    rms = wave.pow(2).mean(dim=-1, keepdim=True).sqrt()
    gain = torch.where(rms > 1e-6, 10.0 ** (target_rms_db / 20.0) / rms.clamp(min=1e-6), torch.ones_like(rms))
    wave = wave * gain
    top = wave.abs().amax(dim=-1, keepdim=True)
    return wave * torch.where(top > peak, peak / top.clamp(min=1e-12), torch.ones_like(top))


def write_wav(path: str | Path, wave: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM, written to a temporary file and renamed so no half-written clip is ever left."""
    path = Path(path)
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or not np.isfinite(wave).all():
        raise HearsayError(f"refusing to write {path.name}: audio must be one finite channel")
    with atomic.replacing(path) as tmp:
        sf.write(tmp, np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")


def real_time_factor(vocoder: Vocoder, features: torch.Tensor) -> float:
    """Seconds of audio produced per second of compute (above 1 is faster than real time)."""
    import time

    start = time.perf_counter()
    waves = vocoder(features)  # a numpy result: any device work has finished
    elapsed = time.perf_counter() - start
    return waves.shape[0] * waves.shape[1] / vocoder.sample_rate / max(elapsed, 1e-9)


def round_trip(classifier_ckpt: str | Path, corpus_root: str | Path, n: int | None = None, device: str | torch.device = "cpu",
               vocoder: Vocoder | None = None, seed: int = 0, progress: bool = False) -> dict:
    """Classifier A's accuracy on vocoded-then-re-extracted test utterances vs on the originals.

    If the two are close (and `agreement`, the share of unchanged predictions, is
    high), the audio carries what the network used; `n` draws a seeded random
    subset of the test split.
    """
    from tqdm import tqdm

    from . import checkpoint
    from .corpus import read_corpus
    from .features import LogMel, extract_files, prepare_waves

    ckpt = checkpoint.load(classifier_ckpt, device=device, kind="classifier")
    corpus = read_corpus(corpus_root)
    if corpus.classes != ckpt.classes:
        raise HearsayError(f"the corpus at {corpus.root} has other words than {Path(ckpt.path).name} was trained on")
    test = corpus.split("test")
    if n is not None:
        if n < 1:
            raise HearsayError("n must be at least 1")
        order = np.random.default_rng(seed).permutation(len(test))[: min(n, len(test))]
        test = [test[i] for i in sorted(order)]
    cfg = ckpt.feature_config
    vocoder = vocoder or GriffinLimVocoder(cfg, device=device)
    labels = torch.tensor(corpus.labels(test))
    feats = torch.from_numpy(extract_files([u.path for u in test], cfg, device=device, progress=progress))
    logmel = LogMel(cfg).to(device)
    hits_orig = hits_voc = same = 0
    diff = 0.0
    batch = 128
    with torch.no_grad():
        for start in tqdm(range(0, len(test), batch), desc="round trip", unit="batch", disable=not progress):
            f = feats[start : start + batch].to(device)
            y = labels[start : start + batch].to(device)
            waves = vocoder(f)
            again = logmel(prepare_waves(list(waves), vocoder.sample_rate, cfg, device))
            pred, pred_voc = ckpt.model(f).argmax(1), ckpt.model(again).argmax(1)
            hits_orig += int((pred == y).sum())
            hits_voc += int((pred_voc == y).sum())
            same += int((pred == pred_voc).sum())
            diff += float((again - f).abs().mean(dim=(1, 2)).sum())
    return {
        "n": len(test),
        "original_accuracy": hits_orig / len(test),
        "vocoded_accuracy": hits_voc / len(test),
        "agreement": same / len(test),
        "mean_abs_feature_difference": diff / len(test),
        "classifier_sha256": ckpt.sha256,
    }
