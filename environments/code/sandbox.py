"""Sandboxes for model-written programs: limits, results, and the backends, chosen in one place.

    bubblewrap  (default on Linux) new pid/net/ipc/uts/mount namespaces, the system read-only,
                home directories hidden, a private size-capped /tmp, no network, no environment,
                --die-with-parent, no new privileges; started as root its server keeps only
                ROOT_CAPS so that programs run as ``nobody`` (whose process count RLIMIT_NPROC
                can cap) with none, else in a user namespace as the calling user.
    docker      a container per sandbox (``container.py``; the ``docker`` extra and an engine):
                its own namespaces, no network, read-only root, private /tmp, the same five
                capabilities, memory and process caps on the whole container.
    process     a plain subprocess with the same rlimits: NOT isolated (files, network and the
                environment of the host are reachable); only when asked for or when neither
                bubblewrap nor a Docker engine is there, with a warning.

Two ways to run:

* ``Sandbox.run(files, command, limits) -> Result``: any command, in a fresh sandbox (about one
  interpreter start plus the namespace set-up).
* ``Sandbox.runner()`` -> a ``WarmRunner``: a fork server inside one long-lived sandbox (the
  interpreter and common modules loaded once); each ``check(program, tests)`` runs the tests in
  the server against a freshly forked program process (``harness.py``), so a run costs
  milliseconds. The code environment uses this; each scoring worker starts its own, lazily,
  and it dies with it. A runner keeps its processes on one CPU while it holds that CPU's claim
  (``claim_cpu``: one runner per CPU, across every process on the machine).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from environments.code import container, harness
from environments.code.limits import ROOT_CAPS, STATUSES, Limits, Result, SandboxUnavailable

BACKENDS = ("auto", "bubblewrap", "docker", "process")
MASKED = ("/root", "/home")  # hidden behind empty directories (with /tmp, which is private)


def _masks_and_interpreter(tmp_bytes: int) -> list[str]:
    """bwrap args: a private /tmp, empty /root and /home, and the interpreter's folders bound
    back where they lie under those (a virtual environment in a temporary clone, pyenv under
    /root), with the folders above them made passable."""
    args = ["--size", str(tmp_bytes), "--tmpfs", "/tmp"]
    for home in MASKED:
        if os.path.isdir(home):
            args += ["--perms", "0755", "--tmpfs", home]
    made = set()
    for prefix in sorted({sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}):
        if not prefix.startswith(tuple(m + "/" for m in (*MASKED, "/tmp"))) or any(
                prefix.startswith(done + "/") for done in made):
            continue
        for parent in reversed(Path(prefix).parents):  # bwrap would make them 0700: nobody could pass
            if str(parent) not in ("/", "/tmp", *MASKED) and str(parent) not in made:
                args += ["--perms", "0755", "--dir", str(parent)]
                made.add(str(parent))
        args += ["--ro-bind", prefix, prefix]
        made.add(prefix)
    return args


class Sandbox:
    """One backend. ``python``: the interpreter inside (default: this one; in a container, the
    image's ``python3``); ``image``: the docker backend's image."""

    def __init__(self, backend: str = "auto", python: str | None = None, image: str = container.DEFAULT_IMAGE):
        self.backend = choose_backend(backend)
        self.docker = container.engine() if self.backend == "docker" else None
        self.python = python or ("python3" if self.docker else sys.executable)
        self.image = image
        if self.backend == "process":
            warnings.warn("rlvr code sandbox: backend 'process' is NOT isolated: programs can read and write "
                          "the host's files, use its network and see its environment", stacklevel=2)

    # -- the command line of a sandboxed process
    def wrap(self, command: list[str], limits: Limits, binds: list[tuple[str, str]] = ()) -> list[str]:
        if self.backend == "process":
            return command
        args = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--die-with-parent", "--new-session", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
                "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", *_masks_and_interpreter(limits.tmp_mb << 20)]
        for src, dst in binds:
            args += ["--bind", src, dst]
        if os.getuid() == 0:  # privileged bwrap keeps every capability unless told: keep only these
            args += ["--cap-drop", "ALL", *(arg for cap in ROOT_CAPS for arg in ("--cap-add", cap))]
        else:
            args += ["--unshare-user"]
        return args + ["--", *command]

    def serve_command(self, cpu: int | None = None) -> list[str]:
        own = [] if self.backend == "process" else ["--own-pid-namespace"]
        pin = [] if cpu is None else ["--cpu", str(cpu)]
        return [self.python, "-I", "-S", "-c", Path(harness.__file__).read_text(), "serve", *own, *pin]

    def start_server(self, limits: Limits, cpu: int | None) -> LocalServer | container.ContainerServer:
        """A warm server (``harness.serve``) in a new sandbox of this backend."""
        if self.docker is not None:  # the container is pinned instead of its processes
            return container.ContainerServer(self.docker, self.image, self.serve_command(), limits, cpu)
        return LocalServer(self.wrap(self.serve_command(cpu), limits))

    def runner(self, limits: Limits | None = None) -> WarmRunner:
        return WarmRunner(self, limits or Limits())

    def run(self, files: dict[str, str | bytes], command: list[str], limits: Limits | None = None) -> Result:
        """``command`` in a fresh sandbox whose work dir (/tmp/work, writable) holds ``files``."""
        limits = limits or Limits()
        files = {name: content.encode() if isinstance(content, str) else content for name, content in files.items()}
        if self.docker is not None:
            return container.run_in_container(self.docker, self.image, files, command, limits)
        with tempfile.TemporaryDirectory(prefix="rlvr-sandbox-") as work:
            for name, content in files.items():
                path = Path(work, name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            if os.getuid() == 0:  # the command runs as the sandbox user
                for path in [Path(work), *Path(work).rglob("*")]:
                    shutil.chown(path, harness.SANDBOX_UID, harness.SANDBOX_UID)
            inside = work if self.backend == "process" else "/tmp/work"
            launcher = [self.python, "-I", "-c", Path(harness.__file__).read_text(), "launch",
                        json.dumps(limits.wire()), inside, *command]
            binds = [] if self.backend == "process" else [(work, "/tmp/work")]
            return _run_process(self.wrap(launcher, limits, binds), limits)


def _run_process(argv: list[str], limits: Limits) -> Result:
    """Run to exit or the wall limit (then kill its session); output capped; peak memory from
    the kernel's accounting of the process tree."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
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


CPU_CLAIMS = Path(tempfile.gettempdir(), "rlvr-sandbox-cpus")


def claim_cpu() -> tuple[int, int] | None:
    """A CPU for one warm runner, held until the returned descriptor closes (or its process
    dies): an exclusive ``flock`` on a file per CPU this process may use, so that the runners
    of every process on the machine spread over its CPUs. A runner's processes then share one
    CPU, where the tests' calls into the program cost a tenth of what they cost between two.
    -> (cpu, fd), or None when every CPU is held (that runner is left to the scheduler)."""
    if not CPU_CLAIMS.is_dir():
        CPU_CLAIMS.mkdir(exist_ok=True)
        CPU_CLAIMS.chmod(0o1777)  # shared by every user's runners, like /tmp
    for cpu in sorted(os.sched_getaffinity(0)):
        fd = os.open(CPU_CLAIMS / f"{cpu}.lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return cpu, fd
        except OSError:  # held by another runner (or not ours to lock)
            os.close(fd)
    return None


class LocalServer:
    """A warm server as a local process (bubblewrap, process): its stdin and stdout."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
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
        self.restarts = -1

    def _start(self) -> None:
        self.close()
        self.claim = claim_cpu()
        self.server = self.sandbox.start_server(self.limits, None if self.claim is None else self.claim[0])
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
