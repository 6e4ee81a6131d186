"""What every command shares at the terminal: a user's mistake (`StudyError`) as one line and exit code 2."""
from __future__ import annotations

import re
import sys

CREDENTIALS = re.compile(r"(://[^/\s:@]*):[^/\s@]*@")


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def redacted(text: str) -> str:
    """`text` with the password of every URI in it (`scheme://user:password@host`) replaced by ***."""
    return CREDENTIALS.sub(r"\1:***@", text)


def first_line(text: str) -> str:
    """The first non-empty line of an exception's message (what follows is detail or advice)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def store_message(exc: Exception) -> str:
    """The first line of a store's exception, without the driver's name and the SQL that sqlalchemy wraps it in."""
    return re.sub(r"^\([\w.]+\)\s*", "", first_line(str(exc))).split(" [SQL:")[0]


def last_line(text: str) -> str:
    """The last line of a traceback: the exception and its message."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "unknown error"


MAX_LINE = 1000  # characters of an error line: values quoted in it are cut shorter (isnm.config.shown); this is the guard


def user_error_exit(exc: Exception) -> int:
    """For a command's main: a user's mistake (a StudyError, or an MLflow store that fails, which is the
    user's setting) prints one line and gives exit code 2; anything else is a bug and is raised again
    with its traceback. Passwords in URIs never reach the terminal."""
    if isinstance(exc, StudyError):
        print(f"error: {redacted(str(exc))[:MAX_LINE]}", file=sys.stderr)
        return 2
    if type(exc).__module__.startswith(("mlflow", "sqlalchemy")):  # sqlalchemy's: a store damaged past its first page
        print(f"error: MLflow store: {type(exc).__name__}: {redacted(store_message(exc))}", file=sys.stderr)
        return 2
    raise exc


class StudyError(Exception):
    """A user's study file (or command line) is wrong; `str()` is the one line to print."""
