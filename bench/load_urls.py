"""URLs for bench/load.py: the project's routes plus `/bench/bare`, the do-nothing view whose requests/s is the ceiling."""
import time

from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.urls import include, path


def bare(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"ok", content_type="text/plain")


class QueryCountMiddleware:
    """Adds X-Queries (how many SQL statements the request ran, counted without DEBUG's query log),
    X-Server-Ms (wall time inside Django) and X-Server-Cpu-Ms (CPU time of the thread that served it),
    so the bench can tell work from waiting (locks, the database, other threads) and from the client."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        count = [0]
        started, cpu_started = time.perf_counter(), time.thread_time()

        def counter(execute, sql, params, many, context):
            count[0] += 1
            return execute(sql, params, many, context)

        with connections["default"].execute_wrapper(counter):
            response = self.get_response(request)
        response["X-Queries"] = str(count[0])
        response["X-Server-Ms"] = f"{1000 * (time.perf_counter() - started):.2f}"
        response["X-Server-Cpu-Ms"] = f"{1000 * (time.thread_time() - cpu_started):.2f}"
        return response


urlpatterns = [path("bench/bare", bare), path("", include("config.urls"))]
