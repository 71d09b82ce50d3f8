"""The base of every Hearsay management command: a library error or Ctrl-C reaches the user as one line, exit 1.

It lives in `config`, beside the settings, so that the generation, evaluation and analysis apps can all use it
without depending on one another.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator

from django.core.management.base import BaseCommand, CommandError, CommandParser

from hearsay.errors import HearsayError


def one_line(message: str) -> str:
    """The message on one line: a line break inside a value it quotes (a path, a cell) is shown escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _texts(value) -> Iterator[str]:
    if isinstance(value, (str, os.PathLike)):
        yield str(os.fspath(value))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)


def out_of_memory(exc: BaseException) -> bool:
    """An allocation the machine refused: numpy's MemoryError, torch's on a GPU, or torch's CPU allocator."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # only a command that loaded torch can have hit its allocators
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


class _OneLineParser(CommandParser):
    """Django's parser, except that a mistake on the command line (an unknown option, a value that is no number,
    a missing argument) is one line and exit status 1 like every other refusal, not the usage block."""

    def error(self, message):
        if self.called_from_command_line:
            self.exit(1, f"CommandError: {one_line(message)} (see {self.prog} --help)\n")
        super().error(message)


def _one_line_errors(parser: CommandParser) -> None:
    parser.__class__ = _OneLineParser
    for action in parser._actions:  # subcommands (mturk's actions) parse their own options
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _one_line_errors(sub)


class HearsayCommand(BaseCommand):
    """A command whose library calls may raise HearsayError: it becomes a CommandError (one line, exit 1), never a traceback.

    Commands stay thin: parse options, call a library function, print its summary; no try/except of their own.
    `interrupted` is the line printed when the user presses Ctrl-C: say what was kept and how to go on.
    An argument holding a NUL byte (possible only from code: call_command) is refused here, for every command,
    before the operating system or a database sees it; a value the parser refuses (not a number, not a choice,
    missing), and an allocation the machine refuses (sizes far beyond it), are one line too.
    """

    interrupted = "interrupted"

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        _one_line_errors(parser)
        return parser

    def execute(self, *args, **options):
        try:
            for value in (*args, *options.values()):
                for text in _texts(value):
                    if "\x00" in text:
                        raise HearsayError(f"the argument {text!r} contains a NUL byte; no path or value may")
            return super().execute(*args, **options)
        except HearsayError as exc:
            raise CommandError(one_line(str(exc))) from None
        except CommandError as exc:
            if one_line(str(exc)) == str(exc):
                raise
            raise CommandError(one_line(str(exc)), returncode=exc.returncode) from None
        except KeyboardInterrupt:
            raise CommandError(self.interrupted) from None
        except (MemoryError, RuntimeError) as exc:
            if not out_of_memory(exc):
                raise
            raise CommandError("out of memory: the sizes asked for (a model, a batch, a count) need more memory than "
                               "this machine has; ask for less") from None
