"""The MTurk requester API: the client (sandbox unless live) and one-line errors for failed calls."""
from __future__ import annotations

from evaluation.models import Experiment
from hearsay.errors import HearsayError

SANDBOX_ENDPOINT = "https://mturk-requester-sandbox.us-east-1.amazonaws.com"
LIVE_ENDPOINT = "https://mturk-requester.us-east-1.amazonaws.com"
SANDBOX_WORKER_SITE = "https://workersandbox.mturk.com"
LIVE_WORKER_SITE = "https://worker.mturk.com"
def make_client(live: bool):
    """A boto3 MTurk client on the sandbox unless `live`; credentials come from boto3's usual chain."""
    import boto3

    return boto3.client(
        "mturk", region_name="us-east-1", endpoint_url=LIVE_ENDPOINT if live else SANDBOX_ENDPOINT
    )


def environment(live: bool) -> str:
    if live:
        return "LIVE MTurk marketplace: real workers, real money"
    return "MTurk SANDBOX: no money moves; test as a worker on " + SANDBOX_WORKER_SITE


class Api:
    """Turns botocore failures into one-line HearsayErrors naming the operation that failed."""

    def __init__(self, action: str):
        self.action = action

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        from botocore.exceptions import BotoCoreError, ClientError

        if exc is None:
            return False
        if isinstance(exc, ClientError):
            raise HearsayError(f"MTurk {self.action} failed: {error_text(exc)}") from exc
        if isinstance(exc, BotoCoreError):
            raise HearsayError(f"MTurk {self.action} failed: {exc}") from exc
        return False


def error_text(exc) -> str:
    err = exc.response.get("Error", {})
    turk = exc.response.get("TurkErrorCode", "")
    return " ".join(p for p in (err.get("Code", ""), turk, err.get("Message", "")) if p)


def get_experiment(slug: str) -> Experiment:
    return Experiment.objects.by_slug(slug)
