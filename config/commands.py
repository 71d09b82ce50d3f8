"""The base of every Hearsay management command: a library error or Ctrl-C reaches the user as one line, exit 1.

It lives in `config`, beside the settings, so that the generation, evaluation and analysis apps can all use it
without depending on one another.
"""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from hearsay.errors import HearsayError


class HearsayCommand(BaseCommand):
    """A command whose library calls may raise HearsayError: it becomes a CommandError (one line, exit 1), never a traceback.

    Commands stay thin: parse options, call a library function, print its summary; no try/except of their own.
    `interrupted` is the line printed when the user presses Ctrl-C: say what was kept and how to go on.
    """

    interrupted = "interrupted"

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except HearsayError as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError(self.interrupted) from None
