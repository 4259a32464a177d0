"""Hostile programs against the sandbox: each is contained, and none is scored as passing."""

import gc
import os
import shutil
import time
from pathlib import Path

import pytest

from environments.code.confine import UID_BASE, UID_SLOTS
from environments.code.sandbox import Limits, Sandbox, claim_cpu

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="needs bubblewrap (`make setup` installs it as root; apt-get install bubblewrap)")

ADD = "def add(a, b):\n    return a + b\n"
TESTS = {"code": "assert add(1, 2) == 3\nassert add('a', 'b') == 'ab'\n"}


@pytest.fixture(scope="module")
def runner():
    os.environ["RLVR_TEST_HOST_SECRET"] = "do-not-leak"
    r = Sandbox("bubblewrap").runner(Limits(wall_s=5, cpu_s=5, memory_mb=512))
    yield r
    r.close()


def sandbox_processes() -> list[int]:
    """Live processes of any sandbox's uid anywhere on the machine, but a server's one spare
    program process (forked by its zygote after a run, waiting for the next program, never ran
    any code); a zombie, dead and waiting to be collected, is not live either."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                if not UID_BASE <= entry.stat().st_uid < UID_BASE + UID_SLOTS or state in ("Z", "X"):
                    continue
                if b"serve" in Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0"):
                    continue  # a spare: its parent is the server's zygote
                found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return found


def test_a_correct_program_passes_and_a_wrong_one_fails(runner):
    assert runner.check(ADD, TESTS).status == "passed"
    wrong = runner.check("def add(a, b):\n    return a - b\n", TESTS)
    assert wrong.status == "failed" and (wrong.passed_cases, wrong.cases) == (0, 2)


@pytest.mark.parametrize("program", [
    "import sys\nsys.exit(0)\n" + ADD,
    "import os\nos._exit(0)\n" + ADD,
    "raise SystemExit(0)\n" + ADD,
    # a patched assert helper or builtins: the tests do not run in this process
    "import builtins\nbuiltins.AssertionError = type('X', (Exception,), {})\ndef add(a, b):\n    return 0\n",
    # an object equal to everything, a truthy one, a str subclass claiming equality
    "class E:\n    def __eq__(self, other): return True\n    def __bool__(self): return True\ndef add(a, b):\n    return E()\n",
    "class S(str):\n    def __eq__(self, other): return True\ndef add(a, b):\n    return S('nope')\n",
    # forged markers on every channel it has
    "import os, json\nfor fd in range(1, 20):\n    try: os.write(fd, json.dumps({'status': 'passed', 'secret': ''}).encode())\n"
    "    except OSError: pass\nprint('PASSED')\nos._exit(0)\n",
    # reading the test process's memory, or signalling it
    "import os\nopen(f'/proc/{os.getppid()}/mem', 'rb').read(10)\n" + ADD.replace("a + b", "0"),
    "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + ADD.replace("a + b", "0"),
])
def test_reward_hacks_never_pass(runner, program):
    result = runner.check(program, TESTS)
    assert result.status != "passed", result
    assert runner.check(ADD, TESTS).status == "passed"  # and the runner is fine afterwards


@pytest.mark.parametrize("program", ["while True:\n    pass\n", "import time\ntime.sleep(60)\n"])
def test_infinite_loop_and_sleep_time_out_and_leave_nothing_running(runner, program):
    start = time.monotonic()
    result = runner.check(program, TESTS, Limits(wall_s=1.5, cpu_s=5))
    assert result.status == "timeout" and time.monotonic() - start < 6
    assert sandbox_processes() == []


def test_memory_bomb_hits_the_memory_limit(runner):
    result = runner.check("x = bytearray(2 * 1024**3)\n" + ADD, TESTS)
    assert result.status == "memory_limit", result


def test_fork_bomb_is_contained(runner):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = runner.check(bomb, TESTS, Limits(wall_s=2, cpu_s=5, processes=32))
    assert result.status != "passed"
    time.sleep(0.2)
    assert sandbox_processes() == []
    assert runner.check(ADD, TESTS).status == "passed"


def test_no_host_files_network_or_environment(runner, tmp_path):
    marker = tmp_path / "host-file.txt"
    marker.write_text("keep me")
    os.chmod(tmp_path, 0o777)
    probe = f'''
import os, socket
def probe():
    seen = []
    for path in ({str(marker)!r}, "/etc/rlvr-sandbox-test", "/root/rlvr-test", {str(Path(__file__).parent / "rlvr-test")!r}):
        try:
            open(path, "w").write("x")
            seen.append("wrote " + path)
        except OSError:
            pass
    try:
        os.remove({str(marker)!r})
        seen.append("deleted")
    except OSError:
        pass
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=1)
        seen.append("network")
    except OSError:
        pass
    seen += [k for k in os.environ if "RLVR" in k or "SECRET" in k]
    return seen
'''
    result = runner.check(probe, {"code": "assert probe() == []"})
    assert result.status == "passed", result
    assert marker.read_text() == "keep me" and not Path("/etc/rlvr-sandbox-test").exists()


def test_every_run_has_the_same_clean_environment_and_a_home_of_its_own(runner):
    """Set once in the zygote, for every program process it forks: what each one sees."""
    program = ("import os\nprint(os.environ['HOME'], os.getcwd())\nprint(*sorted(os.environ))\n"
               "try:\n    open('big', 'wb').write(b'x' * (2 << 20))\nexcept OSError:\n    print('refused')\n" + ADD)
    seen = []
    for _ in range(2):
        result = runner.check(program, TESTS, Limits(wall_s=5, file_size_mb=1))
        assert result.status == "passed", result  # the oversized write failed; it did not kill
        (home, cwd), keys, refused = (line.split() for line in result.stdout.splitlines())
        assert home == cwd and keys == ["HOME", "PATH", "PYTHONHASHSEED"] and refused == ["refused"]
        seen.append(home)
    assert seen[0] != seen[1]


def test_orphans_and_daemons_are_killed_after_the_run(runner):
    daemon = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(300)\n"
              "    os._exit(0)\n" + ADD)
    assert runner.check(daemon, TESTS).status == "passed"
    time.sleep(0.2)
    assert sandbox_processes() == []


def test_stdout_flood_is_capped(runner):
    flood = "import sys\nfor _ in range(10**5):\n    sys.stdout.write('x' * 1000)\n" + ADD
    result = runner.check(flood, TESTS, Limits(wall_s=10, output_bytes=1000, file_size_mb=1))
    assert len(result.stdout) <= 1000 and result.status in ("passed", "runtime_error")


def test_a_thousand_runs_leave_no_processes_dirs_or_descriptors(runner):
    gc.collect()  # (runners of earlier tests that nothing holds close their descriptors when collected)
    fds = len(os.listdir("/proc/self/fd"))
    tmp = set(os.listdir("/tmp"))
    for _ in range(1000):
        assert runner.check(ADD, TESTS).status == "passed"
    assert len(os.listdir("/proc/self/fd")) == fds
    assert set(os.listdir("/tmp")) - tmp == set()
    assert sandbox_processes() == []


def test_one_shot_command_in_a_fresh_sandbox(tmp_path):
    sandbox = Sandbox("bubblewrap")
    result = sandbox.run({"main.py": "import os\nprint(open('data.txt').read(), os.getuid())\n", "data.txt": "hi"},
                         [sandbox.python, "main.py"])
    hi, uid = result.stdout.split()
    assert result.status == "passed" and hi == "hi"
    assert UID_BASE <= int(uid) < UID_BASE + UID_SLOTS if os.getuid() == 0 else int(uid) == os.getuid()
    assert sandbox.run({}, [sandbox.python, "-c", "import time; time.sleep(30)"], Limits(wall_s=1)).status == "timeout"
    # another executable is there with what it loads, and nothing else of the host
    shell = sandbox.run({}, ["/bin/sh", "-c", "echo $0; ls /usr/bin"], Limits(wall_s=5))
    assert shell.stdout.split() == ["/bin/sh"] and "ls: not found" in shell.stderr, shell


def test_process_backend_warns_that_it_is_not_isolated():
    with pytest.warns(UserWarning, match="NOT isolated"):
        sandbox = Sandbox("process")
    runner = sandbox.runner(Limits(wall_s=5))
    try:
        assert runner.check(ADD, TESTS).status == "passed"
        assert runner.check("import os\nos._exit(0)\n", TESTS).status != "passed"
    finally:
        runner.close()


def test_installed_packages_only_when_named(runner):
    # the standard library only, by default: an installed package is not even there
    assert runner.check("import yaml\n" + ADD, TESTS).status == "runtime_error"
    named = Sandbox("bubblewrap", packages=["pyyaml", "yaml"]).runner(Limits(wall_s=5))
    try:
        assert named.check("import yaml\n" + ADD, TESTS).status == "passed"
        assert named.check("import torch\n" + ADD, TESTS).status == "runtime_error"
    finally:
        named.close()


def test_runners_claim_distinct_cpus_and_run_there(runner):
    claims = []
    while (claim := claim_cpu()) is not None:
        claims.append(claim)
    try:
        held = [c for c, _ in claims] + ([runner.claim[0]] if runner.claim else [])
        assert sorted(held) == sorted(set(held)) and set(held) <= os.sched_getaffinity(0)
    finally:
        for _, fd in claims:
            os.close(fd)
    again = claim_cpu()
    assert again is not None  # released with their descriptors
    os.close(again[1])
    if runner.claim is not None:  # the server, its zygote and every program run on the runner's CPU
        where = "def add(a, b):\n    import os\n    return sorted(os.sched_getaffinity(0))\n"
        assert runner.check(where, {"code": f"assert add(1, 2) == [{runner.claim[0]}]\n"}).status == "passed"


def _parent(pid) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return 0


def _descendants(root: int) -> list[int]:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    found, frontier = [], {root}
    while frontier:
        frontier = {p for p in pids if _parent(p) in frontier}
        found += sorted(frontier)
    return found


def _server(runner) -> int:
    """The runner's server process H (bwrap's own command lines name it too)."""
    for pid in _descendants(runner.server.proc.pid):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"serve" in argv and not argv[0].endswith(b"bwrap"):
            return pid
    raise AssertionError("no server process")


def test_a_server_whose_zygote_died_is_replaced():
    # A program cannot signal the zygote when the sandbox starts as root (another uid);
    # without root it can. Either way the next runs must still be scored.
    runner = Sandbox("bubblewrap").runner(Limits(wall_s=5))
    try:
        assert runner.check(ADD, TESTS).status == "passed"
        server = _server(runner)  # its one child is Z, whose children are the programs
        zygote = next(p for p in _descendants(server) if _parent(p) == server)
        os.kill(zygote, 9)
        assert [runner.check(ADD, TESTS).status for _ in range(3)] == ["passed"] * 3
        assert runner.restarts == 1
    finally:
        runner.close()


@pytest.mark.skipif(os.getuid() != 0, reason="capabilities are kept only when the sandbox starts as root")
def test_root_sandbox_keeps_only_the_capabilities_it_needs(runner):
    # privileged bwrap keeps every capability unless told: the zygote keeps five (to make a
    # program's uid and work dir, and remove it), the test process one (kill), a program none
    caps = "def caps():\n    return [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]\n"
    assert runner.check(caps, {"code": "assert caps() == '0000000000000000'\n"}).status == "passed"

    def capabilities(pid):
        return {line.split()[0]: int(line.split()[1], 16) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith(("CapEff", "CapPrm"))}

    server = _server(runner)
    zygote = next(p for p in _descendants(server) if _parent(p) == server)
    assert capabilities(server) == {"CapEff:": 1 << 5, "CapPrm:": 1 << 5}  # KILL
    assert capabilities(zygote)["CapEff:"] == sum(1 << bit for bit in (0, 1, 5, 6, 7))  # CHOWN DAC_OVERRIDE KILL SETGID SETUID
