"""Batch audio: the clips of a requester-website batch, served by this app under their opaque names.

The URL is what `mturk export-batch` writes into batch.csv, so it must outlive the batch (no
expiring signatures), name no bucket, key or stimulus, and support byte ranges as browsers'
audio elements ask for them. Anyone holding a batch URL can fetch that one clip, as on MTurk's
own hosting; the name is 128 random bits, so clips cannot be enumerated.
"""
from __future__ import annotations

import re

from django.http import Http404, HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.http import require_safe

from evaluation.audio import audio_response
from evaluation.models import Experiment, MturkBatchClip
from hearsay.mturk_results import BATCH_AUDIO_PATH

_NAME = re.compile(r"[0-9a-f]{32}\.wav")


@require_safe
def batch_audio(request: HttpRequest, name: str) -> HttpResponse:
    """One batch clip, whole or by Range; 404 for unknown names, 410 once the experiment is closed."""
    if not _NAME.fullmatch(name):
        raise Http404("no such clip")
    clip = MturkBatchClip.objects.select_related("stimulus", "batch__experiment").filter(name=name).first()
    if clip is None:
        raise Http404("no such clip")
    if clip.batch.experiment.status == Experiment.Status.CLOSED:
        return HttpResponse("this study is closed", status=410, content_type="text/plain")
    with clip.stimulus.audio.open("rb") as handle:
        data = handle.read()
    response = audio_response(data, request.headers.get("Range"))
    response["Cache-Control"] = "public, max-age=86400"
    response["Access-Control-Allow-Origin"] = "*"
    return response


urlpattern = path(f"{BATCH_AUDIO_PATH}/<str:name>", batch_audio, name="batch_audio")
