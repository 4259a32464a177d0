"""Queries in a process of their own, so that a deadline holds whatever SQLite is doing.

SQLite's progress handler (``database.run_query``) stops a query between virtual-machine steps,
but not inside one: a single ``LIKE``, ``instr`` or ``replace`` over long strings is one step,
and ran for 25 s under a 2 s limit. Here every database of a process lives in one child process
(``main``), which this process waits for at most the query's
time limit (+ ``GRACE_S``), then kills: the query fails with "timed out", and the next request
starts a new child, where the databases are opened again from their tasks (each handle keeps
what made it). The child also has an address-space cap (``MEMORY_MB``): a result that would not
fit fails there, not here.

One ``Executor`` serves every environment of a process (``shared()``), one request at a time;
a request costs a pipe round trip (~50 us) beside the query.
"""

from __future__ import annotations

import itertools
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

from environments.sql.database import QueryError, QueryLimits, QueryResult, open_database, run_query, schema_text

GRACE_S = 0.5  # beyond a query's own time limit, for the round trip and a loaded machine
OPEN_TIMEOUT_S = 60.0  # opening a database (a large file is read once per process)
MEMORY_MB = 4096  # the child's address space: every open database and one result


class Executor:
    """The parent's end: ``open(task, db_root) -> handle``, ``query``, ``schema``, ``close``."""

    def __init__(self):
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.opened: dict[int, tuple[Mapping[str, Any], str | None, QueryLimits]] = {}  # handle -> what made it
        self.live: set[int] = set()  # handles open in the current child
        self.handles = itertools.count()
        self.restarts, self.pid = 0, os.getpid()

    # -- the child
    def _start(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-c", "from environments.sql.executor import main; main()",
                                      str(to_child_r), str(from_child_w)], pass_fds=(to_child_r, from_child_w),
                                     stdin=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self.conn = _Duplex(from_child_r, to_child_w)
        self.live = set()

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.conn.close()
        self.proc, self.conn, self.live = None, None, set()
        self.restarts += 1

    def _call(self, request: tuple, timeout: float):
        """One request -> its value; QueryError for a failed one. The child is killed when it
        does not answer in ``timeout`` seconds (the request then "timed out")."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self._kill()
            self._start()
        if request[0] in ("query", "schema") and request[1] not in self.live:
            self._reopen(request[1])
        try:
            self.conn.send(request)
            if not self.conn.poll(timeout):
                self._kill()
                raise QueryError(f"query timed out after {timeout - GRACE_S:g} s")
            status, value = self.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self._kill()  # it died (out of memory): the next request starts another
            raise QueryError("the query's process died (out of memory?)") from None
        if status == "error":
            raise QueryError(value)
        return value

    def _reopen(self, handle: int) -> None:
        task, db_root, limits = self.opened[handle]
        self._call(("open", handle, task, db_root, limits), OPEN_TIMEOUT_S)
        self.live.add(handle)

    # -- what environments call
    def open(self, task: Mapping[str, Any], db_root: str | None, limits: QueryLimits) -> int:
        with self.lock:
            handle = next(self.handles)
            self.opened[handle] = (dict(task), db_root, limits)
            try:
                self._call(("open", handle, dict(task), db_root, limits), OPEN_TIMEOUT_S)
            except QueryError:
                del self.opened[handle]
                raise
            self.live.add(handle)
            return handle

    def query(self, handle: int, sql: str, limits: QueryLimits) -> QueryResult:
        with self.lock:
            return self._call(("query", handle, sql, limits), limits.timeout_s + GRACE_S)

    def schema(self, handle: int) -> str:
        with self.lock:
            return self._call(("schema", handle), OPEN_TIMEOUT_S)

    def close(self, handle: int) -> None:
        with self.lock:
            self.opened.pop(handle, None)
            if handle in self.live:
                try:
                    self._call(("close", handle), OPEN_TIMEOUT_S)
                except QueryError:
                    pass
                self.live.discard(handle)


class _Duplex(Connection):
    """One ``Connection`` over two pipe ends (read, write)."""

    def __init__(self, read_fd: int, write_fd: int):
        super().__init__(read_fd)
        self._writer = Connection(write_fd)

    def send(self, obj) -> None:
        self._writer.send(obj)

    def close(self) -> None:
        super().close()
        self._writer.close()


_SHARED: Executor | None = None
_SHARED_LOCK = threading.Lock()


def shared() -> Executor:
    """This process's executor (made on first use; a forked child makes its own)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or _SHARED.pid != os.getpid():
            _SHARED = Executor()
        return _SHARED


# ---------------------------------------------------------------- the child

def serve(conn: Connection) -> None:
    """Requests until the pipe closes: ("open", handle, task, db_root, limits), ("query",
    handle, sql, limits), ("schema", handle), ("close", handle) -> ("ok", value) or ("error",
    the message the model sees)."""
    databases = {}
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        kind, handle = request[0], request[1]
        try:
            if kind == "open":
                databases[handle] = open_database(request[2], request[3], request[4])
                value = None
            elif kind == "query":
                value = run_query(databases[handle], request[2], request[3])
            elif kind == "schema":
                value = schema_text(databases[handle])
            else:
                databases.pop(handle).close()
                value = None
            reply = ("ok", value)
        except QueryError as err:
            reply = ("error", str(err))
        except MemoryError:
            reply = ("error", "result too large for memory")
        except Exception as err:  # noqa: BLE001 - a bad row's database: its message, for the row's error
            reply = ("error", f"{type(err).__name__}: {err}")
        conn.send(reply)


def main() -> None:
    """The child: ``python -c "...; main()" READ_FD WRITE_FD``."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_MB << 20,) * 2)
    serve(_Duplex(int(sys.argv[1]), int(sys.argv[2])))
