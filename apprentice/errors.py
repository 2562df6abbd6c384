"""The one error type a user can fix.

Every command-line entry point prints a `UserError` as one line (`apprentice: error: …`) and
exits with code 2, without a traceback (`apprentice --debug …` shows it). Core modules raise
subclasses that also derive from the built-in type callers catch (`ValueError`,
`FileNotFoundError`), so library code keeps its usual contract.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake in the command line, the setup or a file: the message says what and where."""


class UserValueError(UserError, ValueError):
    """A wrong value (a typo in a key, a damaged file)."""


class UserPathError(UserError, FileNotFoundError):
    """A path that is not there, or is not what the command needs."""


# Besides UserError: a path that is not there or not readable is the user's to fix, and the
# OS's message names it. Anything else is a bug and keeps its traceback.
ONE_LINE: tuple[type[BaseException], ...] = (
    UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
    FileExistsError,
)  # fmt: skip


def run_command(
    func: Callable[[argparse.Namespace], int],
    a: argparse.Namespace,
    debug: bool = False,
    also: tuple[type[BaseException], ...] = (),
    prog: str = "apprentice",
) -> int:
    """Runs a command's function: a user's mistake (`ONE_LINE`, plus `also`) is one line on
    stderr, `PROG: error: MESSAGE`, and exit code 2, as argparse does for a wrong option. A
    command's own `SystemExit("message")` goes out the same way; a Ctrl-C the command did not
    handle is `PROG: interrupted` and exit code 130. debug=True lets the exception
    through with its traceback, as does APPRENTICE_DEBUG=1 in the environment (what `apprentice
    --debug` sets for the commands it runs as child processes)."""
    debug = debug or os.environ.get("APPRENTICE_DEBUG") == "1"
    try:
        return func(a)
    except ONE_LINE + also as exc:
        if debug:
            raise
        message = _os_error(exc) if isinstance(exc, OSError) and exc.filename else str(exc)
    except SystemExit as exc:
        if debug or not isinstance(exc.code, str):
            raise
        message = exc.code
    except KeyboardInterrupt:  # Ctrl-C that no command handled: 128 + SIGINT, as a shell's
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def _os_error(exc: OSError) -> str:
    """`[Errno 2] No such file or directory: 'x'` → `x: no such file or directory`."""
    reason = (exc.strerror or type(exc).__name__).lower()
    return f"{exc.filename}: {reason}"
