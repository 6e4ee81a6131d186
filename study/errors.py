"""What every command shares at the terminal: a user's mistake (`StudyError`) as one line and exit code 2."""
from __future__ import annotations

import re
import sys

CREDENTIALS = re.compile(r"(://[^/\s:@]*):[^/\s@]*@")


def redacted(text: str) -> str:
    """`text` with the password of every URI in it (`scheme://user:password@host`) replaced by ***."""
    return CREDENTIALS.sub(r"\1:***@", text)


def first_line(text: str) -> str:
    """The first non-empty line of an exception's message (what follows is detail or advice)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def last_line(text: str) -> str:
    """The last line of a traceback: the exception and its message."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "unknown error"


def user_error_exit(exc: Exception) -> int:
    """For a command's main: a user's mistake (a StudyError, or an MLflow store that fails, which is the
    user's setting) prints one line and gives exit code 2; anything else is a bug and is raised again
    with its traceback. Passwords in URIs never reach the terminal."""
    if isinstance(exc, StudyError):
        print(f"error: {redacted(str(exc))}", file=sys.stderr)
        return 2
    if type(exc).__module__.startswith("mlflow"):
        print(f"error: MLflow: {type(exc).__name__}: {redacted(first_line(str(exc)))}", file=sys.stderr)
        return 2
    raise exc


class StudyError(Exception):
    """A user's study file (or command line) is wrong; `str()` is the one line to print."""
