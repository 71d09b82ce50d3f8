"""The base of Hearsay's management commands: library errors reach the user as one line and exit status 1."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from hearsay.errors import HearsayError


class HearsayCommand(BaseCommand):
    """A command whose library calls may raise HearsayError: it becomes a CommandError (one line, exit 1), never a traceback.

    Commands stay thin: parse options, call a library function, print its summary; no try/except of their own.
    """

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except HearsayError as exc:
            raise CommandError(str(exc)) from None
