"""Every management command shares one base: a library error or Ctrl-C is one line and exit status 1, never a traceback."""
from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest
from django.core.management import call_command, get_commands, load_command_class
from django.core.management.base import CommandError

from config.commands import HearsayCommand
from hearsay.errors import HearsayError

ROOT = Path(__file__).resolve().parent.parent
OUR_APPS = ("analysis", "evaluation", "generation")
OUR_COMMANDS = sorted((name, app) for name, app in get_commands().items() if app in OUR_APPS)


def test_the_base_turns_library_errors_into_one_line():
    class Broken(HearsayCommand):
        def handle(self, *args, **options):
            raise HearsayError("the thing is broken")

    with pytest.raises(CommandError, match="^the thing is broken$") as caught:
        call_command(Broken())
    assert caught.value.returncode == 1 and caught.value.__cause__ is None


def test_ctrl_c_becomes_the_commands_own_interruption_line():
    class Long(HearsayCommand):
        interrupted = "interrupted: rerun the same command to resume"

        def handle(self, *args, **options):
            raise KeyboardInterrupt

    with pytest.raises(CommandError, match="^interrupted: rerun the same command to resume$") as caught:
        call_command(Long())
    assert caught.value.returncode == 1


def test_ctrl_c_from_the_command_line_prints_one_line_and_exits_1():
    class Long(HearsayCommand):
        interrupted = "interrupted: nothing was written"

        def handle(self, *args, **options):
            raise KeyboardInterrupt

    err = io.StringIO()
    with pytest.raises(SystemExit) as stopped:
        Long(stdout=io.StringIO(), stderr=err).run_from_argv(["manage.py", "long"])
    assert stopped.value.code == 1
    assert err.getvalue() == "CommandError: interrupted: nothing was written\n"


def test_every_hearsay_command_uses_the_base():
    assert len(OUR_COMMANDS) >= 19
    for name, app in OUR_COMMANDS:
        command = load_command_class(app, name)
        assert isinstance(command, HearsayCommand), name
        assert command.interrupted.startswith("interrupted"), name


@pytest.mark.parametrize("name, app", OUR_COMMANDS)
def test_no_command_catches_library_errors_or_ctrl_c_itself(name, app):
    """The base does it once; a command's own `except HearsayError` would drift from it."""
    tree = ast.parse((ROOT / app / "management" / "commands" / f"{name}.py").read_text())
    caught = {ast.unparse(h.type) for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler) and h.type is not None}
    assert "HearsayError" not in caught
    if name != "demo":  # demo's Ctrl-C stops the survey server it started last: the normal way out, not an error
        assert "KeyboardInterrupt" not in caught
