"""The docker backend. Without a Docker engine (this project's machines have none) the engine-level
tests skip; what runs here: the limits -> container options mapping, the attach stream's
demultiplexing, the runner speaking to a real server through the docker transport (the engine
replaced by a stand-in that runs the container's command under bubblewrap and multiplexes its
output as the engine does), the work dir unpacked from stdin, and the error without an engine."""

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from environments.code import container, harness
from environments.code.confine import UID_BASE, UID_SLOTS
from environments.code.container import HEADER, container_options, demux
from environments.code.sandbox import ROOT_CAPS, Limits, Sandbox, SandboxUnavailable

ADD = "def add(a, b):\n    return a + b\n"
TESTS = {"code": "assert add(1, 2) == 3\nassert add('a', 'b') == 'ab'\n"}
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap (apt-get install bubblewrap)")


def _engine_answers() -> bool:
    try:
        container.engine()
        return True
    except SandboxUnavailable:
        return False


needs_engine = pytest.mark.skipif(not _engine_answers(), reason="no Docker engine on this machine")


def frame(stream: int, payload: bytes) -> bytes:
    return HEADER.pack(stream, len(payload)) + payload


def test_limits_become_container_options():
    limits = Limits(memory_mb=512, processes=32, tmp_mb=64)
    options = container_options(limits, cpu=3)
    assert options["network_mode"] == "none" and options["read_only"] is True
    assert options["ipc_mode"] == "none" and options["nano_cpus"] == 10**9  # no /dev/shm; one CPU
    assert options["tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=64m,mode=755"}
    assert options["mem_limit"] == options["memswap_limit"] == f"{512 + container.SERVER_MB}m"
    assert options["pids_limit"] == 32 + container.SERVER_PROCESSES
    assert options["cap_drop"] == ["ALL"] and sorted(options["cap_add"]) == sorted(c[4:] for c in ROOT_CAPS)
    assert options["security_opt"] == ["no-new-privileges"] and options["cpuset_cpus"] == "3"
    assert "cpuset_cpus" not in container_options(limits)
    assert set(options["environment"]) == {"PATH"}  # nothing of the host's


def test_demux_reassembles_frames_split_anywhere():
    rng = random.Random(0)
    chunks = [(rng.choice((1, 2)), rng.randbytes(rng.randrange(0, 300))) for _ in range(50)]
    stream = b"".join(frame(s, p) for s, p in chunks)
    out, err, pending = bytearray(), bytearray(), bytearray()
    cuts = sorted(rng.sample(range(len(stream)), 40))
    for a, b in zip([0, *cuts], [*cuts, len(stream)]):
        pending += stream[a:b]
        o, e = demux(pending)
        out += o
        err += e
    assert bytes(out) == b"".join(p for s, p in chunks if s == 1)
    assert bytes(err) == b"".join(p for s, p in chunks if s == 2)
    assert pending == b""


def test_no_engine_is_a_clear_error(monkeypatch):
    pytest.importorskip("docker", reason="the docker extra is not installed")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(SandboxUnavailable, match="no Docker engine answers .*unix:///nonexistent"):
        Sandbox("docker")


class StandInEngine:
    """Stands in for the Docker engine (none runs here): ``containers.create`` keeps the options,
    ``start`` runs the container's command under bubblewrap with its stdin and stdout joined to
    the attach socket, the output multiplexed in the engine's frames."""

    def __init__(self):
        self.containers = self
        self.created = []

    def create(self, image, command, **options):
        self.created.append(options)
        return StandInContainer([Sandbox("bubblewrap").python, *command[1:]])  # the image's python3 is this one


class StandInContainer:
    def __init__(self, command):
        self.command = command
        self.ours, self.theirs = socket.socketpair()

    def attach_socket(self, params):
        return self.ours

    def start(self):
        sandbox = Sandbox("bubblewrap")
        self.proc = subprocess.Popen(sandbox.wrap(self.command, Limits()), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        threading.Thread(target=self._mux, daemon=True).start()
        threading.Thread(target=self._stdin, daemon=True).start()

    def _mux(self):
        try:
            while chunk := self.proc.stdout.read1(65536):
                self.theirs.sendall(frame(1, chunk))
            self.theirs.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):  # removed
            pass

    def _stdin(self):
        try:
            while chunk := self.theirs.recv(65536):
                self.proc.stdin.write(chunk)
                self.proc.stdin.flush()
        except (OSError, ValueError):
            pass

    def remove(self, force):
        os.killpg(self.proc.pid, 9)
        self.proc.wait()
        self.theirs.close()


@needs_bwrap
def test_runner_speaks_to_a_server_through_the_docker_transport():
    sandbox = Sandbox("bubblewrap")
    sandbox.docker = StandInEngine()
    runner = sandbox.runner(Limits(wall_s=5))
    try:
        assert runner.check(ADD, TESTS).status == "passed"
        assert runner.check("def add(a, b):\n    return a - b\n", TESTS).status == "failed"
        assert runner.check("import sys\nsys.exit(0)\n", TESTS).status != "passed"
        big = "x" * 200_000  # a result larger than one frame of the stream
        assert runner.check(f"def add(a, b):\n    return {big!r}\n", {"code": f"assert add(1, 2) == {big!r}\n"}).status == "passed"
        options = sandbox.docker.created[0]
        assert options["network_mode"] == "none" and options.get("cpuset_cpus") == (
            None if runner.claim is None else str(runner.claim[0]))
        os.killpg(runner.server.container.proc.pid, 9)  # the container dies: the runner starts another
        assert runner.check(ADD, TESTS).status == "passed" and runner.restarts == 1
    finally:
        runner.close()


@needs_bwrap
def test_work_dir_unpacked_from_stdin(tmp_path):
    sandbox = Sandbox("bubblewrap")
    files = {"main.py": b"print(open('data/x.txt').read(), end='')\n", "data/x.txt": b"hello"}
    payload = json.dumps({"files": {k: v.hex() for k, v in files.items()}}).encode()
    launcher = [sandbox.python, "-I", "-S", "-c", Path(harness.__file__).read_text(), "launch",
                json.dumps({"limits": Limits().wire()}), "/tmp/work", "--files-on-stdin", sandbox.python, "main.py"]
    done = subprocess.run(sandbox.wrap(launcher, Limits()), input=harness.FRAME.pack(len(payload)) + payload,
                          capture_output=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, b"hello"), done.stderr
    escape = json.dumps({"files": {"../../etc/x": "00"}}).encode()
    done = subprocess.run(sandbox.wrap(launcher, Limits()), input=harness.FRAME.pack(len(escape)) + escape,
                          capture_output=True, timeout=60)
    assert done.returncode != 0 and b"outside the work dir" in done.stderr


@needs_engine
@pytest.mark.parametrize("program, status", [
    (ADD, "passed"),
    ("def add(a, b):\n    return a - b\n", "failed"),
    ("import os\nos._exit(0)\n", "runtime_error"),
    ("while True:\n    pass\n", "timeout"),
    ("x = bytearray(2 * 1024**3)\n" + ADD, "memory_limit"),
    ("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\n" + ADD, "runtime_error"),
])
def test_docker_backend_contains_programs(program, status):
    runner = Sandbox("docker").runner(Limits(wall_s=3, cpu_s=3, memory_mb=512))
    try:
        assert runner.check(program, TESTS).status == status
    finally:
        runner.close()


@needs_engine
def test_docker_one_shot_run():
    sandbox = Sandbox("docker")
    result = sandbox.run({"main.py": "import os\nprint(open('data.txt').read(), os.getuid())\n", "data.txt": "hi"},
                         ["python3", "main.py"])
    hi, uid = result.stdout.split()
    assert result.status == "passed" and hi == "hi" and UID_BASE <= int(uid) < UID_BASE + UID_SLOTS
    assert sandbox.run({}, ["sleep", "30"], Limits(wall_s=1)).status == "timeout"
