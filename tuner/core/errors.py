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
