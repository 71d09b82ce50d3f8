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


def marketplace(live: bool) -> str:
    """The marketplace's name, for every line that says what was done where."""
    return "LIVE marketplace" if live else "SANDBOX"


# Error codes AWS uses for "too many requests, slow down" (MTurk sends ThrottlingException; the others are AWS-wide).
THROTTLING_CODES = frozenset({
    "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded", "RequestThrottled",
    "ServiceUnavailable", "ServiceFault", "InternalFailure", "InternalServerError", "SlowDown",
})


def describe(exc: BaseException) -> str:
    """A failed call in one line: MTurk's code and message, or the network failure."""
    from botocore.exceptions import ClientError

    return error_text(exc) if isinstance(exc, ClientError) else str(exc)


def network_error(exc: BaseException) -> bool:
    """No answer from MTurk: refused connection, timeout, dropped connection (botocore has retried already)."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    return isinstance(exc, (BotoConnectionError, HTTPClientError))


def transient(exc: BaseException) -> bool:
    """Worth the same call again later (throttling, MTurk unavailable, the network): stop the run and say so."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in THROTTLING_CODES or status == 429 or status >= 500
    return network_error(exc)


def may_have_happened(exc: BaseException) -> bool:
    """The request may have reached MTurk and been carried out though no answer came back."""
    from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError

    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return False  # never connected
    if isinstance(exc, ClientError):
        return (exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0) >= 500
    return network_error(exc)


def _text(exc: BaseException) -> str:
    return describe(exc).lower().replace(" ", "")


def insufficient_funds(exc: BaseException) -> bool:
    return "insufficientfunds" in _text(exc)


def not_found(exc: BaseException) -> bool:
    """MTurk no longer has (or never had, in this marketplace) the HIT or assignment."""
    return "doesnotexist" in _text(exc) or "notfound" in _text(exc)


FUNDS_PAGE = "https://requester.mturk.com/account"


def get_experiment(slug: str) -> Experiment:
    return Experiment.objects.by_slug(slug)
