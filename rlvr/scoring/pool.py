"""A process pool with a hard wall-clock deadline per task.

Why not ``concurrent.futures`` or a SIGALRM timeout: a verifier stuck inside sympy (a power
tower, a pathological ``simplify``) holds the GIL in C code, so a thread-based timeout cannot
interrupt it, and SIGALRM only works in the main thread of the main interpreter (the known
Math-Verify failure ``signal only works in main thread``). Here each worker is a process that
handles one task at a time; the parent waits on the workers' pipes with a deadline, and a worker
that overruns is killed and replaced. The parent uses no signals, so the pool works from any
thread, inside Ray actors, and in the trainer's reward stage alike.

A worker is built once by ``factory(*factory_args)`` (module-level, so it pickles under the
``spawn`` start method) and then called as ``handler(payload) -> result`` for every task.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

_CTX = mp.get_context("spawn")  # fork is unsafe once threads (Ray, torch) exist in the parent


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The fate of one task: ``status`` is ``ok``, ``error`` (handler raised) or ``timeout``."""

    index: int
    status: str
    value: Any = None
    error: str | None = None
    seconds: float = 0.0


def _worker_main(conn: Connection, factory: Callable, factory_args: tuple) -> None:
    # A terminal's Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        handler = factory(*factory_args)
    except Exception:  # reported to the parent, which fails loudly
        conn.send(("init-error", traceback.format_exc()))
        return
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        try:
            conn.send(("ok", handler(message)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _Worker:
    def __init__(self, factory: Callable, factory_args: tuple):
        self.conn, child = _CTX.Pipe()
        self.process = _CTX.Process(target=_worker_main, args=(child, factory, factory_args), daemon=True)
        self.process.start()
        child.close()
        self.task: tuple[int, float] | None = None  # (index, deadline)
        self.ready = False
        self.started = 0.0

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class DeadlinePool:
    """``workers`` processes; ``map`` yields an ``Outcome`` per payload, in input order."""

    def __init__(self, factory: Callable, factory_args: tuple = (), workers: int = 1,
                 timeout: float = 10.0):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if timeout <= 0:
            raise ValueError("timeout must be > 0 seconds")
        self.factory, self.factory_args = factory, factory_args
        self.timeout = self._call_timeout = timeout
        self.workers = [_Worker(factory, factory_args) for _ in range(workers)]
        self.restarts = 0

    def __enter__(self) -> DeadlinePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for w in self.workers:
            try:
                w.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for w in self.workers:
            w.process.join(timeout=2)
            if w.process.is_alive():
                w.process.kill()
            w.conn.close()
        self.workers = []

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.workers[self.workers.index(worker)] = _Worker(self.factory, self.factory_args)
        self.restarts += 1

    def map(self, payloads: Iterable[Any], timeout: float | None = None) -> Iterator[Outcome]:
        """``timeout``: this call's deadline per payload, when not the pool's (a payload of many
        responses, scored together, gets a deadline sized for them)."""
        self._call_timeout = timeout or self.timeout
        pending = iter(enumerate(payloads))
        done: dict[int, Outcome] = {}
        next_out = 0
        queued: deque[tuple[int, Any]] = deque()
        exhausted = False
        while True:
            if not exhausted and len(queued) < len(self.workers):
                item = next(pending, None)
                if item is None:
                    exhausted = True
                else:
                    queued.append(item)
                    continue
            self._dispatch(queued)
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
            busy = [w for w in self.workers if w.task is not None or not w.ready]
            if exhausted and not queued and all(w.task is None for w in self.workers):
                return
            for outcome in self._collect(busy):
                done[outcome.index] = outcome

    def _dispatch(self, queued: deque) -> None:
        for w in self.workers:
            if queued and w.ready and w.task is None:
                index, payload = queued.popleft()
                w.task = (index, time.monotonic() + self._call_timeout)
                w.started = time.monotonic()
                w.conn.send(payload)

    def _collect(self, busy: list[_Worker]) -> list[Outcome]:
        deadlines = [w.task[1] for w in busy if w.task is not None]
        wait_for = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 60.0
        ready = wait([w.conn for w in busy], timeout=wait_for) if busy else []
        outcomes = []
        for w in list(busy):
            if w.conn in ready:
                outcomes.extend(self._receive(w))
            elif w.task is not None and time.monotonic() >= w.task[1]:
                index = w.task[0]
                outcomes.append(Outcome(index, "timeout", error=f"killed after {self._call_timeout:g} s",
                                        seconds=time.monotonic() - w.started))
                self._replace(w)
        return outcomes

    def _receive(self, w: _Worker) -> list[Outcome]:
        try:
            kind, value = w.conn.recv()
        except (EOFError, OSError):
            # The worker died (OOM kill, segfault): its task is an error, the worker is replaced.
            lost = [Outcome(w.task[0], "error", error="worker process died")] if w.task else []
            self._replace(w)
            return lost
        if kind == "init-error":
            raise RuntimeError(f"pool worker failed to start:\n{value}")
        if kind == "ready":
            w.ready = True
            return []
        index = w.task[0]
        seconds = time.monotonic() - w.started
        w.task = None
        if kind == "ok":
            return [Outcome(index, "ok", value=value, seconds=seconds)]
        return [Outcome(index, "error", error=value, seconds=seconds)]
