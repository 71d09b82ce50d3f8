"""The built-in vocoder: what listeners hear must re-extract to what the network saw."""
import numpy as np
import pytest
import soundfile as sf
import torch

from hearsay.errors import HearsayError
from generation.features import PAPER, LogMel, prepare_waves
from generation.vocoder import GriffinLimVocoder, Vocoder, write_wav


def _word_like(seed: int, sr: int = 16000) -> np.ndarray:
    """A voiced, gliding, amplitude-shaped tone with a noisy onset: a stand-in for a short word."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.8 * sr)) / sr
    f0 = 150 + 60 * seed
    voiced = sum(np.sin(2 * np.pi * k * (f0 + 80 * t) * t) / k for k in range(1, 6))
    env = np.exp(-((t - 0.45) / 0.18) ** 2)
    burst = rng.standard_normal(len(t)) * (t < 0.08) * 0.3
    return ((voiced * env + burst) * 0.5).astype(np.float32)


@pytest.fixture(scope="module")
def features():
    with torch.no_grad():
        return LogMel(PAPER)(prepare_waves([_word_like(i) for i in range(3)], 16000, PAPER))


@pytest.fixture(scope="module")
def vocoder():
    return GriffinLimVocoder(PAPER, n_iter=32)


def test_output_shape_rate_and_finite(vocoder, features):
    waves = vocoder(features)
    assert isinstance(vocoder, Vocoder)
    assert vocoder.sample_rate == PAPER.sample_rate
    assert waves.dtype == np.float32
    assert waves.shape == (3, (PAPER.n_frames - 1) * PAPER.hop_length)
    assert np.isfinite(waves).all()


def test_loudness_normalized_peak_limited_and_faded(vocoder, features):
    waves = vocoder(features)
    rms_db = 20 * np.log10(np.sqrt((waves**2).mean(axis=1)))
    assert np.allclose(rms_db, -23.0, atol=0.1) or (np.abs(waves).max(axis=1) <= 0.99 + 1e-6).all()
    assert np.abs(waves).max() <= 0.99 + 1e-6
    assert (np.abs(waves[:, 0]) < 1e-6).all() and (np.abs(waves[:, -1]) < 1e-6).all()
    fade = int(0.010 * vocoder.sample_rate)
    assert np.abs(waves[:, : fade // 10]).max() < np.abs(waves).max() / 5


def test_silence_stays_silent(vocoder):
    waves = vocoder(torch.zeros(1, *PAPER.shape))
    assert np.abs(waves).max() < 1e-3


def test_round_trip_reextracts_close_to_original(vocoder, features):
    waves = vocoder(features)
    again = LogMel(PAPER)(prepare_waves(list(waves), vocoder.sample_rate, PAPER))
    assert float((again - features).abs().mean()) < 0.03
    # A vocoded clip must be closer to its own features than to another clip's.
    assert float((again[0] - features[0]).abs().mean()) < float((again[0] - features[1]).abs().mean())


def test_batched_equals_one_at_a_time(features):
    batched = GriffinLimVocoder(PAPER, n_iter=16, batch_size=2)(features)
    single = GriffinLimVocoder(PAPER, n_iter=16)
    for i in range(len(features)):
        np.testing.assert_allclose(batched[i], single(features[i : i + 1])[0], atol=1e-4)


def test_refuses_nan_and_wrong_shape(vocoder, features):
    bad = features.clone()
    bad[0, 3, 4] = float("nan")
    with pytest.raises(HearsayError, match="NaN"):
        vocoder(bad)
    with pytest.raises(HearsayError, match="expects features"):
        vocoder(torch.zeros(1, 10, 80))


def test_write_wav_is_pcm16_and_atomic(tmp_path, vocoder, features):
    waves = vocoder(features[:1])
    path = tmp_path / "x.wav"
    write_wav(path, waves[0], vocoder.sample_rate)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (vocoder.sample_rate, 1, "PCM_16")
    data, _ = sf.read(str(path), dtype="float32")
    np.testing.assert_allclose(data, waves[0], atol=1 / 16000)
    with pytest.raises(HearsayError):
        write_wav(tmp_path / "y.wav", np.array([0.0, np.nan], dtype=np.float32), 16000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.wav"]


def test_round_trip_reports_accuracy_before_and_after_vocoding(tmp_path):
    from generation.vocoder import round_trip
    from tests.helpers.corpora import make_corpus, save_classifier
    corpus = make_corpus(tmp_path / "corpus")
    model = save_classifier(tmp_path / "A.pt", 1)
    rt = round_trip(model, corpus, n=4, vocoder=GriffinLimVocoder(PAPER, n_iter=16))
    assert rt["n"] == 4
    assert 0.0 <= rt["original_accuracy"] <= 1.0 and 0.0 <= rt["vocoded_accuracy"] <= 1.0 and 0.0 <= rt["agreement"] <= 1.0
    assert rt["mean_abs_feature_difference"] < 0.05
    other = save_classifier(tmp_path / "O.pt", 1, classes=["a", "b", "c"])
    with pytest.raises(HearsayError, match="other words"):
        round_trip(other, corpus)


def test_fast_griffin_lim_agrees_with_todays_reference(features):
    """Dense NNLS + torchaudio.griffinlim was the vocoder before the fast path; it stays the reference.

    Griffin-Lim's samples are chaotic in rounding, so agreement is stated in the re-extracted features
    (tolerance 0.002 in [0, 1] units) and the samples are only bounded loosely.
    """
    from bench.reference import feature_difference, reference_vocode

    ours = GriffinLimVocoder(PAPER, n_iter=60)(features)
    reference = reference_vocode(features, PAPER, n_iter=60)
    assert feature_difference(ours, reference) < 0.002
    assert np.abs(ours - reference).max() < 0.1


@pytest.mark.parametrize("fused", [True, False], ids=["compiled loops", "tensor ops"])
def test_griffin_lim_equals_torchaudio_iteration_for_iteration(fused):
    """A few iterations, before rounding chaos sets in: the same algorithm as torchaudio's (momentum included),
    both as the CPU's compiled loops and as the tensor ops other devices run."""
    import torchaudio

    from generation.vocoder import Stft, griffin_lim

    torch.manual_seed(0)
    magnitude = torch.rand(2, 513, 90) ** 4
    magnitude[:, :5] = magnitude[:, 400:] = 0  # bins no band covers, as the mel inversion leaves them
    window = torch.hann_window(1024)
    length = 89 * 256
    for n_iter in (1, 3):
        expected = torchaudio.functional.griffinlim(magnitude, window, 1024, 256, 1024, power=1.0, n_iter=n_iter,
                                                    momentum=0.99, length=length, rand_init=False)
        ours = griffin_lim(magnitude.transpose(1, 2), Stft(1024, 256, 1024, torch.device("cpu")), n_iter, 0.99, length,
                           fused=fused)
        torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-4 * expected.abs().max().item())


def test_griffin_lim_refuses_a_length_that_makes_other_frames():
    from generation.vocoder import Stft, griffin_lim

    with pytest.raises(HearsayError, match="make 89 frames, not 90"):
        griffin_lim(torch.rand(1, 90, 513), Stft(1024, 256, 1024, torch.device("cpu")), 1, 0.99, 88 * 256)


def test_thread_count_does_not_change_the_audio(features):
    """The compiled loops split clips and rows over torch's threads; every clip is computed the same way."""
    vocoder = GriffinLimVocoder(PAPER, n_iter=16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = vocoder(features)
        torch.set_num_threads(3)
        split = vocoder(features)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(alone, split)


def test_stft_pair_matches_torch():
    from generation.vocoder import Stft

    stft = Stft(1024, 256, 1024, torch.device("cpu"))
    window = torch.hann_window(1024)
    wave = torch.randn(2, 89 * 256)
    spec = torch.stft(wave, 1024, 256, 1024, window, center=True, return_complex=True)
    torch.testing.assert_close(stft.forward(wave), spec.transpose(1, 2), rtol=1e-5, atol=1e-4)
    noisy = spec + 0.1 * torch.randn_like(spec)  # not the STFT of any signal
    torch.testing.assert_close(stft.inverse(noisy.transpose(1, 2), 89 * 256),
                               torch.istft(noisy, 1024, 256, 1024, window, length=89 * 256), rtol=1e-5, atol=1e-5)


def test_sparse_filterbank_equals_the_dense_products(vocoder):
    """Over the bins some band covers; the bins outside them are in no band, so NNLS leaves them 0."""
    bank = vocoder.filterbank
    fb = vocoder.fb[bank.low : bank.high]
    assert not vocoder.fb[: bank.low].any() and not vocoder.fb[bank.high :].any() and fb[0].any() and fb[-1].any()
    spec, mel = torch.rand(fb.shape[0], 7), torch.rand(fb.shape[1], 7)
    torch.testing.assert_close(bank.to_mel(spec), fb.T @ spec)
    torch.testing.assert_close(bank.from_mel(mel), fb @ mel)


def test_compiled_nnls_equals_the_sparse_products(vocoder):
    """The CPU's compiled NNLS loop (blocks of frames, every update in cache) makes the same updates as the
    sparse products other devices run, across block boundaries (128 frames) and a thread split."""
    from generation.features import unit_to_amp

    bank = vocoder.filterbank
    mel = unit_to_amp(torch.rand(PAPER.n_mels, 301, generator=torch.Generator().manual_seed(0)), PAPER)
    start = (vocoder.fb_pinv @ mel).clamp_(min=0.0)
    expected = bank.fit(start.clone(), mel, 30, fused=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ours = bank.fit(start.clone(), mel, 30, fused=True)
    finally:
        torch.set_num_threads(threads)
    assert not torch.equal(expected, start)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6 * float(expected.max()))


def test_vocoder_protocol_covers_what_callers_use(vocoder):
    """Callers read the rate, device, loudness, fades and a provenance record, and call it on a batch."""
    assert isinstance(vocoder, Vocoder)
    assert vocoder.device == torch.device("cpu") and vocoder.target_rms_db == -23.0 and vocoder.fade_ms == 10.0
    assert vocoder.config()["sample_rate"] == vocoder.sample_rate

    class NoConfig:
        sample_rate = 16000

        def __call__(self, features):
            return np.zeros((len(features), 10), dtype=np.float32)

    assert not isinstance(NoConfig(), Vocoder)
