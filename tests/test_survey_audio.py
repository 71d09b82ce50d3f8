"""Audio is served under opaque per-listener tokens, with Range support and nothing that identifies the clip."""
from __future__ import annotations

import pytest

from evaluation.models import Experiment
from evaluation.audio import HEADPHONE_RATE, headphone_trial, parse_range
from tests.helpers.survey import Listener, make_experiment


@pytest.fixture
def trial_and_listener(media):
    make_experiment()
    person = Listener("demo")
    person.start()
    return person.current(), person


@pytest.mark.django_db
def test_range_requests_get_partial_content(trial_and_listener):
    trial, person = trial_and_listener
    data = trial.stimulus.audio.open("rb").read()
    whole = person.client.get(f"/a/{trial.token}")
    assert whole.status_code == 200 and whole.content == data and whole["Accept-Ranges"] == "bytes"
    part = person.client.get(f"/a/{trial.token}", HTTP_RANGE="bytes=10-19")
    assert part.status_code == 206 and part.content == data[10:20]
    assert part["Content-Range"] == f"bytes 10-19/{len(data)}"
    tail = person.client.get(f"/a/{trial.token}", HTTP_RANGE="bytes=-4")
    assert tail.content == data[-4:]
    assert person.client.get(f"/a/{trial.token}", HTTP_RANGE=f"bytes={len(data)}-").status_code == 416


@pytest.mark.django_db
def test_safaris_two_byte_probe_is_not_counted_as_a_play(trial_and_listener):
    trial, person = trial_and_listener
    assert person.client.get(f"/a/{trial.token}", HTTP_RANGE="bytes=0-1").status_code == 206  # before the play: served, not counted
    person.client.get(f"/a/{trial.token}", HTTP_RANGE="bytes=0-")
    probe = person.client.get(f"/a/{trial.token}", HTTP_RANGE="bytes=0-1")
    assert probe.status_code == 206 and len(probe.content) == 2
    trial.refresh_from_db()
    assert trial.play_count == 1


@pytest.mark.django_db
def test_nothing_in_urls_pages_or_headers_identifies_the_clip(trial_and_listener):
    trial, person = trial_and_listener
    Experiment.objects.update(replay_limit=10)
    while trial.stimulus.kind != "test":
        person.answer(trial)
        trial = person.current()
    page = person.client.get("/s/demo/trial").content.decode()
    stim = trial.stimulus
    secrets = [stim.stimulus_id, stim.audio.name.split("/")[-1], stim.condition, stim.method, stim.sha256]
    secrets += [p for p in (stim.pair_id,) if p]
    for secret in secrets:
        assert secret not in page, secret
    for name in ("Content-Disposition", "ETag", "Last-Modified"):
        assert name not in person.client.get(f"/a/{trial.token}")
    # headers are the same for every clip but for its length: they cannot tell word or condition
    others = [a for a in person.participant.assignments.all() if a.stimulus.word != stim.word]
    a, b = (person.client.get(f"/a/{t.token}") for t in (trial, others[0]))
    strip = {"Content-Length"}
    assert {k: v for k, v in a.items() if k not in strip} == {k: v for k, v in b.items() if k not in strip}
    assert a["Cache-Control"] == "private, no-store"


def test_parse_range_follows_rfc_9110():
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-", 100) == (0, 99)
    assert parse_range("bytes=5-500", 100) == (5, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=100-", 100) == "unsatisfiable"
    assert parse_range("bytes=0-1,5-6", 100) is None  # multi-range: whole file


def test_headphone_tones_hide_the_quiet_one_in_the_antiphase_trick():
    import io

    import numpy as np
    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(headphone_trial(2)))
    assert rate == HEADPHONE_RATE and samples.shape[1] == 2
    seg = [samples[int(i * 1.5 * rate) : int(i * 1.5 * rate) + rate] for i in range(3)]
    level = [float(np.sqrt(np.mean(s**2))) for s in seg]
    assert level[2] < 0.6 * level[1]  # tone 3 is the quiet one (-6 dB)
    mono = [float(np.sqrt(np.mean(s.sum(axis=1) ** 2))) for s in seg]
    assert mono[0] < 1e-3 < mono[2]  # tone 1 (antiphase) cancels when the channels mix in the air
