"""Command-line conventions shared by every ``tools/*.py`` script.

A bad argument or a bad file is ONE clear line on stderr and exit code 2, never a traceback.
Library code raises ``ValueError`` / ``FileNotFoundError`` / ``OSError`` with the reason; the
guard below turns those into that line. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

EXIT_USAGE = 2
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error: ``<prog>: error: <message>`` and exit 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def fail(prog: str, message: str) -> NoReturn:
    """Print one error line to stderr and exit with code 2."""
    first_line = str(message).strip().splitlines()[0] if str(message).strip() else "unknown error"
    print(f"{prog}: error: {first_line}", file=sys.stderr)
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
