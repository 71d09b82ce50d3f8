"""MTurk's frame around the survey, for Chromium: two sites (MTurk's stand-in and the survey) on one local HTTPS server.

The `two_sites` fixture in conftest.py serves them; the test tells Chromium both names live on 127.0.0.1.
"""
from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from socketserver import ThreadingMixIn
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

SURVEY, MTURK = "survey.test", "worker.mturk.test"


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for both names (needs openssl)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={SURVEY}",
         "-addext", f"subjectAltName=DNS:{SURVEY},DNS:{MTURK}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


def tls_server(app, cert: Path, key: Path) -> WSGIServer:
    """`app` behind HTTPS on a free local port, not yet serving."""
    server = make_server("127.0.0.1", 0, app, server_class=_Server, handler_class=_QuietHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


class TwoSites:
    """The WSGI app behind both names: MTurk's stand-in by Host, everything else to Django."""

    def __init__(self, django_app):
        self.django_app = django_app
        self.port = 0
        self.submissions: list[dict] = []
        self.survey_cookies: list[str] = []
        self.survey_set_cookies = 0
        self.frame_url = ""

    def __call__(self, environ, start_response):
        environ["wsgi.url_scheme"] = "https"
        host = environ.get("HTTP_HOST", "").split(":")[0]
        if host == MTURK:
            return self.mturk(environ, start_response)
        self.survey_cookies.append(environ.get("HTTP_COOKIE", ""))

        def noting_cookies(status, headers, *rest):
            self.survey_set_cookies += sum(name.lower() == "set-cookie" for name, _ in headers)
            return start_response(status, headers, *rest)

        return self.django_app(environ, noting_cookies)

    def mturk(self, environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/mturk/externalSubmit" and environ["REQUEST_METHOD"] == "POST":
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)).decode()
            self.submissions.append({k: v[0] for k, v in parse_qs(body).items()})
            page = b"<!doctype html><title>Submitted</title><p id=submitted>HIT submitted</p>"
        elif path == "/hit":
            page = (f'<!doctype html><title>HIT</title><iframe id=task src="{self.frame_url}" '
                    'style="width:1000px;height:900px"></iframe>').encode()
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [page]
