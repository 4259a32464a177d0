"""Mock databases for the SQL environment: SQLite in memory, one per episode, read-only.

A database comes from a ``.sqlite`` file (read once, read-only, and deserialised into a private
in-memory copy per episode, so no episode can change it for the next, nor the file) or from a
schema and rows given in the task. Queries run locked down: an authorizer admits reads only (no
ATTACH, no writes, no PRAGMA but the schema ones, no ``load_extension``), extension loading is
off, ``query_only`` is on, no database can be attached, and a progress handler stops a query at
its time limit; results are capped in rows and characters.
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
    max_chars: int = 1_000_000  # characters of a result, all cells together


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
    path = Path(db_path)
    if not path.is_absolute() and db_root is not None:
        path = Path(db_root) / path
    if not path.is_file():
        raise FileNotFoundError(f"db_path {db_path!r}: no such file{f' under db_root {db_root!r}' if db_root else ''}")
    return path


def open_database(task: Mapping[str, Any], db_root: str | None = None) -> sqlite3.Connection:
    """A private in-memory copy of the task's database (``db_path``, or ``schema`` + ``rows``),
    locked down (``lock_down``)."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    if task.get("db_path"):
        conn.deserialize(_file_bytes(resolve_path(task["db_path"], db_root)))
    else:
        conn.executescript(task["schema"])
        for table, rows in (task.get("rows") or {}).items():
            if rows:
                marks = ", ".join("?" * len(rows[0]))
                conn.executemany(f'INSERT INTO "{table}" VALUES ({marks})', rows)
        conn.commit()
    lock_down(conn)
    return conn


def _authorize(action, arg1, arg2, db_name, trigger):
    if action in _ALLOWED_ACTIONS:
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _SCHEMA_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def lock_down(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA query_only = ON")
    if hasattr(conn, "enable_load_extension"):
        conn.enable_load_extension(False)
    if hasattr(conn, "setlimit"):  # Python >= 3.11
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1_000_000)  # one string or blob
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
    """The rows, a batch at a time, stopping as soon as a cap is passed (a huge result is never
    held whole)."""
    rows, chars = [], 0
    while batch := cursor.fetchmany(64):
        rows += batch
        chars += sum(len(str(v)) for row in batch for v in row)
        if len(rows) > limits.max_rows:
            raise QueryError(f"result too large: more than {limits.max_rows} rows")
        if chars > limits.max_chars:
            raise QueryError(f"result too large: more than {limits.max_chars} characters")
    return [tuple(r) for r in rows]


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
