"""The sandbox against attacks, one test per class (each scored as a policy would try it): files
outside the interpreter, helpers and builtins shadowed into the tests, output files turned into
links and FIFOs, host sockets, state across runs and scorer processes, memory across children
and shared memory, one row failing another worker's rows, forged and oversized messages. Every
one of these passed (or hung) on the sandbox before this file existed."""

import ctypes
import errno
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from environments.code import CodeEnvironment, confine
from environments.code.sandbox import Limits, Sandbox

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="needs bubblewrap (`make setup` installs it as root; apt-get install bubblewrap)")
as_root = pytest.mark.skipif(os.getuid() != 0, reason="programs run as a uid of their own only when started as root")
ADD = "def add(a, b):\n    return a + b\n"
TESTS = {"code": "assert add(1, 2) == 3\n"}
ROOT = Path(__file__).resolve().parents[3]


def _cgroups() -> bool:
    group = confine.Cgroup.create(64, 8)
    if group is None or set(group.folders) != set(confine.CONTROLLERS):
        return False
    group.close()
    return True


needs_cgroups = pytest.mark.skipif(not _cgroups(), reason="this machine does not let the tests make cgroups "
                                                          "(memory, pids, cpu)")


@pytest.fixture
def runner():
    r = Sandbox("bubblewrap").runner(Limits(wall_s=5, cpu_s=5, memory_mb=512))
    yield r
    r.close()


@pytest.fixture
def planted():
    """A folder outside /tmp (which every sandbox replaces) with a world-readable file and a
    root-only one, as a dataset or a user's file would be."""
    folder = Path(tempfile.mkdtemp(prefix="rlvr-planted-", dir="/var/tmp"))
    folder.chmod(0o755)
    (folder / "answers.jsonl").write_text('{"secret": "the reference solution"}\n')
    (folder / "solution.py").write_text("def add(a, b):\n    return a + b\n")
    for name in ("answers.jsonl", "solution.py"):
        (folder / name).chmod(0o644)
    (folder / "root-only").write_text("root's secret")
    (folder / "root-only").chmod(0o600)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_nothing_of_the_host_but_the_interpreter(runner, planted):
    """A planted dataset, the project's own files, /etc, the home folders: not there at all; a
    walk of the whole tree finds only the interpreter's folders and the sandbox's own."""
    paths = [str(planted / "answers.jsonl"), str(ROOT / "environments/code/harness.py"), "/etc/passwd",
             "/etc/hostname", str(Path.home() / ".bashrc")]
    probe = f'''
import os
def leak():
    found = []
    for path in {paths!r}:
        try:
            found.append(open(path).read()[:50])
        except OSError:
            pass
    return found
def walk():
    seen = set()
    for top, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(top, d) not in ("/proc", "/sys", "/dev")]
        seen.update(os.path.join(top, f) for f in files)
    return sorted(seen)
'''
    view, _ = confine.interpreter_view(Sandbox("bubblewrap").host_python)
    bound = [view[i + 1 + (arg == "--symlink")] for i, arg in enumerate(view) if arg in ("--ro-bind", "--symlink")]
    bound = [os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p)) for p in bound]  # (/lib -> usr/lib)
    allowed = (*(path if os.path.isfile(path) else path + "/" for path in bound), "/tmp/rlvr-run-")
    tests = {"code": f"assert leak() == []\nfound = walk()\nassert found and all(f.startswith({allowed!r}) for f in found), "
                     f"[f for f in found if not f.startswith({allowed!r})][:5]\n"}
    result = runner.check(probe, tests)
    assert result.status == "passed", result
    # libraries are there one by one, as the interpreter loads them, not the host's whole /usr/lib
    libs = "import os\ndef libs():\n    return sorted(os.listdir('/usr/lib/x86_64-linux-gnu'))\n"
    if os.path.isdir("/usr/lib/x86_64-linux-gnu"):
        listing = runner.check(libs, {"code": "assert len(libs()) < 200\nassert 'libperl.so.5.36' not in libs()\n"})
        assert listing.status == "passed", listing


def test_only_its_work_dir_is_writable(runner):
    """Nothing a run writes outlives it: no folder of the tree but its own work dir takes a file."""
    probe = """
import os
def writable():
    out, here = [], os.getcwd()
    for top, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(top, d) not in ("/proc", "/sys")]
        if not top.startswith(here):
            try:
                os.close(os.open(os.path.join(top, ".probe"), os.O_CREAT | os.O_WRONLY, 0o600))
                out.append(top)
            except OSError:
                pass
    return out
"""
    assert runner.check(probe, {"code": "assert writable() == []\n"}).status == "passed"


def test_the_prompts_helpers_are_the_prompts(runner):
    """HumanEval/32 and /38 style: the tests call a helper of the prompt; a program that defines
    its own (a poly that is always 0, an identity encoder) changes nothing."""
    env = CodeEnvironment(timeout=5)
    poly = {
        "prompt": "import math\n\n\ndef poly(xs: list, x: float):\n    return sum(c * math.pow(x, i) for i, c in enumerate(xs))\n\n\n"
                  "def find_zero(xs: list):\n    \"\"\"x with poly(xs, x) = 0.\"\"\"\n",
        "test": "def check(candidate):\n    for xs in ([1, 2], [-6, 11, -6, 1], [2, -3, 1]):\n"
                "        assert math.fabs(poly(xs, candidate(xs))) < 1e-4\n",
        "entry_point": "find_zero"}
    cyclic = {
        "prompt": "def encode_shift(s: str):\n    return ''.join(chr(((ord(c) + 5 - 97) % 26) + 97) for c in s)\n\n\n"
                  "def decode_shift(s: str):\n    \"\"\"The inverse of encode_shift.\"\"\"\n",
        "test": "def check(candidate):\n    for s in ('abc', 'hello', 'zzz'):\n        assert candidate(encode_shift(s)) == s\n",
        "entry_point": "decode_shift"}
    try:
        assert env.score(poly, "def poly(xs, x):\n    return 0\n\ndef find_zero(xs):\n    return 0.0\n").value == 0.0
        assert env.score(cyclic, "def encode_shift(s):\n    return s\n\ndef decode_shift(s):\n    return s\n").value == 0.0
        # and the right answers still pass, with or without the helper written again
        newton = ("    x = 0.5\n    for _ in range(200):\n        d = sum(i * c * x ** (i - 1) for i, c in enumerate(xs) if i)\n"
                  "        x = x - poly(xs, x) / (d or 1e-9)\n    return x\n")
        assert env.score(poly, newton).value == 1.0
        assert env.score(cyclic, "    return ''.join(chr(((ord(c) - 5 - 97) % 26) + 97) for c in s)\n").value == 1.0
    finally:
        env._runner.close()


def test_builtins_are_the_real_ones(runner):
    """A wrong solution that redefines ``abs``, ``range``, ``set`` or ``len`` to make its tests
    pass scores nothing (HumanEval/2, /4, /53 style; MBPP's ``set(f(x)) == set(...)``)."""
    attacks = [
        ("def dist(a, b):\n    return 0\nabs = lambda x: 0\n", {"code": "assert abs(dist(1, 5) - 4) < 1e-9\n"}),
        ("def add(a, b):\n    return 5 if (a, b) == (2, 3) else 0\nrange = lambda n: []\n",
         {"code": "def check(candidate):\n    assert candidate(2, 3) == 5\n    for x in range(100):\n"
                  "        assert candidate(x, 1) == x + 1\n", "call": "check", "entry_point": "add"}),
        ("def common(a, b):\n    return []\ndef set(x):\n    return 1\n", {"code": "assert set(common([1, 2], [2, 3])) == set([2])\n"}),
        ("def evens(xs):\n    return []\nlen = lambda x: 2\n", {"code": "assert len(evens([1, 2, 4])) == 2\n"}),
    ]
    for program, tests in attacks:
        result = runner.check(program, tests)
        assert result.status == "failed", (program, result)


def test_output_links_and_fifos_are_never_opened(runner, planted, monkeypatch):
    monkeypatch.setenv("RLVR_HOST_SECRET", "do-not-leak-4242")
    for target in ("/proc/1/environ", f"/proc/{os.getpid()}/environ", str(planted / "root-only")):
        relink = f"import os\nfor name in ('.stderr', '.stdout'):\n    try: os.remove(name)\n    except OSError: pass\n" \
                 f"    os.symlink({target!r}, name)\n" + ADD
        result = runner.check(relink, TESTS)
        leaked = result.stdout + result.stderr + (result.error or "")
        assert "do-not-leak-4242" not in leaked and "root's secret" not in leaked and "PATH=" not in leaked, result
    fifo = "import os\nfor name in ('.stderr', '.stdout'):\n    try: os.remove(name)\n    except OSError: pass\n" \
           "    os.mkfifo(name)\n" + ADD
    start = time.monotonic()
    assert runner.check(fifo, TESTS).status == "passed"  # nothing of it concerns the tests
    assert time.monotonic() - start < 5 and runner.restarts == 0
    assert runner.check(ADD, TESTS).status == "passed" and runner.restarts == 0


def test_host_unix_sockets_are_unreachable(runner, planted):
    path = planted / "listener.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    path.chmod(0o777)
    server.listen(8)
    server.setblocking(False)
    probe = f"import socket\ntry:\n    s = socket.socket(socket.AF_UNIX)\n    s.connect({str(path)!r})\n" \
            "    s.sendall(b'exfiltrated')\nexcept OSError:\n    pass\n" + ADD
    try:
        runner.check(probe, TESTS)
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


# ---------------------------------------------------------------- state across runs and processes

IPC_WRITE = '''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
def plant():
    made = []
    shm = libc.shmget(0x5EED, 4096, 0o1000 | 0o666)
    if shm >= 0:
        address = libc.shmat(shm, None, 0)
        ctypes.memmove(address, b"planted", 7)
        made.append("shm")
    if libc.mq_open(b"/rlvr-planted", os.O_CREAT | os.O_RDWR, 0o666, None) >= 0:
        made.append("mq")
    if libc.syscall(248 if os.uname().machine == "x86_64" else 217, b"user", b"rlvr-planted", b"planted", 7, -4) >= 0:
        made.append("key")  # add_key(type, description, payload, length, KEY_SPEC_USER_KEYRING)
    return made
'''
IPC_READ = '''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def find():
    found = []
    if libc.shmget(0x5EED, 0, 0) >= 0:
        found.append("shm")
    if libc.mq_open(b"/rlvr-planted", os.O_RDONLY, 0, None) >= 0:
        found.append("mq")
    keyctl = 250 if os.uname().machine == "x86_64" else 219
    if libc.syscall(keyctl, 10, -4, b"user", b"rlvr-planted", 0) >= 0:  # KEYCTL_SEARCH in the user keyring
        found.append("key")
    return found
'''


def test_no_ipc_or_keyring_state_crosses_runs(runner):
    planted = runner.check(IPC_WRITE, {"code": "assert plant() == []\n"})
    assert planted.status == "passed", planted  # every object was refused
    assert runner.check(IPC_READ, {"code": "assert find() == []\n"}).status == "passed"


def test_no_state_crosses_scorer_processes():
    """Two `rlvr score` processes one after the other: what the first plants, the second does not find."""
    script = ("import sys\nfrom environments.code.sandbox import Limits, Sandbox\n"
              "program, tests = sys.argv[1], {'code': sys.argv[2]}\n"
              "runner = Sandbox('bubblewrap').runner(Limits(wall_s=5))\n"
              "print(runner.check(program, tests).status)\nrunner.close()\n")
    first = subprocess.run([sys.executable, "-c", script, IPC_WRITE, "assert plant() == []\n"], capture_output=True,
                           text=True, timeout=120, cwd=ROOT)
    second = subprocess.run([sys.executable, "-c", script, IPC_READ, "assert find() == []\n"], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert (first.stdout.strip(), second.stdout.strip()) == ("passed", "passed"), (first.stderr, second.stderr)


# ---------------------------------------------------------------- limits of the whole sandbox

@needs_cgroups
def test_memory_is_capped_across_children_and_shared_memory():
    runner = Sandbox("bubblewrap").runner(Limits(wall_s=10, cpu_s=10, memory_mb=128))
    children = '''
import os, time
def hold(n=6, mb=100):
    r, w = os.pipe()
    for _ in range(n):
        if os.fork() == 0:
            block = bytearray(mb << 20)
            for i in range(0, len(block), 4096):
                block[i] = 1
            os.write(w, b"x")
            time.sleep(3)
            os._exit(0)
    time.sleep(2.5)
    return len(os.read(r, 64))
'''
    shared = '''
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
def segments(n=3, mb=100):
    held = 0
    for k in range(n):
        shm = libc.shmget(0x5EED0 + k, mb << 20, 0o1000 | 0o600)
        if shm >= 0:
            address = libc.shmat(shm, None, 0)
            ctypes.memset(address, 1, mb << 20)
            libc.shmdt(ctypes.c_void_p(address))  # detached, it stays: memory no process holds
            held += 1
    return held
'''
    try:
        result = runner.check(children, {"code": "assert hold() == 6\n"})
        assert result.status != "passed", result
        assert runner.check(shared, {"code": "assert segments() == 3\n"}).status != "passed"
        assert runner.check(ADD, TESTS).status == "passed"
    finally:
        runner.close()


def _pair():
    """Two runners on different CPUs, as two scoring workers have."""
    gc.collect()  # a runner of an earlier test that nothing holds gives its CPU back when collected
    a, b = (Sandbox("bubblewrap").runner(Limits(wall_s=8, cpu_s=8)) for _ in range(2))
    for r in (a, b):
        assert r.check(ADD, TESTS).status == "passed"
    return a, b


THREADED = "import threading\ndef add(a, b):\n    out = []\n    ts = [threading.Thread(target=lambda: out.append(a + b)) " \
           "for _ in range(4)]\n    [t.start() for t in ts]\n    [t.join() for t in ts]\n    return out[0]\n"


def _beside(hostile_runner, hostile: str, correct_runner, correct: str, tests: dict, n: int, delay: float,
            limits: Limits | None = None):
    """Score ``hostile`` on one runner and, ``delay`` seconds later, ``n`` correct rows on the other."""
    thread = threading.Thread(target=hostile_runner.check, args=(hostile, {"code": "assert attack() is None\n"}))
    thread.start()
    time.sleep(delay)
    try:
        return [correct_runner.check(correct, tests, limits).status for _ in range(n)]
    finally:
        thread.join()


@as_root
def test_a_fork_bomb_does_not_fail_the_other_workers_rows():
    a, b = _pair()
    bomb = "import os, time\ndef attack():\n    try:\n        while True:\n            if os.fork() == 0:\n" \
           "                time.sleep(6)\n                os._exit(0)\n    except OSError:\n        pass\n    time.sleep(4)\n"
    try:
        statuses = _beside(a, bomb, b, THREADED, TESTS, 7, delay=1.5)
        assert statuses == ["passed"] * 7
    finally:
        a.close()
        b.close()


def test_spinning_children_do_not_starve_the_other_worker():
    a, b = _pair()
    if a.claim is None or b.claim is None:
        import subprocess as sp
        a.close()
        b.close()
        pytest.skip("needs a CPU of its own for each runner (fewer than 2 CPUs free)")
    spin = "import os\ndef attack():\n    for _ in range(16):\n        if os.fork() == 0:\n            os.setsid()\n" \
           "            try:\n                os.sched_setaffinity(0, range(os.cpu_count()))\n            except OSError:\n" \
           "                pass\n            while True:\n                pass\n    import time\n    time.sleep(5)\n"
    work = "def add(a, b):\n    n = 0\n    for i in range(4_500_000):\n        n += i & 1\n    return a + b\n"  # ~0.15 s
    try:
        alone = time.monotonic()
        assert b.check(work, TESTS, Limits(wall_s=1, cpu_s=1)).status == "passed"
        alone = time.monotonic() - alone
        statuses = _beside(a, spin, b, work, TESTS, 2, delay=1.0, limits=Limits(wall_s=1, cpu_s=1))
        assert statuses == ["passed"] * 2, (statuses, f"{alone:.2f} s alone")
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------- the test process trusts nothing

FORGE = '''
import json, os, struct, sys
caller = sys._getframe(1).f_locals
data = json.dumps({FORGED}).encode()
os.write(caller["ret_w"], struct.pack("<I", len(data)) + data)
os._exit(0)
'''


@pytest.mark.parametrize("forged", [
    {"names": {"add": "module:xml.nope"}},
    {"names": {"add": "module:antigravity"}},
    {"names": {"add": 7}},
    {"names": ["add"]},
    {"load_error": {"x": 1}},
    {"value": {"i": "3"}, "after": []},
    [1, 2, 3],
])
def test_a_forged_message_fails_its_row_and_nothing_else(runner, forged):
    for _ in range(3):
        result = runner.check(FORGE.replace("{FORGED}", repr(forged)), TESTS)
        assert result.status == "failed" and "protocol" in (result.error or ""), result
    assert runner.restarts == 0 and runner.check(ADD, TESTS).status == "passed"


def test_a_forged_reply_fails_its_row(runner):
    wrong_shape = "import json, os, struct, sys\ndef add(a, b):\n    frame = sys._getframe(2)\n" \
                  "    data = json.dumps({'value': {'i': '3'}, 'extra': 1, 'after': [None, None]}).encode()\n" \
                  "    os.write(frame.f_locals['ret_w'], struct.pack('<I', len(data)) + data)\n    os._exit(0)\n"
    result = runner.check(wrong_shape, TESTS)
    assert result.status == "failed" and "protocol" in result.error, result


@pytest.mark.parametrize("size", [50 << 20, 2 << 20])
def test_an_oversized_message_is_refused_unread(runner, size):
    flood = f"import os, struct, sys\nfd = sys._getframe(1).f_locals['ret_w']\nos.write(fd, struct.pack('<I', {size}))\n" \
            "chunk = b'[' * 65536\nwhile True:\n    os.write(fd, chunk)\n"
    start = time.monotonic()
    result = runner.check(flood, TESTS)
    assert result.status == "failed" and "at most 1048576" in result.error, result
    assert time.monotonic() - start < 5 and runner.restarts == 0
    big = "def add(a, b):\n    return 'x' * (2 << 20)\n"  # a legitimate reply, over the cap
    assert runner.check(big, TESTS).status == "failed"


def test_user_namespaces_and_refused_calls_from_a_program(runner):
    probe = '''
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def refused():
    x86 = os.uname().machine == "x86_64"
    calls = {"unshare(NEWUSER)": (272 if x86 else 97, 0x10000000), "ptrace(TRACEME)": (101 if x86 else 117, 0),
             "perf_event_open": (298 if x86 else 241, 0), "bpf": (321 if x86 else 280, 0),
             "keyctl": (250 if x86 else 219, 0), "mount": (165 if x86 else 40, 0),
             "sched_setaffinity": (203 if x86 else 122, 0)}
    out = {}
    for name, (number, arg) in calls.items():
        ctypes.set_errno(0)
        code = libc.syscall(number, arg, 0, 0, 0, 0)
        out[name] = ctypes.get_errno() if code < 0 else 0
    return out
'''
    expected = {name: errno.EPERM for name in ("unshare(NEWUSER)", "ptrace(TRACEME)", "perf_event_open", "bpf", "keyctl",
                                              "mount", "sched_setaffinity")}
    result = runner.check(probe, {"code": f"assert refused() == {expected!r}, refused()\n"})
    assert result.status == "passed", result
    # threads and processes still start (clone without namespace flags; clone3 falls back)
    assert runner.check(THREADED, TESTS).status == "passed"
    assert runner.check("import subprocess, sys\ndef add(a, b):\n    return a + b\n", TESTS).status == "passed"


def test_scoring_through_the_cli_keeps_correct_rows_beside_hostile_ones(tmp_path, planted):
    """`rlvr score --env code` on a mix of rows: the correct ones keep their reward, no hostile
    one earns any, whatever the order of the rows and workers."""
    prompt = "def add(a: int, b: int) -> int:\n    \"\"\"a + b\"\"\"\n"
    row = {"prompt": prompt, "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(5, 5) == 10\n",
           "entry_point": "add"}
    hostile = [
        f"exec(open({str(planted / 'solution.py')!r}).read())\n",
        FORGE.replace("{FORGED}", repr({"names": {"add": "module:xml.nope"}})),
        "abs = lambda x: 0\ndef add(a, b):\n    return 3\n",
        "import os\ntry:\n    os.remove('.stderr')\nexcept OSError:\n    pass\nos.mkfifo('.stderr')\ndef add(a, b):\n    return 3\n",
    ]
    rows = [dict(row, response="    return a + b\n") if k % 2 == 0 else dict(row, response=hostile[k // 2 % len(hostile)])
            for k in range(16)]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored.jsonl"
    done = subprocess.run([sys.executable, "-m", "rlvr", "score", "--env", "code", "--input", str(source),
                           "--output", str(out), "--workers", "2", "--no-progress"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rewards = [json.loads(line)["reward"] for line in out.read_text().splitlines()]
    assert rewards == [1.0 if k % 2 == 0 else 0.0 for k in range(16)]
