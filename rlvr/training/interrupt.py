"""Stopping a run on request: Ctrl-C (SIGINT) or SIGTERM (what Slurm and Kubernetes send at
preemption or at the time limit).

The first signal only asks: the training loop stops at the next step boundary (a step that has
not reached the learner yet is abandoned and its prompts put back), writes a checkpoint, shuts
its actors down and exits with 128 + the signal's number; relaunching the same command resumes
exactly there. A second signal exits at once.

Worker processes the run starts (reward scorers, Ray's) share the terminal's process group and
receive the same Ctrl-C; they ignore it and stop when the driver stops them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


class Interrupted(Exception):
    """Raised where the run stops because of a signal; ``signum`` says which."""

    def __init__(self, signum: int, where: str):
        super().__init__(where)
        self.signum, self.where = signum, where

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Installs SIGINT and SIGTERM handlers (main thread only) while active; ``check(where)``
    raises ``Interrupted`` once a signal came."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        self.install()
        return self

    def install(self) -> None:
        """(Again, after ``ray.init``: Ray's core installs its own SIGTERM handler, which dumps
        a stack trace and kills the driver.)"""
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                previous = signal.signal(s, self._handle)
                self._previous.setdefault(s, previous)

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            print(f"\nrlvr: {signal.Signals(signum).name} again: exiting now, without a checkpoint", file=sys.stderr,
                  flush=True)
            os._exit(128 + signum)
        self.signum = signum
        print(f"\nrlvr: {signal.Signals(signum).name}: stopping at the end of this step and writing a checkpoint "
              "(again to exit at once)", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self, where: str) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum, where)


def ignore_interrupts() -> None:
    """For worker processes: the driver decides when they stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
