"""What a sandboxed run may use (``Limits``) and what it returns (``Result``), for every backend."""

from __future__ import annotations

import dataclasses

STATUSES = ("passed", "failed", "timeout", "memory_limit", "runtime_error", "sandbox_error")


@dataclasses.dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # whole run, wall clock; everything the run started is killed after
    cpu_s: int = 10
    memory_mb: int = 1024  # address space of each program process (and the sandbox's memory cgroup, + 64 MB)
    file_size_mb: int = 16  # largest file it may write (stdout/stderr included)
    open_files: int = 64
    processes: int = 64  # of the sandbox's uid (and its pids cgroup, where there is one)
    output_bytes: int = 65536  # stdout/stderr kept in the result
    tmp_mb: int = 256  # size of the sandbox's private /tmp

    def wire(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Result:
    status: str  # one of STATUSES
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    peak_memory_mb: float = 0.0
    passed_cases: int = 0
    cases: int = 0
    error: str | None = None
    phases_ms: dict = dataclasses.field(default_factory=dict)  # warm runs: where the time went


class SandboxUnavailable(RuntimeError):
    """The backend asked for cannot run here (not installed, no engine); says what is missing."""


# What the zygote keeps as root (bubblewrap, docker): to make a program process run as the
# sandbox's uid (SETUID, SETGID, CHOWN its work dir) and remove what it left (DAC_OVERRIDE, KILL).
# The test process keeps KILL only (to end a run's processes); a program process has none.
ROOT_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_KILL", "CAP_DAC_OVERRIDE")
