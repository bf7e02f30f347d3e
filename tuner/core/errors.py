"""The one error type a user sees for bad input."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: a spec file, a CLI option, a storage that does not match.

    The CLI prints ``str(error)`` as one line and exits with status 2, before anything is written.
    """


class SpecError(UsageError):
    """An invalid study spec. The message names the file, the key and what is allowed."""

    def __init__(self, path: str, key: str, message: str) -> None:
        self.path = path
        self.key = key
        self.message = message
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")


def one_line(exc: BaseException) -> str:
    """An exception in one line: its type and its message's last line (a multi-line message
    ends with the cause), and where for a syntax error."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    lines = [line for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[-1].split()) if lines else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
