"""Audio in an S3 bucket: stored there privately under opaque names, served by the app under trial tokens.

moto's S3 server stands in for AWS (no network here); django-storages and boto3 talk to it over HTTP
exactly as they would to a real bucket.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.models import Stimulus
from tests.helpers.storage import BUCKET
from tests.helpers.survey import Listener, make_experiment

ROOT = Path(__file__).resolve().parent.parent


def keys(s3) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


@pytest.mark.django_db
def test_loaded_audio_lands_in_the_bucket_under_opaque_names_and_is_served_by_token(bucket):
    make_experiment()
    stored = keys(bucket)
    assert len(stored) == Stimulus.objects.count() > 0
    assert all(k.startswith("hearsay/") for k in stored)
    words = set(Stimulus.objects.values_list("word", flat=True))
    assert not any(w in k.removeprefix("hearsay/") for k in stored for w in words)
    assert bucket.get_object_acl(Bucket=BUCKET, Key=stored[0])["Grants"][0]["Permission"] == "FULL_CONTROL"  # private

    person = Listener("demo")
    person.start()
    trial = person.current()
    clip = person.client.get(f"/a/{trial.token}")
    body = bucket.get_object(Bucket=BUCKET, Key=f"hearsay/{trial.stimulus.audio.name}")["Body"].read()
    assert clip.status_code == 200 and clip.content == body and body[:4] == b"RIFF"
    assert f"{BUCKET}" not in person.client.get("/s/demo/trial").content.decode()
    part = person.client.get(f"/a/{trial.token}", HTTP_RANGE="bytes=0-")
    assert part.status_code == 206 and part.content == body


def test_s3_without_a_bucket_is_a_one_line_configuration_error(tmp_path):
    env = {**os.environ, "HEARSAY_DATA_DIR": str(tmp_path), "HEARSAY_FILE_STORAGE": "s3", "HEARSAY_S3_BUCKET": ""}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    run = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode != 0
    assert run.stderr.strip() == "hearsay: configuration error: HEARSAY_FILE_STORAGE=s3 needs HEARSAY_S3_BUCKET, the bucket that holds the audio"
