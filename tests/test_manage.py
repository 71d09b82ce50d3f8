"""The environment and database mistakes a new user makes get one line and a non-zero exit, not a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def manage(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run manage.py on a fresh data folder, with the caller's DATABASE_URL or none (SQLite there)."""
    full = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    full.update(HEARSAY_DATA_DIR=str(tmp_path), **env)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=full, capture_output=True, text=True)


def test_a_malformed_database_url_is_a_one_line_configuration_error(tmp_path):
    run = manage(tmp_path, "migrate", DATABASE_URL="postgress://nowhere/db")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.stderr.startswith("hearsay: configuration error: DATABASE_URL") and run.stderr.count("\n") == 1


@pytest.mark.parametrize("command", [("listen", "--machine", "asr"), ("analyze", "--out", "report")])
def test_a_database_that_was_never_migrated_says_to_migrate(tmp_path, command):
    run = manage(tmp_path, command[0], "--experiment", "demo", *command[1:])
    assert run.returncode == 1
    assert run.stderr == "hearsay: database error: no such table: evaluation_experiment; run `manage.py migrate` first\n"


def test_an_unreachable_database_is_one_line(tmp_path):
    run = manage(tmp_path, "listen", "--experiment", "demo", "--machine", "asr",
                 DATABASE_URL="postgres://postgres@127.0.0.1:1/test")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("hearsay: database error: ") and "refused" in run.stderr and run.stderr.count("\n") == 1


def test_every_model_change_has_its_migration(tmp_path):
    """A deployment runs `migrate` only: a model change without a migration would break it silently."""
    run = manage(tmp_path, "makemigrations", "--check", "--dry-run")
    assert run.returncode == 0, run.stdout + run.stderr


def test_an_empty_data_dir_setting_means_the_default_not_the_working_directory(tmp_path):
    """`HEARSAY_DATA_DIR= manage.py ...` once put the database and secret key in whatever folder it ran from."""
    full = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE",)}
    full.update(HEARSAY_DATA_DIR="", DJANGO_SETTINGS_MODULE="config.settings")
    full.update(STATIC_ROOT="", MEDIA_ROOT="")
    code = ("import django; django.setup(); from django.conf import settings; "
            "print(settings.DATA_DIR, settings.STATIC_ROOT, settings.MEDIA_ROOT)")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**full, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    data, static, media = map(Path, run.stdout.split())
    assert (data, static, media) == (ROOT / "var", ROOT / "var" / "staticfiles", ROOT / "var" / "media")
    assert not list(tmp_path.iterdir())
