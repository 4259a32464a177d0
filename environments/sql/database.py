"""Mock databases for the SQL environment: SQLite in memory, one per episode, read-only.

A database comes from a ``.sqlite`` file under ``db_root`` (read once, read-only, and
deserialised into a private in-memory copy per episode, so no episode can change it for the
next, nor the file) or from a schema and rows given in the task, which are data too: they are
applied with no database attachable and an authorizer that admits only CREATE TABLE / INDEX /
VIEW and INSERT. Queries run locked down: an authorizer admits reads only (no ATTACH, no writes,
no PRAGMA but the schema ones, no ``load_extension``), extension loading is off, ``query_only``
is on, no database can be attached, a string or blob is at most ``QueryLimits.value_bytes``, and
a progress handler stops a query at its time limit; results are capped in rows and in bytes as
each row is read. (What the progress handler cannot stop, a single long function call, the
executor's deadline does: ``executor.py``.)
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# What the authorizer lets through: reading, and the schema PRAGMAs (table_info & co. are how a
# model asks about columns). Everything else (ATTACH, DETACH, INSERT, UPDATE, DELETE, CREATE,
# DROP, ALTER, other PRAGMAs, transactions) is denied before it runs.
_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_SCHEMA_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "foreign_key_list"}
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}


class QueryError(Exception):
    """A query that failed, was denied, or ran past a limit; the message is what the model sees."""


@dataclasses.dataclass(frozen=True)
class QueryLimits:
    timeout_s: float = 2.0  # per query, wall clock
    max_rows: int = 10_000  # rows a query may return (more is an error: the result is not used)
    max_bytes: int = 1_000_000  # bytes of a result (UTF-8 text, blobs, 8 per number), counted row by row
    value_bytes: int = 100_000  # the longest string or blob any expression may make (SQLITE_LIMIT_LENGTH)


@dataclasses.dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple]
    seconds: float


_FILES: dict[tuple[str, int, int], bytes] = {}  # (path, size, mtime) -> the file's bytes, read once
_FILES_LOCK = threading.Lock()


def _file_bytes(path: Path) -> bytes:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _FILES_LOCK:
        if key not in _FILES:
            # read-only and immutable: SQLite takes no lock and writes no journal next to the file
            source = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
            try:
                _FILES[key] = source.serialize()
            finally:
                source.close()
        return _FILES[key]


def resolve_path(db_path: str, db_root: str | None) -> Path:
    """``db_path`` under ``db_root`` (the working folder when None): a path that leads elsewhere
    (absolute, ``..``, a link out) is refused, as is one that is not a file."""
    root = Path(db_root or ".").resolve()
    path = (root / db_path).resolve()
    if root != path and root not in path.parents:
        raise ValueError(f"db_path {db_path!r} is outside db_root {str(root)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"db_path {db_path!r}: no such file under db_root {str(root)!r}")
    return path


def open_database(task: Mapping[str, Any], db_root: str | None = None,
                  limits: QueryLimits = QueryLimits()) -> sqlite3.Connection:
    """A private in-memory copy of the task's database (``db_path``, or ``schema`` + ``rows``),
    locked down (``lock_down``)."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    _no_attach(conn, limits)
    if task.get("db_path"):
        conn.deserialize(_file_bytes(resolve_path(task["db_path"], db_root)))
    else:
        conn.set_authorizer(_authorize_schema)
        conn.executescript(task["schema"])
        for table, rows in (task.get("rows") or {}).items():
            if rows:
                marks = ", ".join("?" * len(rows[0]))
                name = str(table).replace('"', '""')
                conn.executemany(f'INSERT INTO "{name}" VALUES ({marks})', rows)
        conn.commit()
    lock_down(conn, limits)
    return conn


# What a row's schema may do: make tables, indexes and views, and fill them.
_SCHEMA_ACTIONS = {sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_VIEW,
                   sqlite3.SQLITE_INSERT, sqlite3.SQLITE_READ, sqlite3.SQLITE_SELECT, sqlite3.SQLITE_UPDATE,
                   sqlite3.SQLITE_TRANSACTION}


def _authorize_schema(action, arg1, arg2, db_name, trigger):
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if (arg2 or "").lower() in _DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    if action in (sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_INSERT, sqlite3.SQLITE_READ) and db_name not in ("main", None):
        return sqlite3.SQLITE_DENY  # (sqlite_master of another schema, temp)
    return sqlite3.SQLITE_OK if action in _SCHEMA_ACTIONS else sqlite3.SQLITE_DENY


def _authorize(action, arg1, arg2, db_name, trigger):
    if action in _ALLOWED_ACTIONS:
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _SCHEMA_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _no_attach(conn: sqlite3.Connection, limits: QueryLimits) -> None:
    if hasattr(conn, "enable_load_extension"):
        conn.enable_load_extension(False)
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limits.value_bytes)  # one string or blob
    # LIKE / GLOB cost text x pattern: with patterns of at most 1,000 characters, ~0.1 s at most
    conn.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 1_000)


def lock_down(conn: sqlite3.Connection, limits: QueryLimits = QueryLimits()) -> None:
    conn.set_authorizer(None)
    conn.execute("PRAGMA query_only = ON")
    _no_attach(conn, limits)
    conn.set_authorizer(_authorize)


def run_query(conn: sqlite3.Connection, query: str, limits: QueryLimits = QueryLimits()) -> QueryResult:
    """One read-only statement -> its columns and rows; ``QueryError`` with SQLite's message (or
    the limit it passed) otherwise."""
    if not isinstance(query, str) or not query.strip():
        raise QueryError("empty query")
    start = time.monotonic()
    deadline = start + limits.timeout_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 2_000)
    try:
        cursor = conn.execute(query)
        columns = [d[0] for d in cursor.description or ()]
        rows = _fetch_capped(cursor, limits)
    except sqlite3.OperationalError as err:
        if time.monotonic() > deadline:
            raise QueryError(f"query timed out after {limits.timeout_s:g} s") from None
        raise QueryError(_message(err)) from None
    except (sqlite3.Error, OverflowError, MemoryError, ValueError) as err:
        raise QueryError(_message(err)) from None
    finally:
        conn.set_progress_handler(None, 0)
    return QueryResult(columns, rows, time.monotonic() - start)


def _fetch_capped(cursor: sqlite3.Cursor, limits: QueryLimits) -> list[tuple]:
    """The rows, one at a time, stopping as soon as a cap is passed: at most one row beyond the
    cap is ever held (a row is at most its columns x ``value_bytes``)."""
    rows, size = [], 0
    while (row := cursor.fetchone()) is not None:
        rows.append(row)
        size += sum(_bytes(v) for v in row)
        if len(rows) > limits.max_rows:
            raise QueryError(f"result too large: more than {limits.max_rows} rows")
        if size > limits.max_bytes:
            raise QueryError(f"result too large: more than {limits.max_bytes} bytes")
    return rows


def _bytes(value) -> int:
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    return len(value) if isinstance(value, bytes) else 8


def _message(err: Exception) -> str:
    text = str(err) or type(err).__name__
    if "not authorized" in text or "prohibited" in text:
        return f"{text} (read-only: only SELECT statements may run)"
    return text


def schema_text(conn: sqlite3.Connection) -> str:
    """The database's CREATE TABLE statements, as the ``schema`` tool shows them."""
    conn.set_authorizer(None)  # sqlite_master is read by the tool itself, not by the model's SQL
    try:
        rows = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL "
                            "AND name NOT LIKE 'sqlite_%' ORDER BY name").fetchall()
    finally:
        conn.set_authorizer(_authorize)
    return "\n".join(" ".join(r[0].split()) + ";" for r in rows)


def file_fingerprint(path: str | os.PathLike) -> tuple[int, bytes]:
    """(size, content) of a database file: the tests check that it never changes."""
    data = Path(path).read_bytes()
    return len(data), data
