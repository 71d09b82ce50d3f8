#!/usr/bin/env python
"""Django's command-line entry point for Hearsay."""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line
    from django.db.utils import OperationalError, ProgrammingError

    try:
        settings.INSTALLED_APPS  # noqa: B018 - loads the settings, so a bad environment is reported in one line
    except ImproperlyConfigured as exc:
        sys.exit(f"hearsay: configuration error: {exc}")
    try:
        execute_from_command_line(sys.argv)
    except (OperationalError, ProgrammingError) as exc:
        if "--traceback" in sys.argv:
            raise
        sys.exit(f"hearsay: database error: {database_problem(exc)}")


def database_problem(exc: Exception) -> str:
    """One line for a database that is unreachable or not migrated: the two mistakes users make."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if "no such table" in first or ("relation" in first and "does not exist" in first):
        return f"{first}; run `manage.py migrate` first"
    return first


if __name__ == "__main__":
    main()
