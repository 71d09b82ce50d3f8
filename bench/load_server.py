"""Settings for bench/load.py's gunicorn: the project's settings plus a bare view (the ceiling) and a query counter.

The survey is served exactly as configured in config.settings; this module only adds
`/bench/bare` (a view that does nothing, behind the same middleware) and a header with
the number of SQL queries each request ran, so the bench can count queries per answer cycle.
"""
from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.load_urls"
MIDDLEWARE = ["bench.load_urls.QueryCountMiddleware", *MIDDLEWARE]  # noqa: F405
