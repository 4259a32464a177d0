"""The ``docker`` sandbox backend: the same server (``harness.py``) in a container, the same
limits as container options. For hosts with a Docker engine; needs the ``docker`` extra (the
Docker SDK for Python). Chosen in one place with the others (``sandbox.choose_backend``).

What the container isolates: its own pid, net (``network_mode=none``), ipc (``ipc_mode=none``:
no /dev/shm), uts and mount namespaces; a read-only root file system with a private size-capped
``/tmp``; every capability dropped but the five the server needs (``sandbox.ROOT_CAPS``: program
processes run as a uid of their own sandbox with none, and no new privileges); the engine's
default seccomp profile, and inside it the harness's own filter (``seccomp.py``); memory (shared
memory included), process count, CPU time (one CPU) and CPU set of the whole container capped;
the host's environment, files and network are not there. The image must have ``python3``
(default: the official ``python:X.Y-slim`` of this interpreter's version).

A warm server talks over the container's attached stdin/stdout: the engine multiplexes the
container's output into frames (``demux``), which a thread unpacks into a pipe, so that the
runner reads it exactly as it reads a local server's stdout.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import threading
import time

from environments.code import harness
from environments.code.limits import ROOT_CAPS, Limits, Result, SandboxUnavailable

DEFAULT_IMAGE = f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"
SERVER_MB = 256  # the server's and the zygote's own memory, on top of the program's limit
SERVER_PROCESSES = 8  # the container's init, the server, its zygote and spare
HEADER = struct.Struct(">BxxxI")  # stream (1 stdout, 2 stderr), 3 zero bytes, payload length


def engine():
    """A client of the Docker engine that answers, or SandboxUnavailable saying what is missing."""
    try:
        import docker  # noqa: PLC0415 - an optional extra, needed only by this backend
    except ImportError:
        raise SandboxUnavailable("the docker sandbox needs the Docker SDK: pip install 'rlvr[docker]'") from None
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as err:
        raise SandboxUnavailable(f"no Docker engine answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}: "
                                 f"{str(err).splitlines()[0][:200]}); start one, or use backend 'bubblewrap'") from None
    return client


def container_options(limits: Limits, cpu: int | None = None) -> dict:
    """``Limits`` as keyword arguments of ``containers.create``. The per-program rlimits (address
    space, CPU time, file size, open files, processes of the sandbox's uid) are set by the harness inside,
    as in every backend; these cap the container as a whole."""
    options = {
        "network_mode": "none",
        "ipc_mode": "none",
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={limits.tmp_mb}m,mode=755"},  # programs write their work dirs only
        "mem_limit": f"{limits.memory_mb + SERVER_MB}m",
        "memswap_limit": f"{limits.memory_mb + SERVER_MB}m",  # the same: no swap
        "pids_limit": limits.processes + SERVER_PROCESSES,
        "nano_cpus": 1_000_000_000,
        "cap_drop": ["ALL"],
        "cap_add": [cap.removeprefix("CAP_") for cap in ROOT_CAPS],
        "security_opt": ["no-new-privileges"],
        "user": "0",  # root inside, so that programs can be given the sandbox's uid
        "environment": {"PATH": "/usr/local/bin:/usr/bin:/bin"},
        "init": True,  # a real init reaps what the programs orphan
        "stdin_open": True,
        "tty": False,
        "detach": True,
    }
    if cpu is not None:
        options["cpuset_cpus"] = str(cpu)
    return options


def demux(buffer: bytearray) -> tuple[bytes, bytes]:
    """Take the complete frames off the front of ``buffer`` (the engine's attach stream, tty
    off) -> (stdout, stderr) payloads; a partial frame stays in ``buffer`` for the next call."""
    out, err = bytearray(), bytearray()
    while len(buffer) >= HEADER.size:
        stream, size = HEADER.unpack_from(buffer)
        if len(buffer) < HEADER.size + size:
            break
        (out if stream == 1 else err).extend(buffer[HEADER.size:HEADER.size + size])
        del buffer[:HEADER.size + size]
    return bytes(out), bytes(err)


class ContainerServer:
    """A warm server (``harness.serve``) in a container: ``write_fd`` reaches its stdin,
    ``read_fd`` gives its stdout, like a local server process."""

    def __init__(self, client, image: str, command: list[str], limits: Limits, cpu: int | None):
        self.container = client.containers.create(image, command, **container_options(limits, cpu))
        attached = self.container.attach_socket(params={"stdin": 1, "stdout": 1, "stream": 1})
        self.socket = getattr(attached, "_sock", attached)  # the SDK wraps the raw socket
        self.write_fd = self.socket.fileno()
        self.read_fd, self._pipe_w = os.pipe()
        self.container.start()
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        """Container stdout -> the pipe, until either side closes."""
        pending = bytearray()
        try:
            while chunk := self.socket.recv(65536):
                pending += chunk
                out, _ = demux(pending)
                view = memoryview(out)
                while view:
                    view = view[os.write(self._pipe_w, view):]
        except OSError:
            pass
        finally:
            os.close(self._pipe_w)

    def alive(self) -> bool:
        return self._pump_thread.is_alive()  # its output ends with it (asking the engine costs ms)

    def close(self) -> None:
        try:
            self.container.remove(force=True)  # kills everything in it
        except Exception:  # noqa: BLE001 - already gone, or the engine went away: nothing to free
            pass
        self.socket.close()
        os.close(self.read_fd)


def run_in_container(client, image: str, files: dict[str, bytes], launcher: list[str], limits: Limits) -> Result:
    """``launcher`` (the harness's ``launch ... /tmp/work --files-on-stdin command``) in a fresh
    container: the harness writes ``files`` in the work dir (the root file system is read-only,
    and /tmp is the container's own tmpfs), then becomes the command with the run's limits, uid
    and seccomp filter."""
    start = time.monotonic()
    container = client.containers.create(image, launcher, **container_options(limits))
    try:
        attached = container.attach_socket(params={"stdin": 1, "stream": 1})
        sock = getattr(attached, "_sock", attached)
        container.start()
        payload = {name: content.hex() for name, content in files.items()}
        frame = json.dumps({"files": payload}).encode()
        sock.sendall(harness.FRAME.pack(len(frame)) + frame)
        sock.close()
        timed_out = False
        try:
            code = container.wait(timeout=limits.wall_s)["StatusCode"]
        except Exception:  # noqa: BLE001 - the SDK's read timeout: the wall-clock limit
            timed_out, code = True, None
            container.kill()
        out = container.logs(stdout=True, stderr=False)[:limits.output_bytes]
        err = container.logs(stdout=False, stderr=True)[:limits.output_bytes]
    finally:
        container.remove(force=True)
    status = ("timeout" if timed_out or code in (137, 152) else "memory_limit" if b"MemoryError" in err
              else "passed" if code == 0 else "failed")
    return Result(status, code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                  round(time.monotonic() - start, 4), 0.0, error=None)
