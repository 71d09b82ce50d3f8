"""Batch audio with S3 storage: batch URLs never expire and never name the bucket or an access key."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import boto3
import pytest
from django.core.management import call_command
from django.test import Client

from evaluation.models import Experiment, MturkBatchClip
from evaluation.stimuli import load_manifest
from tests.helpers.storage import BUCKET

MANIFEST = Path(__file__).resolve().parent.parent / "fixtures" / "stimuli" / "manifest.csv"


@pytest.fixture
def s3(bucket):
    """The bucket, emptied afterwards (moto keeps state per process) and boto3's cached fake credentials dropped."""
    yield bucket
    for item in bucket.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        bucket.delete_object(Bucket=BUCKET, Key=item["Key"])
    bucket.delete_bucket(Bucket=BUCKET)
    boto3.DEFAULT_SESSION = None


@pytest.mark.django_db
def test_export_batch_on_s3_writes_lasting_urls_served_by_the_app(s3, tmp_path):
    load_manifest(MANIFEST, "s3b", create=True, task="identification")
    Experiment.objects.filter(slug="s3b").update(status="live")
    out = tmp_path / "batch"
    call_command("mturk", "export-batch", "--experiment", "s3b", "--out", str(out), "--base-url", "https://survey.example.org",
                 stdout=io.StringIO())
    written = (out / "batch.csv").read_text() + (out / "layout.html").read_text()
    for leak in (BUCKET, "hearsay-test", "X-Amz", "Signature", "Expires", "amazonaws", "127.0.0.1"):
        assert leak not in written
    url = next(csv.DictReader((out / "batch.csv").open()))["audio_url"]
    clip = MturkBatchClip.objects.get(name=url.rsplit("/", 1)[1])
    body = s3.get_object(Bucket=BUCKET, Key=f"hearsay/{clip.stimulus.audio.name}")["Body"].read()
    served = Client().get(url.removeprefix("https://survey.example.org"), HTTP_RANGE="bytes=0-")
    assert served.status_code == 206 and served.content == body
