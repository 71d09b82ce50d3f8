"""Shared test configuration and fixtures: keep torch small and deterministic on a 2-core machine; media, browser (a phone, MTurk's frame), S3, database."""
import os
import threading

import pytest

from tests.helpers.browser import ARGS, CHROMIUM, SMALL_PHONE
from tests.helpers.frame import MTURK, SURVEY, TwoSites, certificate, tls_server
from tests.helpers.storage import BUCKET

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture
def media(settings, tmp_path):
    """Uploaded and loaded audio goes to this test's own folder."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def browser_settings(settings, tmp_path):
    """Media in this test's folder, and cookies a plain-http live server can set."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    settings.SESSION_COOKIE_SAMESITE = settings.CSRF_COOKIE_SAMESITE = "Lax"
    return settings


@pytest.fixture(scope="module")
def chromium(django_db_setup):
    yield from _launched(ARGS)


@pytest.fixture(scope="module")
def framing_chromium(django_db_setup):
    """Chromium that reaches both sites of `two_sites` over TLS and blocks third-party cookies in the frame, as Safari,
    Brave and incognito Chrome do."""
    yield from _launched(ARGS + [f"--host-resolver-rules=MAP {SURVEY} 127.0.0.1, MAP {MTURK} 127.0.0.1",
                                 "--ignore-certificate-errors", "--test-third-party-cookie-phaseout"])


def _launched(args: list[str]):
    """Playwright's sync API keeps an event loop running in this thread; Django must be told the ORM use is safe."""
    from playwright.sync_api import sync_playwright

    old = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield browser
        browser.close()
    if old is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def phone(live_server, browser_settings, chromium):
    """A touch phone's page on the live server; yields (context, page, base URL). No server error may happen on it."""
    context = chromium.new_context(**SMALL_PHONE)
    page = context.new_page()
    errors: list[str] = []
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 500 else None)
    yield context, page, live_server.url
    context.close()
    assert errors == []


@pytest.fixture
def two_sites(settings, tmp_path):
    """MTurk's stand-in and the survey on one local HTTPS server (tests.helpers.frame), with the settings a framed
    survey runs under; yields the TwoSites app, whose `frame_url` the test sets."""
    from django.core.wsgi import get_wsgi_application

    sites = TwoSites(get_wsgi_application())
    server = tls_server(sites, *certificate(tmp_path))
    sites.port = server.server_address[1]
    mturk_origin = f"https://{MTURK}:{sites.port}"
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.ALLOWED_HOSTS = [SURVEY]
    settings.MTURK_FRAME_ORIGINS = [mturk_origin]
    settings.MTURK_SUBMIT_HOSTS = [mturk_origin]
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    settings.SESSION_COOKIE_SAMESITE = settings.CSRF_COOKIE_SAMESITE = "None"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield sites
    server.shutdown()
    server.server_close()


@pytest.fixture
def bucket(settings, monkeypatch):
    """An S3 bucket in moto's server (no network here), set as the default file storage; yields a boto3 client."""
    import boto3
    from moto.server import ThreadedMotoServer

    from config import settings as hearsay_settings

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "hearsay-test", "AWS_SECRET_ACCESS_KEY": "hearsay-test", "AWS_DEFAULT_REGION": "us-east-1",
        "HEARSAY_FILE_STORAGE": "s3", "HEARSAY_S3_BUCKET": BUCKET, "HEARSAY_S3_ENDPOINT_URL": endpoint,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=BUCKET)
    settings.STORAGES = {**settings.STORAGES, "default": hearsay_settings._file_storage()}
    yield s3
    server.stop()


@pytest.fixture
def real_database(tmp_path):
    """SQLite as deployed (a file, writers wait on its lock); PostgreSQL as configured.

    Django's SQLite test database lives in shared-cache memory, where a locked table
    fails at once instead of waiting, which no deployment does. So for SQLite every
    thread of this test gets its own connection to a migrated file database instead.
    """
    from django.core.management import call_command
    from django.db import connection, connections

    if connection.vendor != "sqlite":
        yield None
        return
    original = connections["default"]
    file_settings = {**original.settings_dict, "NAME": str(tmp_path / "hearsay.sqlite3")}

    def connect() -> None:
        connections["default"] = original.__class__(file_settings, "default")

    connect()
    call_command("migrate", verbosity=0)
    yield connect
    connections["default"].close()
    connections["default"] = original
