"""What runs inside the sandbox: a fork server that is also the trusted test process (H), and
per run a fresh untrusted program process (P). Standard library only: the sandbox's interpreter
runs this file's source (``python -I -c``), without the project installed.

Why two processes. A grader that runs the tests in the program's own interpreter can be fooled
by the program: ``sys.exit(0)`` / ``os._exit(0)`` before the tests, a patched ``assert`` helper,
an always-equal ``__eq__`` object, a forged success marker. Here the program P only defines its
names and then answers calls; the tests run in H, which P cannot read, signal or ptrace (P runs
as another uid when the sandbox starts as root; H is not dumpable either way), and call P's
functions through a pipe. Values cross as data (numbers, strings, containers of them; anything
else stays in P as an opaque reference whose equality is identity), so a result cannot pretend
to equal anything. H's report carries a per-run secret that is read after P was forked, so it is
in no memory P ever had, and travels on a pipe P does not hold.

Per run: H hands the program to P, a process forked and set up (own process group, limits, uid,
work dir, every other file descriptor closed) after the previous run by the zygote Z, a child of
H that only forks; then H reads the tests and the secret, runs the tests, kills P's process
group; inside the sandbox's own pid namespace it then kills every other process there but Z, so
orphans and daemons a program left do not outlive its run.
"""

import ast
import base64
import builtins
import ctypes
import gc
import glob
import importlib
import itertools
import json
import os
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import time

SANDBOX_UID = 65534  # nobody: what P runs as when the server starts as root
TYPES = {t.__name__: t for t in (int, float, complex, str, bytes, bool, list, tuple, set, frozenset, dict, type(None))}
# Standard modules the tests may use when the program imported them (``sys.getsizeof``), minus
# the few with side effects on import.
NO_IMPORT = {"antigravity", "this", "idlelib", "turtle", "turtledemo", "tkinter", "webbrowser", "pydoc"}
FRAME = struct.Struct("<I")


# ---------------------------------------------------------------- frames: length-prefixed JSON

def write_frame(fd, obj):
    data = json.dumps(obj).encode()
    view = memoryview(FRAME.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def read_exact(fd, n, deadline=None):
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, n - got)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(fd, deadline=None, limit=1 << 26):
    (n,) = FRAME.unpack(read_exact(fd, FRAME.size, deadline))
    if n > limit:
        raise ValueError(f"frame of {n} bytes")
    return json.loads(read_exact(fd, n, deadline))


# ---------------------------------------------------------------- plain data across the pipe

def encode(x, depth=0):
    """Data -> tagged JSON. Subclasses of the builtin data types travel as their base type's
    data (a Counter as a dict): whatever methods they override, the other side only gets data."""
    if depth > 200:
        raise TypeError("nested too deeply")
    if x is None:
        return {"n": 0}
    if type(x) is type and TYPES.get(x.__name__) is x:
        return {"T": x.__name__}
    if isinstance(x, Ref):
        return {"r": x._ref}
    if isinstance(x, bool):
        return {"t": bool(x)}
    if isinstance(x, int):
        return {"i": str(int(x))}
    if isinstance(x, float):
        return {"f": float(x).hex()}
    if isinstance(x, complex):
        return {"c": [float(x.real).hex(), float(x.imag).hex()]}
    if isinstance(x, str):
        return {"s": str(x)}
    if isinstance(x, (bytes, bytearray)):
        return {"b": base64.b64encode(bytes(x)).decode()}
    for base, tag in ((list, "l"), (tuple, "u"), (set, "e"), (frozenset, "z")):
        if isinstance(x, base):
            return {tag: [encode(v, depth + 1) for v in base.__iter__(x)]}
    if isinstance(x, dict):
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(x)]}
    raise TypeError(f"not plain data: {type(x).__name__}")


def decode(e, depth=0, refs=None):
    """The inverse of ``encode``, strict: anything else raises (never evaluates code). ``refs``:
    P's objects, which H may send back (P's side only)."""
    if depth > 200 or type(e) is not dict or len(e) != 1:
        raise ValueError("malformed value")
    (tag, v), = e.items()
    if tag == "n":
        return None
    if tag == "T" and v in TYPES:
        return TYPES[v]
    if tag == "r" and refs is not None and v in refs:
        return refs[v]
    if tag == "t" and type(v) is bool:
        return v
    if tag == "i" and type(v) is str:
        return int(v)
    if tag == "f" and type(v) is str:
        return float.fromhex(v)
    if tag == "c" and type(v) is list and len(v) == 2:
        return complex(float.fromhex(v[0]), float.fromhex(v[1]))
    if tag == "s" and type(v) is str:
        return v
    if tag == "b" and type(v) is str:
        return base64.b64decode(v)
    if tag in "luez" and type(v) is list:
        items = [decode(x, depth + 1, refs) for x in v]
        return {"l": list, "u": tuple, "e": set, "z": frozenset}[tag](items)
    if tag == "d" and type(v) is list:
        return {decode(k, depth + 1, refs): decode(x, depth + 1, refs) for k, x in v}
    raise ValueError("malformed value")


# ---------------------------------------------------------------- P: the program under test

def program_main(call_r, ret_w):
    """Wait for the program, define its names, then answer calls until the pipe closes.
    Untrusted: whatever it does, it can only write frames to ``ret_w`` (which H decodes strictly)."""
    try:
        first = read_frame(call_r)
    except EOFError:
        return  # a spare process that was not needed
    module = first.get("module", "solution")
    namespace = {"__name__": module, "__builtins__": __builtins__}
    refs = {}
    try:
        exec(compile(first["program"], "solution.py", "exec"), namespace)
    except BaseException as err:  # noqa: BLE001 - reported, whatever it is
        write_frame(ret_w, {"load_error": f"{type(err).__name__}: {err}"})
        return
    names = {k: _kind(v, module) for k, v in list(namespace.items())[:1000] if not k.startswith("__")}
    names = {k: kind for k, kind in names.items() if kind}
    write_frame(ret_w, {"names": names})
    while True:
        try:
            call = read_frame(call_r)
        except EOFError:
            return
        write_frame(ret_w, _answer(namespace, refs, call))


def _kind(value, module):
    """How H sees a global of the program: a function it calls, a value it fetches, a standard
    module it imports itself, or nothing (names the program imported from elsewhere)."""
    if type(value).__name__ == "module":
        name = getattr(value, "__name__", "")
        return f"module:{name}" if name.split(".")[0] in sys.stdlib_module_names and name not in NO_IMPORT else None
    if callable(value):
        return "call" if getattr(value, "__module__", None) == module else None
    return "value"


def _maybe_encode(value):
    try:
        return encode(value)
    except TypeError:  # holds objects: H keeps its own copy
        return None


def _answer(namespace, refs, call):
    if "get" in call:  # a global value of the program
        call = {"name": "__rlvr_get__", "args": [{"v": encode(call["get"])}], "kwargs": {}}
        namespace["__rlvr_get__"] = namespace.get
    try:
        fn = namespace[call["name"]] if "name" in call else refs[call["ref"]]
        args = [refs[a["r"]] if "r" in a else decode(a["v"], refs=refs) for a in call["args"]]
        kwargs = {k: decode(v, refs=refs) for k, v in call["kwargs"].items()}
        value = fn(*args, **kwargs)
    except BaseException as err:  # noqa: BLE001 - the test decides what an exception means
        return {"raised": type(err).__name__, "message": str(err)[:500]}
    after = [_maybe_encode(a) if type(a) in (list, dict, set) else None for a in args]  # in-place changes
    try:
        return {"value": encode(value), "after": after}
    except TypeError:
        refs[len(refs)] = value
        return {"ref": len(refs) - 1, "type": type(value).__name__, "after": after}


# ---------------------------------------------------------------- H: the tests, trusted

class Ref:
    """An object that lives in P. Equal only to itself; calling it calls it there."""

    def __init__(self, remote, ref, type_name):
        self._remote, self._ref, self._type = remote, ref, type_name

    def __call__(self, *args, **kwargs):
        return self._remote.call({"ref": self._ref}, args, kwargs)

    def __repr__(self):
        return f"<{self._type} object in the program>"

    def __bool__(self):
        raise TypeError(f"the truth of a {self._type} object in the program is not plain data")


class RemoteError(Exception):
    pass


class Remote:
    """H's end of the pipe to P: calls with a deadline, values decoded strictly."""

    def __init__(self, call_w, ret_r, deadline):
        self.call_w, self.ret_r, self.deadline = call_w, ret_r, deadline

    def function(self, name):
        def call(*args, **kwargs):
            return self.call({"name": name}, args, kwargs)
        call.__name__ = name
        return call

    def call(self, target, args, kwargs):
        wire = [{"r": a._ref} if isinstance(a, Ref) else {"v": encode(a)} for a in args]
        write_frame(self.call_w, {**target, "args": wire, "kwargs": {k: encode(v) for k, v in kwargs.items()}})
        if "get" in target:
            args = ()
        reply = read_frame(self.ret_r, self.deadline)
        if "raised" in reply:
            exc = getattr(builtins, reply["raised"], None)
            if isinstance(exc, type) and issubclass(exc, Exception) and exc is not TimeoutError:
                raise exc(reply["message"])
            raise RemoteError(f"{reply['raised']}: {reply['message']}")
        for arg, after in zip(args, reply["after"]):
            if after is not None and type(arg) in (list, dict, set):
                new = decode(after)
                arg.clear()
                arg.update(new) if type(arg) is not list else arg.extend(new)
        if "ref" in reply:
            return Ref(self, reply["ref"], reply["type"])
        return decode(reply["value"])


class _Cases(ast.NodeTransformer):
    """``assert test, msg`` -> ``__case__(lambda: test)``: every assertion is one case, counted
    whether it passes or not, and the tests go on after a failed one."""

    def visit_Assert(self, node):
        call = ast.Expr(ast.Call(ast.Name("__case__", ast.Load()),
                                 [ast.Lambda(ast.arguments([], [], None, [], [], None, []), node.test)], []))
        return ast.copy_location(call, node)


_COMPILED = {}  # test code -> code object: GRPO scores G samples of a task against one test


def _compiled_tests(code):
    if code not in _COMPILED:
        if len(_COMPILED) >= 512:
            _COMPILED.clear()
        tree = ast.fix_missing_locations(_Cases().visit(ast.parse(code)))
        _COMPILED[code] = compile(tree, "tests.py", "exec")
    return _COMPILED[code]


def run_tests(tests, remote, names):
    """Exec the tests with the program's names bound to remote calls. -> (passed, total, error)."""
    counts = [0, 0]

    def case(check):
        counts[1] += 1
        try:
            ok = check()
        except TimeoutError:
            raise
        except Exception:  # noqa: BLE001 - a case that raises is a failed case
            ok = False
        counts[0] += bool(ok)

    namespace = {"__name__": "__tests__", "__case__": case}
    for name, kind in names.items():
        if kind.startswith("module:") and kind[7:].split(".")[0] in sys.stdlib_module_names:
            namespace[name] = importlib.import_module(kind[7:])
        elif kind in ("call", "value"):
            namespace[name] = remote.function(name) if kind == "call" else remote.call({"get": name}, (), {})
    error = None
    try:
        exec(_compiled_tests(tests["code"]), namespace)
        if tests.get("call"):
            namespace[tests["call"]](remote.function(tests["entry_point"]))
    except TimeoutError:
        raise
    except BaseException as err:  # noqa: BLE001 - the tests stopped before their end
        error = f"{type(err).__name__}: {err}"[:500]
    return counts[0], counts[1], error


# ---------------------------------------------------------------- processes

LIBC = ctypes.CDLL(None, use_errno=True)


def _limit_and_drop(limits, workdir, as_root):
    """In P before any program code: rlimits, a new uid (as root), the work dir, no env."""
    mib = 1 << 20
    for name, value in (("RLIMIT_AS", limits["memory_mb"] * mib), ("RLIMIT_CPU", limits["cpu_s"]),
                        ("RLIMIT_FSIZE", limits["file_size_mb"] * mib), ("RLIMIT_NOFILE", limits["open_files"]),
                        ("RLIMIT_NPROC", limits["processes"]), ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails; it does not kill
    if as_root:
        os.setgroups([])
        os.setgid(SANDBOX_UID)
        os.setuid(SANDBOX_UID)
    os.chdir(workdir)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": workdir, "PYTHONHASHSEED": "0"})


_RUN_NUMBERS = itertools.count()


def _new_workdir():
    """A new /tmp/run-N. Not ``tempfile``: it imports ``random``, whose reseeding after every
    fork costs each program process a tenth of a millisecond."""
    while True:
        path = f"/tmp/run-{os.getpid()}-{next(_RUN_NUMBERS)}"
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue


def _fork_program(limits, as_root):
    """Fork P, set up (own process group, limits, uid, work dir) and waiting for its program.
    -> (pid, call_w, ret_r, workdir)."""
    workdir = _new_workdir()
    if as_root:
        os.chown(workdir, SANDBOX_UID, SANDBOX_UID)
    call_r, call_w = os.pipe()
    ret_r, ret_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            out = os.open(os.path.join(workdir, ".stdout"), os.O_WRONLY | os.O_CREAT, 0o600)
            err = os.open(os.path.join(workdir, ".stderr"), os.O_WRONLY | os.O_CREAT, 0o600)
            if as_root:
                os.fchown(out, SANDBOX_UID, SANDBOX_UID)
                os.fchown(err, SANDBOX_UID, SANDBOX_UID)
            null = os.open(os.devnull, os.O_RDONLY)
            for src, dst in ((null, 0), (out, 1), (err, 2)):
                os.dup2(src, dst)
            keep = sorted({0, 1, 2, call_r, ret_w})
            for lo, hi in zip(keep, keep[1:] + [1 << 16]):
                os.closerange(lo + 1, hi)
            gc.disable()  # a short-lived process: collections would only copy shared pages
            _limit_and_drop(limits, workdir, as_root)
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            program_main(call_r, ret_w)
        finally:
            os._exit(0)
    os.close(call_r)
    os.close(ret_w)
    return pid, call_w, ret_r, workdir


def zygote_main(sock, as_root):
    """Z: forks the program processes for H, so that H itself never forks. A fork marks every
    page of the forking process copy-on-write, and H, which runs the tests while P lives, would
    then pay a page fault for each page it writes (half a millisecond a run); Z only waits.
    Z never sees a test or a secret. Requests (JSON on a SOCK_SEQPACKET socket): {"spawn":
    limits} -> P's pid and work dir, with P's two pipe ends attached; {"wait": pid} -> its exit
    status and peak memory (only asked for a run that did not pass)."""
    while True:
        message = sock.recv(65536)
        if not message:
            return
        request = json.loads(message)
        if "wait" in request:
            try:
                _, status, usage = os.wait4(request["wait"], 0)
                reply = {"status": status, "maxrss_kib": usage.ru_maxrss}
            except (ChildProcessError, TypeError):
                reply = {"status": 0, "maxrss_kib": 0}  # not a program of ours
            sock.send(json.dumps(reply).encode())
            continue
        _reap()  # the last runs' programs, killed by H and not asked about
        try:
            pid, call_w, ret_r, workdir = _fork_program(request["spawn"], as_root)
        except (KeyError, TypeError, ValueError, OSError) as err:
            sock.send(json.dumps({"error": f"{type(err).__name__}: {err}"}).encode())
            continue
        socket.send_fds(sock, [json.dumps({"pid": pid, "workdir": workdir}).encode()], [call_w, ret_r])
        os.close(call_w)
        os.close(ret_r)


class Zygote:
    """H's end of Z. A Z that died (a program that killed it) makes every call raise EOFError."""

    def __init__(self, as_root):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            try:
                self.sock.close()
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)  # not H's request and result pipes
                os.dup2(null, 1)
                zygote_main(theirs, as_root)
            finally:
                os._exit(0)
        theirs.close()

    def _ask(self, request, fds=0):
        try:
            self.sock.send(json.dumps(request).encode())
            data, got, _, _ = socket.recv_fds(self.sock, 65536, fds)
        except OSError:
            data = b""
        if not data:
            raise EOFError("the program zygote died")
        return json.loads(data), got

    def spawn(self, limits):
        """-> the spare (pid, call_w, ret_r, workdir, limits)."""
        reply, fds = self._ask({"spawn": limits}, 2)
        if "error" in reply:
            raise OSError(reply["error"])
        return reply["pid"], fds[0], fds[1], reply["workdir"], limits

    def wait(self, pid):
        """-> (wait status, peak memory in KiB) of a program that was killed."""
        reply, _ = self._ask({"wait": pid})
        return reply["status"], reply["maxrss_kib"]


def _discard(spare):
    if spare is not None:
        os.close(spare[1])
        os.close(spare[2])
        os.kill(spare[0], signal.SIGKILL)
        shutil.rmtree(spare[3], ignore_errors=True)


def _peak_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    except (OSError, ValueError):
        return 0


def _read_capped(path, cap):
    try:
        with open(path, "rb") as f:
            return f.read(cap).decode("utf-8", "replace")
    except OSError:
        return ""


def test_run(request, stdin, zygote, spare):
    """One run: hand the program to P (the spare forked after the last run, if its limits fit),
    only then read the tests and the secret (so P never had them), run the tests against P,
    report."""
    start = time.monotonic()
    deadline = start + request["limits"]["wall_s"]
    if spare is None or spare[4] != request["limits"]:
        _discard(spare)
        spare = zygote.spawn(request["limits"])
    pid, call_w, ret_r, workdir, _ = spare
    write_frame(call_w, {"program": request["program"], "module": request.get("module", "solution")})
    marks = {"forked": time.monotonic()}
    part2 = read_frame(stdin)
    result = {"secret": part2["secret"], "passed_cases": 0, "cases": 0}
    try:
        hello = read_frame(ret_r, deadline)
        marks["loaded"] = time.monotonic()
        if "load_error" in hello:
            result.update(status="runtime_error", error=hello["load_error"][:2000])
        else:
            passed, total, error = run_tests(part2["tests"], Remote(call_w, ret_r, deadline), hello["names"])
            status = "passed" if error is None and total and passed == total else "failed"
            result.update(status=status, passed_cases=passed, cases=total, error=error)
    except TimeoutError:
        result.update(status="timeout")
    except (EOFError, ValueError, OSError, struct.error) as err:
        result.update(status="runtime_error", error=f"the program stopped answering ({type(err).__name__})")
    marks["tested"] = time.monotonic()
    peak_kib = _peak_kib(pid)  # while P still exists (it is reaped without waiting for it)
    os.close(call_w)
    os.close(ret_r)
    try:
        os.killpg(pid, signal.SIGKILL)  # P and what it forked (a fork that left the group: see serve)
    except (ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    status = 0
    if result["status"] != "passed":  # why it ended matters only then; an exit being torn down costs ~1 ms
        status, maxrss_kib = zygote.wait(pid)
        peak_kib = max(peak_kib, maxrss_kib)
    marks["reaped"] = time.monotonic()
    cap = request["limits"]["output_bytes"]
    stderr = _read_capped(os.path.join(workdir, ".stderr"), cap)
    stdout = _read_capped(os.path.join(workdir, ".stdout"), cap)
    shutil.rmtree(workdir, ignore_errors=True)
    if result["status"] == "runtime_error" and "MemoryError" in stderr + (result.get("error") or ""):
        result["status"] = "memory_limit"
    if result["status"] != "passed" and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
        result["status"] = "timeout"
    marks["done"] = time.monotonic()
    result["phases_ms"] = {k: round((t - start) * 1000, 3) for k, t in marks.items()}
    result.update(stdout=stdout, stderr=stderr, wall_s=round(time.monotonic() - start, 4),
                  peak_memory_mb=round(peak_kib / 1024, 1))
    return result


# ---------------------------------------------------------------- the fork server

def _kill_everything_else(keep):
    """Every process of this pid namespace but its init and ``keep`` (H and Z), and every work
    dir: what a run left behind (orphans, daemons, files). Only inside a sandbox's own pid
    namespace. A process with a SIGKILL pending cannot fork, so scanning until a scan finds no
    new process also catches children forked between a scan and its kills."""
    killed = set(keep) | {1}
    while True:
        found = {int(p) for p in os.listdir("/proc") if p.isdigit()} - killed
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed |= found
    for leftover in glob.glob("/tmp/run-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _reap():
    """Collect the children that have finished dying, without waiting for the others."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                return
        except ChildProcessError:
            return


def _add_site_packages():
    """The interpreter's (or its virtual environment's) installed packages, for programs that
    import them. The server starts without ``site`` (``-S``): its ``.pth`` hooks would import
    modules that every fork then pays for; here only the folders are added."""
    import site  # noqa: PLC0415 - not at the top: ``-S`` keeps importing it from doing anything else

    env = os.path.dirname(os.path.dirname(sys.executable))  # a virtual environment's, when it is one
    prefixes = [env] if os.path.exists(os.path.join(env, "pyvenv.cfg")) else [sys.prefix]
    sys.path.extend(p for p in site.getsitepackages(prefixes) if os.path.isdir(p) and p not in sys.path)


def serve(stdin=0, stdout=1, own_pid_namespace=False, cpu=None):
    """Run requests from ``stdin`` until it closes; one result frame per request on ``stdout``.
    This process is the trusted side of every run: not dumpable (P may not read or ptrace it),
    and P runs as another uid when this one is root. ``cpu``: where H, Z and every P run (a
    call's round trip between H and P costs ~5 us on one CPU, ~50 us between two)."""
    as_root = os.getuid() == 0
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    LIBC.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0 (Z, forked below, inherits it)
    _add_site_packages()
    for name in ("collections", "itertools", "functools", "heapq", "math", "re", "string", "typing", "bisect"):
        __import__(name)  # the usual imports of a program and its tests, paid once per server
    gc.freeze()  # objects loaded so far skip collection: a fork's pages stay shared, not copied
    zygote = Zygote(as_root)
    write_frame(stdout, {"ready": True, "as_root": as_root, "python": sys.version.split()[0]})
    spare = None
    while True:
        try:
            request = read_frame(stdin)
        except EOFError:
            _discard(spare)
            return
        try:
            result = test_run(request, stdin, zygote, spare)
        except EOFError:  # the host went away, or Z died: this server ends (the host starts another)
            return
        except (KeyError, TypeError, ValueError, OSError) as err:
            result = {"status": "sandbox_error", "error": f"{type(err).__name__}: {err}"[:500]}
        if own_pid_namespace:
            _kill_everything_else({os.getpid(), zygote.pid})
        write_frame(stdout, result)
        # The next run's program process, made while the host reads this result. It is forked
        # (by Z) before that run's request exists here, so it never holds that run's tests or
        # secret.
        try:
            spare = zygote.spawn(request["limits"])
        except EOFError:
            return
        except (KeyError, TypeError, ValueError, OSError):
            spare = None  # a malformed request: the next one forks its own


def unpack_files(workdir, as_root):
    """The work dir, made from one frame of files ({name: hex}) on stdin: the docker backend's
    ``Sandbox.run``, whose work dir cannot be bound from the host. Stdin is then empty."""
    files = read_frame(0)["files"]
    os.makedirs(workdir, exist_ok=True)
    for name, content in files.items():
        path = os.path.join(workdir, name)
        if not os.path.realpath(path).startswith(os.path.realpath(workdir) + os.sep):
            raise ValueError(f"file name outside the work dir: {name!r}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(bytes.fromhex(content))
    if as_root:
        for root, dirs, names in os.walk(workdir):
            for name in [root, *(os.path.join(root, n) for n in dirs + names)]:
                os.chown(name, SANDBOX_UID, SANDBOX_UID)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)


def launch(limits, workdir, command):
    """Become ``command`` with the run's limits and uid, in ``workdir`` (``Sandbox.run``); first
    ``--files-on-stdin`` makes the work dir from stdin (``unpack_files``)."""
    if command[:1] == ["--files-on-stdin"]:
        unpack_files(workdir, os.getuid() == 0)
        command = command[1:]
    _limit_and_drop(limits, workdir, os.getuid() == 0)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # the command's own, not the program server's
    os.execvp(command[0], command)


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(own_pid_namespace="--own-pid-namespace" in sys.argv,
          cpu=int(sys.argv[sys.argv.index("--cpu") + 1]) if "--cpu" in sys.argv else None)
elif __name__ == "__main__" and sys.argv[1:2] == ["launch"]:
    launch(json.loads(sys.argv[2]), sys.argv[3], sys.argv[4:])
