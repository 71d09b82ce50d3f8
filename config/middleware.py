"""Request checks that run before anything reads the request, and CSRF for listeners without cookies."""
from __future__ import annotations

import codecs

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.middleware.csrf import CsrfViewMiddleware

from evaluation.flow import carried_participant_token, csrf_secret_for

ACCEPTED_CHARSETS = {"utf-8", "ascii"}
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class RequestSanityMiddleware:
    """400 for a request no view should see: a form body in another encoding than UTF-8, a NUL byte anywhere, or a
    Content-Length that is no number.

    Runs before sessions and CSRF, so the refusal is a plain 400 on every URL, the admin
    included (Django would otherwise fail later inside the CSRF check of its own 400 page),
    and a NUL byte never reaches a database (PostgreSQL refuses it in text with a 500).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        problem = self.problem(request)
        if problem:
            return HttpResponseBadRequest(f"Bad request: {problem}.\n", content_type="text/plain; charset=utf-8")
        return self.get_response(request)

    @staticmethod
    def problem(request: HttpRequest) -> str | None:
        if "\x00" in request.path:
            return "the address contains a NUL byte"
        length = request.META.get("CONTENT_LENGTH") or "0"
        if not (length.isascii() and length.isdigit()):  # Django would int() it while reading the body: a 500
            return f"Content-Length must be a number of bytes, not {length[:40]!r}"
        if request.method == "POST" and request.content_type in FORM_TYPES:
            charset = request.content_params.get("charset")
            if charset is not None:
                try:
                    name = codecs.lookup(charset).name
                except LookupError:
                    name = charset
                if name not in ACCEPTED_CHARSETS:
                    return f"form data must be sent as UTF-8, not {charset!r}"
                # Django reads a form only under the exact name "utf-8": "utf8" or "us-ascii" (the same bytes) got its 400
                request.encoding = "utf-8"
        try:
            fields = [request.GET] + ([request.POST] if request.method == "POST" and request.content_type in FORM_TYPES else [])
            for data in fields:
                for key, values in data.lists():
                    if "\x00" in key or any("\x00" in v for v in values):
                        return "a form field contains a NUL byte"
        except (RequestDataTooBig, TooManyFieldsSent) as exc:
            return str(exc).rstrip(".")
        return None


class ParticipantCsrfViewMiddleware(CsrfViewMiddleware):
    """Django's CSRF protection, with one addition for survey pages framed where cookies are refused.

    A listener inside MTurk's cross-origin frame may get no cookie at all, so neither a
    session nor a CSRF cookie. Their pages carry a signed participant token in the URL
    (evaluation.flow.carry_token); for such a request without a CSRF cookie, the CSRF
    secret is one derived from that participant (an HMAC under SECRET_KEY). The form token
    is then checked exactly as Django checks it against a cookie, and the origin checks
    are unchanged. A cross-site page cannot know a listener's carried token, and a request
    that does carry a CSRF cookie is checked against the cookie as always.

    It overrides Django's private `_get_secret`; tests/test_survey_field.py and
    tests/test_browser_frame.py fail should a Django upgrade change that hook.
    """

    def _get_secret(self, request):
        secret = super()._get_secret(request)
        if secret is None:
            participant_token = carried_participant_token(request.GET.get("p"))
            if participant_token is not None:
                return csrf_secret_for(participant_token)
        return secret
