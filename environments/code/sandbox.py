"""Sandboxes for model-written programs: limits, results, and the backends, chosen in one place.

    bubblewrap  (default on Linux) new pid/net/ipc/uts/mount namespaces; of the host's files
                only the interpreter (its executable, standard library, the shared libraries
                they load, and installed packages a user names), read-only; a private
                size-capped /tmp, a private /proc, a minimal /dev; no network, no environment,
                --die-with-parent, no new privileges, a seccomp filter (``seccomp.py``); a cgroup
                of its own where the machine lets this process make one (``confine.Cgroup``).
                Started as root its server keeps only ROOT_CAPS so that programs run as a uid of
                their own sandbox (``confine.claim_uid``) with none, else in a user namespace as
                the calling user (with --disable-userns).
    docker      a container per sandbox (``container.py``; the ``docker`` extra and an engine):
                its own namespaces (IPC without /dev/shm), no network, read-only root, private
                /tmp, the same five capabilities, the engine's seccomp profile and ours, memory,
                process and CPU caps on the whole container.
    process     a plain subprocess with the same rlimits and seccomp filter: NOT isolated (files,
                network and the environment of the host are reachable); only when asked for or
                when neither bubblewrap nor a Docker engine is there, with a warning.

Two ways to run:

* ``Sandbox.run(files, command, limits) -> Result``: any command, in a fresh sandbox (about one
  interpreter start plus the namespace set-up) that holds the interpreter, the command's
  executable and ``files``.
* ``Sandbox.runner()`` -> a ``WarmRunner``: a fork server inside one long-lived sandbox (the
  interpreter and common modules loaded once); each ``check(program, tests)`` runs the tests in
  the server against a freshly forked program process (``harness.py``), so a run costs
  milliseconds. The code environment uses this; each scoring worker starts its own, lazily,
  and it dies with it. A runner keeps its processes on one CPU while it holds that CPU's claim
  (``claim_cpu``: one runner per CPU, across every process on the machine).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from environments.code import confine, container, harness, seccomp
from environments.code.limits import ROOT_CAPS, STATUSES, Limits, Result, SandboxUnavailable

log = logging.getLogger(__name__)
BACKENDS = ("auto", "bubblewrap", "docker", "process")
SANDBOX_PROCESSES = 4  # the zygote, a spare program process and their unreaped exits, beside a run's own
ZYGOTE_MB = 64  # the zygote's and a spare program process's own pages, beside a run's memory


@functools.cache
def seccomp_filter() -> str | None:
    """The programs' seccomp filter (hex) for this machine, or None (said once)."""
    code = seccomp.program_filter()
    if code is None:
        log.warning("code sandbox: no seccomp filter for this architecture; programs are held by "
                    "namespaces, uid and limits alone")
    return None if code is None else code.hex()


@functools.cache
def _bwrap_can_disable_userns() -> bool:
    """bubblewrap >= 0.8 refuses new user namespaces inside (--disable-userns, with --unshare-user)."""
    out = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout
    version = tuple(int(x) for x in re.findall(r"\d+", out)[:2])
    return version >= (0, 8)


class Sandbox:
    """One backend. ``python``: the interpreter (default: this one; in a container, the image's
    ``python3``); ``packages``: installed packages programs may import (default: none, the
    standard library only); ``image``: the docker backend's image."""

    def __init__(self, backend: str = "auto", python: str | None = None, image: str = container.DEFAULT_IMAGE,
                 packages: tuple[str, ...] | list[str] = ()):
        self.backend = choose_backend(backend)
        self.docker = container.engine() if self.backend == "docker" else None
        self.image, self.packages = image, tuple(packages)
        if self.docker is not None:
            self.python, self.sys_path = python or "python3", ["@site"] if self.packages else []
        else:  # the real executable: the same path inside the sandbox as outside
            self.host_python = python or sys.executable
            self.python = confine.interpreter(self.host_python)["executable"]
            self.sys_path = confine.interpreter_view(self.host_python, self.packages)[1]
        if self.backend == "process":
            warnings.warn("rlvr code sandbox: backend 'process' is NOT isolated: programs can read and write "
                          "the host's files, use its network and see its environment", stacklevel=2)

    # -- the command line of a sandboxed process
    def wrap(self, command: list[str], limits: Limits, binds: list[tuple[str, str]] = (),
             executables: tuple[str, ...] = ()) -> list[str]:
        """bwrap around ``command``: the interpreter's view plus ``executables`` (and what they
        load), ``binds`` (host folder, inside path) writable."""
        if self.backend == "process":
            return command
        view, _ = confine.interpreter_view(self.host_python, self.packages, tuple(executables))
        args = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--die-with-parent", "--new-session", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
                "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",  # (no writable /dev/shm)
                "--size", str(limits.tmp_mb << 20), "--perms", "0755", "--tmpfs", "/tmp", *view]
        for src, dst in binds:
            args += ["--bind", src, dst]
        if os.getuid() == 0:  # privileged bwrap keeps every capability unless told: keep only these
            args += ["--cap-drop", "ALL", *(arg for cap in ROOT_CAPS for arg in ("--cap-add", cap))]
        else:
            args += ["--unshare-user", *(["--disable-userns"] if _bwrap_can_disable_userns() else [])]
        return args + ["--", *command]

    def _harness(self, mode: str, config: dict, *rest: str) -> list[str]:
        config = {"seccomp": seccomp_filter(), "path": self.sys_path, **config}
        return [self.python, "-I", "-S", "-c", Path(harness.__file__).read_text(), mode, json.dumps(config), *rest]

    def start_server(self, limits: Limits, cpu: int | None, uid: int | None,
                     cgroup: confine.Cgroup | None) -> LocalServer | container.ContainerServer:
        """A warm server (``harness.serve``) in a new sandbox of this backend."""
        if self.docker is not None:  # the container is pinned instead of its processes
            command = self._harness("serve", {"uid": uid, "own_pid_namespace": True})
            return container.ContainerServer(self.docker, self.image, command, limits, cpu)
        config = {"uid": uid, "cpu": cpu, "own_pid_namespace": self.backend != "process"}
        fds = []
        if cgroup is not None:
            config.update(cgroup_fds=cgroup.procs_fds, oom_fd=cgroup.events_fd)
            fds = [*cgroup.procs_fds, *([cgroup.events_fd] if cgroup.events_fd is not None else [])]
        return LocalServer(self.wrap(self._harness("serve", config), limits), fds)

    def runner(self, limits: Limits | None = None) -> WarmRunner:
        return WarmRunner(self, limits or Limits())

    def run(self, files: dict[str, str | bytes], command: list[str], limits: Limits | None = None) -> Result:
        """``command`` in a fresh sandbox whose work dir (/tmp/work, writable) holds ``files``;
        inside, of the host, only the interpreter and ``command[0]`` (with what they load)."""
        limits = limits or Limits()
        files = {name: content.encode() if isinstance(content, str) else content for name, content in files.items()}
        uid, held = _claim_uid(os.getuid() == 0 or self.docker is not None)
        try:
            if self.docker is not None:
                launcher = self._harness("launch", {"limits": limits.wire(), "uid": uid}, "/tmp/work",
                                         "--files-on-stdin", *command)
                return container.run_in_container(self.docker, self.image, files, launcher, limits)
            return self._run_here(files, command, limits, uid)
        finally:
            _release(held)

    def _run_here(self, files: dict[str, bytes], command: list[str], limits: Limits, uid: int | None) -> Result:
        with tempfile.TemporaryDirectory(prefix="rlvr-sandbox-") as work:
            for name, content in files.items():
                path = Path(work, name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            if uid is not None:  # the command runs as the sandbox's uid
                for path in [Path(work), *Path(work).rglob("*")]:
                    shutil.chown(path, uid, uid)
            inside = work if self.backend == "process" else "/tmp/work"
            cgroup = confine.Cgroup.create(limits.memory_mb, limits.processes + 1)
            fds = [] if cgroup is None else cgroup.procs_fds
            try:
                launcher = self._harness("launch", {"limits": limits.wire(), "uid": uid, "cgroup_fds": fds},
                                         inside, *command)
                binds = [] if self.backend == "process" else [(work, "/tmp/work")]
                executable = shutil.which(command[0]) or command[0]
                return _run_process(self.wrap(launcher, limits, binds, (executable,)), limits, fds)
            finally:
                if cgroup is not None:
                    cgroup.close()


def _claim_uid(wanted: bool) -> tuple[int | None, int | None]:
    """(uid, descriptor holding it) for one sandbox's programs, or (None, None) when not wanted."""
    if not wanted:
        return None, None
    got = confine.claim_uid()
    if got is None:
        raise SandboxUnavailable(f"every sandbox uid ({confine.UID_SLOTS}) is held")
    return got


def _release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _run_process(argv: list[str], limits: Limits, fds: list[int] = ()) -> Result:
    """Run to exit or the wall limit (then kill its session); output capped; peak memory from
    the kernel's accounting of the process tree. ``fds``: descriptors it inherits."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, pass_fds=fds, env={})
    kept = {proc.stdout: bytearray(), proc.stderr: bytearray()}

    def drain(pipe):
        while chunk := pipe.read1(65536):
            kept[pipe] += chunk[:max(0, limits.output_bytes - len(kept[pipe]))]

    threads = [threading.Thread(target=drain, args=(p,), daemon=True) for p in kept]
    for t in threads:
        t.start()
    deadline, waited = start + limits.wall_s, (0, 0, None)
    while waited[0] == 0 and time.monotonic() < deadline:
        waited = os.wait4(proc.pid, os.WNOHANG)
        time.sleep(0.001 if waited[0] == 0 else 0)
    timed_out = waited[0] == 0
    if timed_out:
        os.killpg(proc.pid, 9)
        waited = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(waited[1])  # (reaped here, not by Popen)
    for t in threads:
        t.join(timeout=1)
    out, err = bytes(kept[proc.stdout]), bytes(kept[proc.stderr])
    status = ("timeout" if timed_out or proc.returncode in (-9, -24) else
              "memory_limit" if b"MemoryError" in err else "passed" if proc.returncode == 0 else "failed")
    return Result(status, proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                  round(time.monotonic() - start, 4), round(waited[2].ru_maxrss / 1024, 1))


def claim_cpu() -> tuple[int, int] | None:
    """A CPU for one warm runner (``confine.claim``), so that the runners of every process on
    the machine spread over its CPUs. A runner's processes then share one CPU, where the tests'
    calls into the program cost a tenth of what they cost between two. -> (cpu, fd), or None
    when every CPU is held (that runner is left to the scheduler)."""
    return confine.claim("cpus", sorted(os.sched_getaffinity(0)))


class LocalServer:
    """A warm server as a local process (bubblewrap, process): its stdin and stdout."""

    def __init__(self, argv: list[str], fds: list[int] = ()):
        # an empty environment: bwrap, the sandbox's pid 1, keeps the one it was started with
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True, pass_fds=fds, env={})
        self.write_fd, self.read_fd = self.proc.stdin.fileno(), self.proc.stdout.fileno()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


class WarmRunner:
    """A fork server in one sandbox, on a CPU of its own when one is free (``claim_cpu``);
    ``check`` runs a program against tests in milliseconds. Restarted when it dies (a program
    that killed it, a crash); closed with its owner."""

    def __init__(self, sandbox: Sandbox, limits: Limits):
        self.sandbox, self.limits = sandbox, limits
        self.server: LocalServer | container.ContainerServer | None = None
        self.claim: tuple[int, int] | None = None
        self.uid: tuple[int | None, int | None] = (None, None)
        self.cgroup: confine.Cgroup | None = None
        self.restarts = -1

    def _start(self) -> None:
        """A new server, with a CPU, a uid (as root, or in a container) and a cgroup of its own."""
        self.close()
        self.claim = claim_cpu()
        self.uid = _claim_uid(os.getuid() == 0 or self.sandbox.docker is not None)
        if self.sandbox.docker is None:
            self.cgroup = confine.Cgroup.create(self.limits.memory_mb + ZYGOTE_MB,
                                                self.limits.processes + SANDBOX_PROCESSES,
                                                cpus=None if self.claim is not None else 1.0)
        self.server = self.sandbox.start_server(self.limits, None if self.claim is None else self.claim[0],
                                                self.uid[0], self.cgroup)
        self.restarts += 1
        try:
            harness.read_frame(self.server.read_fd, time.monotonic() + 60)  # its "ready"
        except (TimeoutError, EOFError, ValueError) as err:
            self.close()
            where = (f"image {self.sandbox.image}" if self.sandbox.docker else
                     f"command: {' '.join(self.sandbox.wrap(['python'], self.limits))}")
            raise SandboxUnavailable(f"the {self.sandbox.backend} sandbox did not start ({type(err).__name__}); "
                                     f"{where}") from None

    def check(self, program: str, tests: dict, limits: Limits | None = None) -> Result:
        """Run ``program`` (P) and ``tests`` ({"code": ..., optional "call" and "entry_point"})."""
        limits = limits or self.limits
        for attempt in range(2):
            if self.server is None or not self.server.alive():
                self._start()
            secret = secrets.token_hex(16)
            try:
                harness.write_frame(self.server.write_fd, {"program": program, "limits": limits.wire()})
                harness.write_frame(self.server.write_fd, {"tests": tests, "secret": secret})
                reply = harness.read_frame(self.server.read_fd, time.monotonic() + limits.wall_s + 10)
            except (TimeoutError, EOFError, ValueError, OSError):
                self.close()  # the server died with this run (a program that killed it): once more
                if attempt:
                    return Result("sandbox_error", error="the sandbox's server died during the run")
                continue
            return _result(reply, secret)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.cgroup is not None:
            self.cgroup.close()
            self.cgroup = None
        _release(self.uid[1])
        self.uid = (None, None)
        if self.claim is not None:
            os.close(self.claim[1])
            self.claim = None

    def __del__(self):
        try:
            self.close()
        except (AttributeError, TypeError):  # at interpreter exit, with modules torn down: the
            pass  # server dies with this process anyway (--die-with-parent)


def _result(reply: dict, secret: str) -> Result:
    """The test process's report, believed only with this run's secret."""
    if reply.get("status") == "sandbox_error":
        return Result("sandbox_error", error=reply.get("error"))
    if reply.get("secret") != secret:
        return Result("sandbox_error", error="a report without this run's secret")
    status = reply.get("status") if reply.get("status") in STATUSES else "sandbox_error"
    return Result(status, None, reply.get("stdout", ""), reply.get("stderr", ""), reply.get("wall_s", 0.0),
                  reply.get("peak_memory_mb", 0.0), reply.get("passed_cases", 0), reply.get("cases", 0),
                  reply.get("error"), reply.get("phases_ms", {}))


def choose_backend(name: str = "auto") -> str:
    """The one place a backend is chosen: bubblewrap where it exists, else a Docker engine that
    answers; 'process' only when asked for or when neither is there (with a warning)."""
    if name not in BACKENDS:
        raise ValueError(f"sandbox backend {name!r}: expected one of {', '.join(BACKENDS)}")
    if name == "bubblewrap" and shutil.which("bwrap") is None:
        raise SandboxUnavailable("bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap; "
                                 "`make setup` does it when run as root)")
    if name == "docker":
        container.engine()  # says what is missing
    if name != "auto":
        return name
    if shutil.which("bwrap"):
        return "bubblewrap"
    try:
        container.engine()
        return "docker"
    except SandboxUnavailable:
        return "process"
