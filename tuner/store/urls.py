"""Storage URLs: which back end, which SQLite file, whether it may be written.

Plain functions over SQLAlchemy URLs; nothing here opens a connection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tuner.core.errors import UsageError

#: Back ends the work queue can lock (tuner.store.locking).
BACKENDS = ("sqlite", "postgresql")
DEFAULT_URL = "sqlite:///results/tuner.db"
#: The environment variable naming the storage when --storage is not given.
ENV_VAR = "TUNER_STORAGE"


def backend(url: str) -> str:
    """The SQLAlchemy back-end name of ``url`` (``sqlite``, ``postgresql``, ...)."""

    return make_url(url).get_backend_name()


def check_backend(url: str) -> None:
    """Raises UsageError for a back end the work queue cannot lock."""
    name = backend(url)
    if name not in BACKENDS:
        raise UsageError(f"--storage: back end {name!r} is not supported; allowed: "
                         f"{', '.join(BACKENDS)} (e.g. postgresql+psycopg://user@host/db)")


def resolve_url(url: str | None) -> str:
    """``url``, else ``$TUNER_STORAGE``, else a SQLite file ``results/tuner.db`` (git-ignored).

    Raises:
        UsageError: an empty ``url``, not a SQLAlchemy URL, or a SQLite file that is a folder,
            is not a database, or lies in a folder that does not exist.
    """

    if url is not None and not url.strip():
        raise UsageError("--storage: empty; allowed: a SQLAlchemy URL, e.g. "
                         "sqlite:///results/tuner.db or postgresql+psycopg://user@host/db "
                         "(omit --storage for $TUNER_STORAGE or the default)")
    url = url or os.environ.get(ENV_VAR) or DEFAULT_URL
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError(f"--storage: {url!r} is not a SQLAlchemy URL; allowed: e.g. "
                         "sqlite:///results/tuner.db or postgresql+psycopg://user@host/db") from None

    check_backend(url)
    if parsed.drivername == "postgresql":  # SQLAlchemy's default driver, psycopg2, is not ours
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    db = sqlite_file(url)
    if db is not None:
        parent = db.parent
        if not parent.exists():
            if url == DEFAULT_URL:
                parent.mkdir(parents=True, exist_ok=True)
            else:
                raise UsageError(f"--storage: folder {parent} of {url!r} does not exist")
        if db.is_dir():
            raise UsageError(f"--storage: {db} is a folder; allowed: a SQLite database file "
                             f"(e.g. sqlite:///{db / 'tuner.db'})")
        if db.exists() and not _is_sqlite(db):
            raise UsageError(f"--storage: {db} is not a SQLite database; allowed: a SQLite "
                             "database file or a new file name")
    return url


def _is_sqlite(db: Path) -> bool:
    """Whether ``db`` is empty (SQLite makes it a database) or starts with SQLite's header."""
    try:
        with open(db, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise UsageError(f"--storage: {db}: cannot be read ({exc.strerror})") from None
    return head in (b"", b"SQLite format 3\x00")


def _uri_flag(value: Any) -> bool:
    if isinstance(value, tuple):
        value = value[-1]
    return str(value).lower() in ("1", "true", "yes", "on")


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other back ends and in-memory SQLite),
    also of a URI filename (``sqlite:///file:PATH?mode=ro&uri=true``)."""


    u = make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    if u.database.startswith("file:") and _uri_flag(u.query.get("uri", "")):
        path = unquote(urlsplit(u.database).path)
        if not path or path == ":memory:" or u.query.get("mode") == "memory":
            return None
        return Path(path)
    return Path(u.database)


def in_memory(url: str) -> bool:
    """Whether ``url`` is an in-memory SQLite database (gone with its connection)."""
    return sqlite_file(url) is None and url.startswith("sqlite")


def _read_only_url(url: str) -> bool:
    """Whether a SQLite URL asks for read-only access (``mode=ro`` or ``immutable=1``)."""

    q = make_url(url).query
    return q.get("mode") == "ro" or _uri_flag(q.get("immutable", "0"))


def writable(url: str) -> bool:
    """Whether ``tuner run`` could write the storage (always True for PostgreSQL: the server
    decides)."""
    db = sqlite_file(url)
    if db is None:
        return True
    if _read_only_url(url):
        return False
    if db.exists() and not os.access(db, os.W_OK):
        return False
    return os.access(db.parent if str(db.parent) else ".", os.W_OK)
