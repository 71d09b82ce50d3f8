"""Load test: many simulated listeners against the survey under gunicorn + PostgreSQL, on loopback only.

Creates a fresh database, loads the fixture stimulus set (replicated to make a bigger
study) and starts gunicorn (settings: bench/load_server.py, the project's own plus a bare
view and a per-request SQL counter). Then, against that one server:

1. the ceiling: requests/s of a bare Django view (same middleware, gunicorn, database
   settings and keep-alive client), `--concurrency` clients for `--ceiling-seconds`;
2. the survey: listeners driven concurrently through entry -> consent -> instructions ->
   every trial: trial page, the clip (fetched whole, as the pages do), a wait while the
   clip plays (its duration less the server's tolerance, from the moment the bytes are in:
   the server refuses earlier answers), then the answer.

Prints answer cycles/s (trial page + audio + answer), the same with the listening wait
left out (what the server delivers to `--concurrency` listeners who never wait), each
beside the ceiling and as a ratio to it; answer POST p50/p99; SQL queries per answer
cycle; server, database and client CPU ms per request; per request kind, the time inside
Django (wall and the serving thread's CPU), queries and the time at the client; answers
lost (acknowledged with a 303 but missing from the database; must be 0) and the worst
over-collection on any stimulus (answers beyond N; must be 0). Stops by itself: a fixed
number of listeners.

    .venv/bin/python bench/load.py --listeners 64 --concurrency 16
"""
from __future__ import annotations

import argparse
import csv
import html
import http.client
import io
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import soundfile as sf
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "stimuli" / "manifest.csv"
SLUG = "bench"
CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
TOKEN_RE = re.compile(r'name="token" value="([^"]+)"')
ANSWER_RE = re.compile(r'name="answer" value="([^"]+)"')
AUDIO_RE = re.compile(r'<audio id="clip"[^>]* data-src="([^"]+)"')
ACTION_RE = re.compile(r'<form method="post" action="([^"]+)" id="trial"')


def replicated_manifest(copies: int, out: Path) -> Path:
    """The fixture manifest repeated `copies` times under new ids and file names (the same audio): a bigger study."""
    with FIXTURE.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for copy in range(copies):
            for row in rows:
                source = FIXTURE.parent / row["file"]
                name = f"wav/{source.stem}-{copy}{source.suffix}"  # every clip of a manifest has its own file name
                shutil.copyfile(source, out / name)
                pair = f"{row['pair_id']}-{copy}" if row["pair_id"] else ""
                writer.writerow({**row, "stimulus_id": f"{row['stimulus_id']}-{copy}", "pair_id": pair, "file": name})
    return out / "manifest.csv"


LISTEN_TOLERANCE_S = 0.25  # evaluation.answers.LISTEN_TOLERANCE_MS: the server accepts an answer this much before the clip's end


class Browser:
    """A listener's HTTP client: one keep-alive connection, its own cookies, no redirects followed implicitly.

    Counts its requests and the SQL queries the server reports for them (X-Queries).
    """

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookies: dict[str, str] = {}
        self.requests = 0
        self.queries = 0
        self.body = b""
        self.server_s = 0.0
        self.seen_trial = False
        self.timings: list[tuple[str, float, float, float, int]] = []  # (kind, s inside Django, its CPU s, s at the client, queries)

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        data = None
        if body is not None:
            data = urlencode(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["Referer"] = "http://127.0.0.1/"
        sent = time.perf_counter()
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        payload = response.read()
        self.body = payload
        self.requests += 1
        queries = int(response.getheader("X-Queries") or 0)
        self.queries += queries
        self.server_s = float(response.getheader("X-Server-Ms") or 0) / 1000
        server_cpu_s = float(response.getheader("X-Server-Cpu-Ms") or 0) / 1000
        kind = "audio" if path.startswith("/a/") else path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if kind == "trial" and "This study is full" not in payload.decode("utf-8", "replace"):
            kind = "trial (first visit)" if not self.seen_trial else "trial"
            self.seen_trial = True
        self.timings.append((kind, self.server_s, server_cpu_s, time.perf_counter() - sent, queries))
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key.strip()] = rest.split(";", 1)[0]
        return response.status, response.getheader("Location") or "", payload.decode("utf-8", "replace")

    def get(self, path: str, **headers):
        return self.request("GET", path, headers=headers)

    def post(self, path: str, body: dict):
        return self.request("POST", path, body={**body, "csrfmiddlewaretoken": self.cookies.get("csrftoken", "")})


def listener(n: int, port: int, rng: random.Random, lock: threading.Lock, results: dict) -> None:
    b = Browser(port)
    try:
        run_listener(b, n, rng, lock, results)
    finally:
        with lock:
            results["requests"] += b.requests
            results["queries"] += b.queries
            results["timings"] += b.timings


def run_listener(b: Browser, n: int, rng: random.Random, lock: threading.Lock, results: dict) -> None:
    """One listener from the study link to the last trial (or "the study is full")."""
    status, location, _ = b.get(f"/s/{SLUG}/?" + urlencode({"workerId": f"BENCH{n}", "assignmentId": f"A{n}", "hitId": "H", "turkSubmitTo": "https://www.mturk.com"}))
    if status != 302:
        raise RuntimeError(f"entry got {status}")
    consent_url = urlsplit(location).path + "?" + urlsplit(location).query  # the pages' own links carry the participant
    b.get(consent_url)
    _, location, _ = b.post(consent_url, {"agree": "yes"})
    _, trial_url, _ = b.post(location, {})
    while True:
        cycle_started, cycle_requests, cycle_queries = time.perf_counter(), b.requests, b.queries
        status, location, page = b.get(trial_url)
        if status == 302 or "This study is full" in page:
            break
        if status != 200:
            raise RuntimeError(f"trial page got {status}")
        token = TOKEN_RE.search(page).group(1)
        words = ANSWER_RE.findall(page)
        audio_url, answer_url = html.unescape(AUDIO_RE.search(page).group(1)), html.unescape(ACTION_RE.search(page).group(1))
        audio_status, _, _ = b.get(audio_url, Range="bytes=0-")
        if audio_status not in (200, 206):
            raise RuntimeError(f"audio got {audio_status}")
        play_started = time.perf_counter()  # a page starts playing once the bytes are in
        info = sf.info(io.BytesIO(b.body))
        wait = max(0.0, play_started + info.frames / info.samplerate - LISTEN_TOLERANCE_S + 0.01 - time.perf_counter())
        time.sleep(wait)  # the clip is playing: the server refuses answers before it can have been heard
        started = time.perf_counter()
        status, location, _ = b.post(answer_url, {"token": token, "answer": rng.choice(words), "ended": "on", "response_ms": rng.randint(300, 3000)})
        elapsed = time.perf_counter() - started
        with lock:
            results["latency"].append(elapsed)
            if status == 303:
                trial_url = location
                results["acknowledged"].append(token)
                results["cycles"] += 1
                results["cycle_busy_s"] += started + elapsed - cycle_started - wait
                results["cycle_requests"] += b.requests - cycle_requests
                results["cycle_queries"] += b.queries - cycle_queries
            elif status == 409:
                results["conflicts"] += 1
            else:
                results["errors"].append(f"answer got {status}")
                return


def server_cpu_s(session: int) -> float:
    """User + system CPU seconds of every live process in the server's session (gunicorn's master and workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session:  # fields after "(comm)": state ppid pgrp session ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def database_cpu_s(database: str) -> float:
    """User + system CPU seconds of the PostgreSQL backends serving `database` (on this machine; 0 if it runs elsewhere)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if f" {database} " not in (proc / "cmdline").read_bytes().decode(errors="replace").replace("\0", " "):
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def _port_in_use(port: int) -> str:
    """Why the port cannot be bound on loopback ('' when it can): gunicorn would fail and the run measure another server."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds: a closing socket is no obstacle
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return ""


def ceiling(port: int, clients: int, seconds: float) -> dict:
    """Requests/s of the bare view: `clients` keep-alive connections asking as fast as they can for `seconds`."""
    stop = time.perf_counter() + seconds
    counts = [0] * clients

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.perf_counter() < stop:
            conn.request("GET", "/bench/bare")
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"bare view got {response.status}")
            counts[i] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(client, range(clients)))
    return {"requests": sum(counts), "wall_s": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16, help="listeners active at once")
    parser.add_argument("--copies", type=int, default=20, help="replicate the fixture's 16 clips this many times")
    parser.add_argument("--ratings-per-stimulus", type=int, default=3)
    parser.add_argument("--trials", type=int, default=12, help="test trials per listener")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432", help="server URL (no database)")
    parser.add_argument("--database", default="hearsay_bench")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ceiling-seconds", type=float, default=5.0, help="how long to measure the bare view")
    args = parser.parse_args()
    port_in_use = _port_in_use(args.port)
    if port_in_use:
        sys.exit(f"load.py: port {args.port} is in use ({port_in_use}); choose a free one with --port")

    import psycopg

    work = Path(tempfile.mkdtemp(prefix="hearsay-bench-"))
    (work / "staticfiles").mkdir()
    database_url = f"{args.postgres.rstrip('/')}/{args.database}"
    with psycopg.connect(f"{args.postgres.rstrip('/')}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{args.database}"')
        admin.execute(f'CREATE DATABASE "{args.database}"')
    env = {
        **os.environ, "DATABASE_URL": database_url, "MEDIA_ROOT": str(work / "media"), "HEARSAY_DATA_DIR": str(work),
        "SECURE_COOKIES": "0", "DEBUG": "0", "ALLOWED_HOSTS": "127.0.0.1", "OMP_NUM_THREADS": "1", "LOG_LEVEL": "ERROR",
        "DB_CONN_MAX_AGE": "60",
    }
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from evaluation.models import Experiment
    from evaluation.stimuli import load_manifest

    call_command("migrate", verbosity=0)
    manifest = replicated_manifest(args.copies, work / "set")
    load_manifest(manifest, SLUG, create=True, ratings_per_stimulus=args.ratings_per_stimulus)
    Experiment.objects.filter(slug=SLUG).update(status="live", trials_per_listener=args.trials, replay_limit=3)
    connection.close()

    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "config.wsgi", "-b", f"127.0.0.1:{args.port}", "-w", str(args.workers),
         "--threads", str(args.threads), "-k", "gthread", "--log-level", "warning"],
        cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE": "bench.load_server"}, start_new_session=True,
    )
    try:
        for _ in range(100):
            if server.poll() is not None:
                sys.exit(f"load.py: gunicorn stopped at start (exit status {server.returncode}); its messages are above")
            try:
                http.client.HTTPConnection("127.0.0.1", args.port, timeout=1).request("GET", "/admin/login/")
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit(f"load.py: gunicorn did not answer on port {args.port} within 10 s")
        ceiling(args.port, args.concurrency, 0.5)  # warm-up: every worker thread connected and imported
        cpu0, client0 = server_cpu_s(server.pid), time.process_time()
        bare = ceiling(args.port, args.concurrency, args.ceiling_seconds)
        bare["server_cpu_s"], bare["client_cpu_s"] = server_cpu_s(server.pid) - cpu0, time.process_time() - client0
        results = {"latency": [], "timings": [], "acknowledged": [], "conflicts": 0, "errors": [], "requests": 0, "queries": 0,
                   "cycles": 0, "cycle_busy_s": 0.0, "cycle_requests": 0, "cycle_queries": 0}
        cpu0, client0, db0 = server_cpu_s(server.pid), time.process_time(), database_cpu_s(args.database)
        lock = threading.Lock()
        rngs = [random.Random(args.seed * 100_000 + n) for n in range(args.listeners)]
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            futures = [pool.submit(listener, n, args.port, rngs[n], lock, results) for n in range(args.listeners)]
            for f in tqdm(futures, desc="listeners", unit="listener"):
                try:
                    f.result(timeout=600)
                except Exception as exc:  # noqa: BLE001 - counted and printed, the run goes on
                    results["errors"].append(repr(exc))
        wall = time.perf_counter() - started
        survey_server_cpu, survey_client_cpu = server_cpu_s(server.pid) - cpu0, time.process_time() - client0
        survey_database_cpu = database_cpu_s(args.database) - db0  # before the server ends: its backends still exist
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    with psycopg.connect(database_url) as db:
        stored = {row[0] for row in db.execute(
            "SELECT a.token FROM evaluation_assignment a JOIN evaluation_response r ON r.assignment_id = a.id")}
        counts = [row[0] for row in db.execute(
            "SELECT COUNT(r.id) FROM evaluation_stimulus s LEFT JOIN evaluation_response r ON r.stimulus_id = s.id "
            "WHERE s.kind = 'test' GROUP BY s.id")]
    lost = len(set(results["acknowledged"]) - stored)
    over = max(0, max(counts) - args.ratings_per_stimulus)
    filled = sum(1 for c in counts if c == args.ratings_per_stimulus)
    latency = sorted(results["latency"])
    if not latency:
        sys.exit(f"load.py: no answer went through; first errors: {'; '.join(results['errors'][:3]) or 'none recorded'}")
    p50 = statistics.median(latency) * 1000
    p99 = latency[min(len(latency) - 1, int(0.99 * len(latency)))] * 1000
    ceiling_rps = bare["requests"] / bare["wall_s"]
    cycles_per_s = results["cycles"] / wall
    busy_cycles_per_s = args.concurrency * results["cycles"] / results["cycle_busy_s"] if results["cycles"] else 0.0
    report = {
        "listeners": args.listeners, "concurrency": args.concurrency, "gunicorn": f"{args.workers}x{args.threads} gthread",
        "test_stimuli": len(counts), "ratings_per_stimulus": args.ratings_per_stimulus, "seed": args.seed,
        "ceiling_bare_requests_per_s": round(ceiling_rps, 1),
        "ceiling_server_cpu_ms_per_request": round(1000 * bare["server_cpu_s"] / bare["requests"], 3),
        "ceiling_client_cpu_ms_per_request": round(1000 * bare["client_cpu_s"] / bare["requests"], 3),
        "answers_acknowledged": len(results["acknowledged"]), "answers_refused_409": results["conflicts"],
        "wall_s": round(wall, 2), "answer_cycles_per_s": round(cycles_per_s, 2),
        "answer_cycles_per_s_ratio_to_ceiling": round(cycles_per_s / ceiling_rps, 4),
        "answer_cycles_per_s_without_listening": round(busy_cycles_per_s, 2),
        "answer_cycles_per_s_without_listening_ratio_to_ceiling": round(busy_cycles_per_s / ceiling_rps, 4),
        "answer_post_p50_ms": round(p50, 1), "answer_post_p99_ms": round(p99, 1),
        "requests_per_answer_cycle": round(results["cycle_requests"] / max(1, results["cycles"]), 2),
        "queries_per_answer_cycle": round(results["cycle_queries"] / max(1, results["cycles"]), 2),
        "queries_per_request": round(results["queries"] / max(1, results["requests"]), 2),
        "server_cpu_ms_per_request": round(1000 * survey_server_cpu / max(1, results["requests"]), 3),
        "database_cpu_ms_per_request": round(1000 * survey_database_cpu / max(1, results["requests"]), 3),
        "client_cpu_ms_per_request": round(1000 * survey_client_cpu / max(1, results["requests"]), 3),
        "answers_lost": lost, "max_over_collection": over, "stimuli_filled": f"{filled}/{len(counts)}",
        "errors": results["errors"][:5],
    }
    print(json.dumps(report, indent=1))
    for kind in sorted({t[0] for t in results["timings"]}):
        rows = [t for t in results["timings"] if t[0] == kind]
        server, client = sorted(t[1] for t in rows), sorted(t[3] for t in rows)
        print(f"  {kind:<20} n={len(rows):<5} inside Django p50 {1000 * statistics.median(server):6.1f} ms  "
              f"p99 {1000 * server[int(0.99 * (len(server) - 1))]:6.1f} ms  CPU {1000 * statistics.fmean(t[2] for t in rows):5.2f} ms  "
              f"queries {statistics.fmean(t[4] for t in rows):5.2f}   at the client p50 {1000 * statistics.median(client):6.1f} ms  "
              f"p99 {1000 * client[int(0.99 * (len(client) - 1))]:6.1f} ms")
    print(f"ceiling (bare view) {ceiling_rps:.0f} req/s  "
          f"answer cycles/s {cycles_per_s:.1f} ({cycles_per_s / ceiling_rps:.4f} x ceiling), "
          f"without listening waits {busy_cycles_per_s:.1f} ({busy_cycles_per_s / ceiling_rps:.4f} x ceiling)  "
          f"answer POST p50 {p50:.1f} ms  p99 {p99:.1f} ms  queries/cycle {report['queries_per_answer_cycle']}  "
          f"server CPU {report['server_cpu_ms_per_request']} ms/request (bare {report['ceiling_server_cpu_ms_per_request']}), "
          f"database {report['database_cpu_ms_per_request']}  "
          f"lost {lost}  over-collection {over}")
    with psycopg.connect(f"{args.postgres.rstrip('/')}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
    shutil.rmtree(work, ignore_errors=True)
    return 0 if lost == 0 and over == 0 and not results["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
