"""Command-line conventions shared by every ``tools/*.py`` script.

A bad argument or a bad file is ONE clear line on stderr and exit code 2, never a traceback.
Library code raises ``ValueError`` / ``FileNotFoundError`` / ``OSError`` with the reason; the
guard below turns those into that line. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

EXIT_USAGE = 2
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error: ``<prog>: error: <message>`` and exit 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# how torch re-raises an exception of a DataLoader worker in the main process: its type and the worker on the
# first line, then the worker's traceback, whose last line is the original "<type>: <message>"
_WORKER_ERROR = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.")


def error_line(message: str) -> str:
    """The line of an error message that says what went wrong: its first, or for an error that torch
    re-raised from a DataLoader worker, the worker's own message (the last line of its traceback)."""
    lines = str(message).strip().splitlines() or ["unknown error"]
    worker = _WORKER_ERROR.fullmatch(lines[0])
    if worker is not None and len(lines) > 1:
        original = re.fullmatch(rf"(?:[\w.]+\.)?{worker.group(1)}: (.+)", lines[-1])
        if original is not None:
            return original.group(1)
    return lines[0]


def fail(prog: str, message: str) -> NoReturn:
    """Print one error line (see :func:`error_line`) to stderr and exit with code 2."""
    print(f"{prog}: error: {error_line(message)}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> NoReturn:
    """Run ``main(argv)``; user errors become one stderr line + exit 2, Ctrl-C exits 130."""
    prog = sys.argv[0].rsplit("/", 1)[-1]
    try:
        code = main(argv)
    except USER_ERRORS as e:
        fail(prog, str(e) or type(e).__name__)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code or 0)
