"""What runs inside the sandbox: a fork server that is also the trusted test process (H), a
zygote (Z) that forks, and per run a fresh untrusted program process (P). Standard library only:
the sandbox's interpreter runs this file's source (``python -I -c``), without the project
installed.

Why two processes. A grader that runs the tests in the program's own interpreter can be fooled
by the program: ``sys.exit(0)`` / ``os._exit(0)`` before the tests, a patched ``assert`` helper,
an always-equal ``__eq__`` object, a forged success marker. Here the program P only defines its
names and then answers calls; the tests run in H, which P cannot read, signal or ptrace (P runs
as another uid when the sandbox starts as root; H is not dumpable either way), and call P's
functions through a pipe. Values cross as data (numbers, strings, containers of them; anything
else stays in P as an opaque reference whose equality is identity), so a result cannot pretend
to equal anything. H's report carries a per-run secret that is read after P was forked, so it is
in no memory P ever had, and travels on a pipe P does not hold.

The trust boundary, as an attacker (the program) meets it:

* The tests own their namespace. They see the real builtins, standard modules H imports itself,
  the prompt's own helpers (``prelude``, defined in H from the row, never taken from P), and from
  P only the names the tests read and define nowhere else: the entry point (HumanEval), the
  functions the asserts call (MBPP). A program that defines ``abs``, ``range`` or a prompt's
  helper changes nothing the tests use.
* H trusts nothing P sends: every message is checked against its shape (a forged or malformed
  one fails the row with its reason; nothing of it is imported or called), a reply over
  ``REPLY_LIMIT`` bytes is refused unread, decoding happens under the run's deadline, and an
  alarm at that deadline stops H's own work. H keeps one capability (kill, for the run's
  processes), a capped address space, and never opens a path P could have made: P's stdout and
  stderr are anonymous memory files (``memfd``) that Z made and H reads by descriptor.
* Nothing is shared between runs: the seccomp filter (built on the host, ``seccomp.py``,
  installed here before Z is forked) refuses SysV/POSIX IPC, keyrings, namespaces, mounts,
  ptrace and CPU re-pinning; P's work dir is new per run and removed by Z; inside the sandbox's
  own pid namespace every process a run left is killed before the next run.
* Limits reach the whole run: P's rlimits per process, and when the host made a cgroup for the
  sandbox, Z joins it at start, so every P and everything P forks share its memory (shared
  memory and files included), process and CPU caps.

Per run: H hands the program to P, a process forked and set up (own process group, limits, uid,
work dir, every other file descriptor closed) after the previous run by Z; then H reads the
tests and the secret, runs the tests, kills P's process group, and kills every other process of
the pid namespace but Z.
"""

import ast
import base64
import builtins
import ctypes
import gc
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
import symtable
import sys
import time

TYPES = {t.__name__: t for t in (int, float, complex, str, bytes, bool, list, tuple, set, frozenset, dict, type(None))}
# Standard modules with side effects on import, which the tests never get for a name they read.
NO_IMPORT = {"antigravity", "this", "idlelib", "turtle", "turtledemo", "tkinter", "webbrowser", "pydoc"}
FRAME = struct.Struct("<I")
REPLY_LIMIT = 1 << 20  # the largest message P may send H
TEST_PROCESS_MB = 2048  # H's own address space
CAP_KILL = 5
WORKDIR_PREFIX = "/tmp/rlvr-run-"


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
    """One frame; a frame over ``limit`` bytes raises ValueError before its body is read, and
    one that arrives after ``deadline`` (decoding included) raises TimeoutError."""
    (n,) = FRAME.unpack(read_exact(fd, FRAME.size, deadline))
    if n > limit:
        raise ValueError(f"a message of {n} bytes (at most {limit})")
    return _loads(read_exact(fd, n, deadline), deadline)


def _loads(data, deadline):
    try:
        value = json.loads(data)
    except RecursionError:
        raise ValueError("a message nested too deeply") from None
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError
    return value


class FrameReader:
    """``read_frame`` for a pipe this process alone reads (the calls between H and P): what is
    there is read at once, so a frame whose header and body arrive together costs one read."""

    def __init__(self, fd):
        self.fd, self.buffer = fd, bytearray()

    def _fill(self, n, deadline):
        while len(self.buffer) < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    raise TimeoutError
            chunk = os.read(self.fd, max(n - len(self.buffer), 65536))
            if not chunk:
                raise EOFError
            self.buffer += chunk

    def read(self, deadline=None, limit=1 << 26):
        self._fill(FRAME.size, deadline)
        (n,) = FRAME.unpack_from(self.buffer)
        if n > limit:
            raise ValueError(f"a message of {n} bytes (at most {limit})")
        self._fill(FRAME.size + n, deadline)
        data = bytes(self.buffer[FRAME.size:FRAME.size + n])
        del self.buffer[:FRAME.size + n]
        return _loads(data, deadline)


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
    Untrusted: whatever it does, it can only write frames to ``ret_w`` (which H checks)."""
    calls = FrameReader(call_r)
    try:
        first = calls.read()
    except EOFError:
        return  # a spare process that was not needed
    module = first.get("module", "solution")
    namespace = {"__name__": module, "__builtins__": __builtins__}
    refs = {}
    try:
        exec(compile(first["program"], "solution.py", "exec"), namespace)
    except BaseException as err:  # noqa: BLE001 - reported, whatever it is
        write_frame(ret_w, {"load_error": f"{type(err).__name__}: {err}"[:2000]})
        return
    names = {k: _kind(v, module) for k, v in list(namespace.items())[:1000] if not k.startswith("__")}
    write_frame(ret_w, {"names": {k: kind for k, kind in names.items() if kind}})
    while True:
        try:
            call = calls.read()
        except EOFError:
            return
        write_frame(ret_w, _answer(namespace, refs, call))


def _kind(value, module):
    """How H may see a global of the program: a function it calls, a value it fetches, or
    nothing (modules, and names the program imported from elsewhere)."""
    if type(value).__name__ == "module":
        return None
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
        return {"ref": len(refs) - 1, "type": type(value).__name__[:100], "after": after}


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


class ProtocolError(Exception):
    """P sent something that is not a message of the protocol: the row fails with this reason."""


class Deadline(BaseException):
    """The run's time is up (H's alarm): not an Exception, so that no test's ``except`` keeps it."""


def _is_str_dict(x, values=None):
    return type(x) is dict and all(type(k) is str and (values is None or v in values) for k, v in x.items())


def check_hello(hello):
    """P's first message, or ProtocolError: its names ({name: "call" | "value"}), or its load error."""
    if type(hello) is dict and hello.keys() == {"load_error"} and type(hello["load_error"]) is str:
        return hello
    if (type(hello) is dict and hello.keys() == {"names"} and _is_str_dict(hello["names"], ("call", "value"))
            and len(hello["names"]) <= 1000):
        return hello
    raise ProtocolError("the program's first message is not its names")


def check_reply(reply, n_args):
    """A reply to a call, or ProtocolError."""
    if type(reply) is not dict:
        raise ProtocolError("a reply that is not a message")
    if reply.keys() == {"raised", "message"} and type(reply["raised"]) is str and type(reply["message"]) is str:
        return reply
    after = reply.get("after")
    if not (type(after) is list and len(after) == n_args and all(a is None or type(a) is dict for a in after)):
        raise ProtocolError("a reply without the state of its arguments")
    if reply.keys() == {"value", "after"}:
        return reply
    if reply.keys() == {"ref", "type", "after"} and type(reply["ref"]) is int and type(reply["type"]) is str:
        return reply
    raise ProtocolError("a reply of an unknown shape")


class Remote:
    """H's end of the pipe to P: calls with a deadline, replies checked and decoded strictly."""

    def __init__(self, call_w, ret_r, deadline):
        self.call_w, self.replies, self.deadline = call_w, FrameReader(ret_r), deadline

    def function(self, name):
        def call(*args, **kwargs):
            return self.call({"name": name}, args, kwargs)
        call.__name__ = name
        return call

    def receive(self):
        try:
            return self.replies.read(self.deadline, REPLY_LIMIT)
        except ValueError as err:
            raise ProtocolError(str(err)) from None

    def call(self, target, args, kwargs):
        wire = [{"r": a._ref} if isinstance(a, Ref) else {"v": encode(a)} for a in args]
        write_frame(self.call_w, {**target, "args": wire, "kwargs": {k: encode(v) for k, v in kwargs.items()}})
        if "get" in target:
            args = ()
        reply = check_reply(self.receive(), 1 if "get" in target else len(args))
        if "raised" in reply:
            exc = getattr(builtins, reply["raised"], None)
            if isinstance(exc, type) and issubclass(exc, Exception) and exc is not TimeoutError:
                raise exc(reply["message"])
            raise RemoteError(f"{reply['raised']}: {reply['message']}")
        try:
            for arg, after in zip(args, reply["after"]):
                if after is not None and type(arg) in (list, dict, set):
                    new = decode(after)
                    arg.clear()
                    arg.update(new) if type(arg) is not list else arg.extend(new)
            if "ref" in reply:
                return Ref(self, reply["ref"], reply["type"][:100])
            return decode(reply["value"])
        except (ValueError, TypeError, RecursionError) as err:
            raise ProtocolError(f"a reply that does not decode ({type(err).__name__})") from None


class _Cases(ast.NodeTransformer):
    """``assert test, msg`` -> ``__case__(lambda: test)``: every assertion is one case, counted
    whether it passes or not, and the tests go on after a failed one."""

    def visit_Assert(self, node):
        call = ast.Expr(ast.Call(ast.Name("__case__", ast.Load()),
                                 [ast.Lambda(ast.arguments([], [], None, [], [], None, []), node.test)], []))
        return ast.copy_location(call, node)


_PLANS = {}  # (tests, prelude, entry point) -> compiled code and the names they take from P


def _global_names(code):
    """-> (names ``code`` reads as globals, names it binds at module level), by ``symtable``."""
    table = symtable.symtable(code, "tests.py", "exec")
    reads, binds = set(), set()
    for sym in table.get_symbols():
        if sym.is_assigned() or sym.is_imported() or sym.is_namespace():
            binds.add(sym.get_name())
        if sym.is_referenced():
            reads.add(sym.get_name())
    stack = list(table.get_children())
    while stack:
        scope = stack.pop()
        stack += scope.get_children()
        for sym in scope.get_symbols():
            if sym.is_global() and sym.is_referenced():
                reads.add(sym.get_name())
            if sym.is_declared_global() and sym.is_assigned():
                binds.add(sym.get_name())
    return reads, binds


def _called_in_every_assert(tree):
    """The names called in every assert (MBPP/126's ``sum``, but not the ``abs`` of one of them)."""
    calls = [{n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
             for node in ast.walk(tree) if isinstance(node, ast.Assert)]
    return set.intersection(*calls) if calls else set()


def plan_tests(tests):
    """Compile the tests once (GRPO scores G samples of a task against one test) and decide,
    from the code alone, which names come from the program: the names the tests and their
    prelude read and bind nowhere, that are neither builtins nor standard modules (which H
    imports itself), plus the entry point. Rows without an entry point whose tests read no
    such name (an MBPP task that names its function ``sum``) take the functions the asserts
    call (every one of them). -> (prelude code, tests code, names from P, standard modules to
    import)."""
    key = (tests["code"], tests.get("prelude", ""), tests.get("entry_point"))
    if key not in _PLANS:
        if len(_PLANS) >= 512:
            _PLANS.clear()
        tree = ast.parse(tests["code"])
        reads, binds = _global_names(tests["code"])
        prelude_reads, prelude_binds = _global_names(key[1])
        free = (reads | prelude_reads) - binds - prelude_binds - set(dir(builtins)) - {"__case__"}
        modules = {n for n in free if n in sys.stdlib_module_names and n not in NO_IMPORT}
        from_program = free | ({key[2]} if key[2] else set())
        if not key[2] and not free - modules:
            from_program |= _called_in_every_assert(tree)
        compiled = compile(ast.fix_missing_locations(_Cases().visit(tree)), "tests.py", "exec")
        _PLANS[key] = (compile(key[1], "prelude.py", "exec"), compiled, from_program, modules)
    return _PLANS[key]


def run_tests(tests, remote, names):
    """Exec the tests in a namespace of their own (see the module's docstring).
    -> (passed, total, error)."""
    counts = [0, 0]

    def case(check):
        counts[1] += 1
        try:
            ok = check()
        except (TimeoutError, ProtocolError):
            raise
        except Exception:  # noqa: BLE001 - a case that raises is a failed case
            ok = False
        counts[0] += bool(ok)

    error = None
    try:
        prelude, compiled, from_program, modules = plan_tests(tests)
        namespace = {"__name__": "__tests__", "__case__": case, "__builtins__": builtins}
        exec(prelude, namespace)
        for name in sorted(from_program):
            kind = names.get(name)
            if kind == "call":
                namespace[name] = remote.function(name)
            elif kind == "value":
                namespace[name] = remote.call({"get": name}, (), {})
            elif name in modules:
                namespace[name] = importlib.import_module(name)
        exec(compiled, namespace)
        if tests.get("call"):
            namespace[tests["call"]](remote.function(tests["entry_point"]))
    except (TimeoutError, Deadline, ProtocolError):
        raise
    except BaseException as err:  # noqa: BLE001 - the tests stopped before their end
        error = f"{type(err).__name__}: {err}"[:500]
    return counts[0], counts[1], error


# ---------------------------------------------------------------- processes

LIBC = ctypes.CDLL(None, use_errno=True)


class _Filter(ctypes.Structure):  # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp(filter_hex):
    """The host's filter (``seccomp.py``) for this process and every process it forks from now."""
    raw = bytes.fromhex(filter_hex)
    code = (ctypes.c_char * len(raw)).from_buffer_copy(raw)
    program = _Filter(len(raw) // 8, ctypes.cast(code, ctypes.c_void_p))
    if LIBC.prctl(38, 1, 0, 0, 0) != 0 or LIBC.prctl(22, 2, ctypes.byref(program), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "seccomp filter refused")  # PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP


def keep_only_capabilities(*caps):
    """Drop every capability of this process but ``caps`` (capset, version 3)."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    mask = sum(1 << c for c in caps)
    data = (ctypes.c_uint32 * 6)(mask, mask, 0, 0, 0, 0)  # effective, permitted, inheritable (low, high)
    if LIBC.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _limit_and_drop(limits, workdir, uid):
    """In P before any program code: rlimits, the sandbox's uid (when started as root), the work
    dir."""
    mib = 1 << 20
    for name, value in (("RLIMIT_AS", limits["memory_mb"] * mib), ("RLIMIT_CPU", limits["cpu_s"]),
                        ("RLIMIT_FSIZE", limits["file_size_mb"] * mib), ("RLIMIT_NOFILE", limits["open_files"]),
                        ("RLIMIT_NPROC", limits["processes"]), ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    os.chdir(workdir)


def _program_environment(home):
    """A program's environment variables, nothing of the host's."""
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": home, "PYTHONHASHSEED": "0"})


_RUN_NUMBERS = itertools.count()


def _new_workdir(uid):
    """A new work dir. Not ``tempfile``: it imports ``random``, whose reseeding after every
    fork costs each program process a tenth of a millisecond."""
    while True:
        path = f"{WORKDIR_PREFIX}{os.getpid()}-{next(_RUN_NUMBERS)}"
        try:
            os.mkdir(path, 0o700)
            break
        except FileExistsError:
            continue
    if uid is not None:
        os.chown(path, uid, uid)
    return path


def _fork_program(limits, uid):
    """Fork P, set up (own process group, limits, uid, work dir, stdout and stderr to anonymous
    memory files) and waiting for its program. -> (pid, [call_w, ret_r, stdout, stderr], workdir)."""
    workdir = _new_workdir(uid)
    os.environ["HOME"] = workdir  # the rest of P's environment is Z's (``zygote_main``)
    call_r, call_w = os.pipe()
    ret_r, ret_w = os.pipe()
    out, err = os.memfd_create("stdout", os.MFD_CLOEXEC), os.memfd_create("stderr", os.MFD_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            os.dup2(out, 1)  # 0 is Z's /dev/null; sys.stdout and sys.stderr are Z's, on 1 and 2
            os.dup2(err, 2)
            keep = sorted({0, 1, 2, call_r, ret_w})
            for lo, hi in zip(keep, keep[1:] + [1 << 16]):
                os.closerange(lo + 1, hi)
            gc.disable()  # a short-lived process: collections would only copy shared pages
            _limit_and_drop(limits, workdir, uid)
            program_main(call_r, ret_w)
        finally:
            os._exit(0)
    for fd in (call_r, ret_w):
        os.close(fd)
    return pid, [call_w, ret_r, out, err], workdir


def _remove_workdirs(workdirs):
    """The work dirs of finished runs (Z's job: as root with DAC_OVERRIDE it may remove what a
    program left there; ``rmtree`` follows no link and opens no FIFO). Most are empty, and
    ``rmdir`` alone costs a tenth of ``rmtree``'s page faults."""
    while workdirs:
        path = workdirs.pop()
        try:
            os.rmdir(path)
        except OSError:
            shutil.rmtree(path, ignore_errors=True)


def zygote_main(sock, uid, cgroup_fds):
    """Z: forks the program processes for H, so that H itself never forks. A fork marks every
    page of the forking process copy-on-write, and H, which runs the tests while P lives, would
    then pay a page fault for each page it writes (half a millisecond a run); Z only waits.
    Z never sees a test or a secret. It joins the sandbox's cgroups first, so that every P is
    born in them. Requests (JSON on a SOCK_SEQPACKET socket): {"spawn": limits} -> P's pid, with
    its four descriptors attached; {"wait": pid} -> its exit status and peak memory (only asked
    for a run that did not pass)."""
    for fd in cgroup_fds:
        os.write(fd, b"0")
        os.close(fd)
    # What every P shares, set here once: each P inherits it instead of building it after its
    # fork, where every page it writes is a copy-on-write fault (~2.5 us each on a VM; P's setup
    # was a third of a trivial run's CPU).
    _program_environment("/")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails; it does not kill
    sys.stdout = os.fdopen(1, "w", buffering=1)  # line-buffered: P is killed, never flushed
    sys.stderr = os.fdopen(2, "w", buffering=1)
    workdirs = []
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
        _remove_workdirs(workdirs)
        try:
            pid, fds, workdir = _fork_program(request["spawn"], uid)
            workdirs.append(workdir)
        except (KeyError, TypeError, ValueError, OSError) as err:
            sock.send(json.dumps({"error": f"{type(err).__name__}: {err}"}).encode())
            continue
        socket.send_fds(sock, [json.dumps({"pid": pid, "workdir": workdir}).encode()], fds)
        for fd in fds:
            os.close(fd)


class Zygote:
    """H's end of Z. A Z that died (a program that killed it) makes every call raise EOFError."""

    def __init__(self, uid, cgroup_fds):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            try:
                self.sock.close()
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)  # not H's request and result pipes
                os.dup2(null, 1)
                zygote_main(theirs, uid, cgroup_fds)
            finally:
                os._exit(0)
        theirs.close()
        for fd in cgroup_fds:
            os.close(fd)

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
        """-> the spare (pid, [call_w, ret_r, stdout, stderr], limits)."""
        reply, fds = self._ask({"spawn": limits}, 4)
        if "error" in reply:
            raise OSError(reply["error"])
        return reply["pid"], fds, limits

    def wait(self, pid):
        """-> (wait status, peak memory in KiB) of a program that was killed."""
        reply, _ = self._ask({"wait": pid})
        return reply["status"], reply["maxrss_kib"]


def _discard(spare):
    if spare is not None:
        for fd in spare[1]:
            os.close(fd)
        os.kill(spare[0], signal.SIGKILL)


def _peak_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    except (OSError, ValueError):
        return 0


def _on_alarm(signum, frame):
    raise Deadline


def _tests_phase(request, part2, fds, deadline):
    """The program's names, then the tests against it. -> the result's fields."""
    call_w, ret_r = fds[0], fds[1]
    remote = Remote(call_w, ret_r, deadline)
    try:
        hello = check_hello(remote.receive())
        if "load_error" in hello:
            return {"status": "runtime_error", "error": hello["load_error"]}
        passed, total, error = run_tests(part2["tests"], remote, hello["names"])
        status = "passed" if error is None and total and passed == total else "failed"
        return {"status": status, "passed_cases": passed, "cases": total, "error": error}
    except (TimeoutError, Deadline):
        return {"status": "timeout"}
    except ProtocolError as err:
        return {"status": "failed", "error": f"the program broke the protocol: {err}"}
    except (EOFError, OSError, struct.error) as err:
        return {"status": "runtime_error", "error": f"the program stopped answering ({type(err).__name__})"}


def test_run(request, stdin, zygote, spare, oom_fd):
    """One run: hand the program to P (the spare forked after the last run, if its limits fit),
    only then read the tests and the secret (so P never had them), run the tests against P
    under an alarm at the run's deadline, report."""
    start = time.monotonic()
    deadline = start + request["limits"]["wall_s"]
    if spare is None or spare[2] != request["limits"]:
        _discard(spare)
        spare = zygote.spawn(request["limits"])
    pid, fds, _ = spare
    ooms = read_oom_kills(oom_fd)
    write_frame(fds[0], {"program": request["program"], "module": request.get("module", "solution")})
    marks = {"forked": time.monotonic()}
    part2 = read_frame(stdin)
    result = {"secret": part2["secret"], "passed_cases": 0, "cases": 0}
    signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.001) + 0.5)
    try:
        result.update(_tests_phase(request, part2, fds, deadline))
    except Deadline:  # between the phase's end and the disarm
        result.update(status="timeout")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    marks["tested"] = time.monotonic()
    peak_kib = _peak_kib(pid)  # while P still exists (it is reaped without waiting for it)
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
    stdout, stderr = (os.pread(fd, cap, 0).decode("utf-8", "replace") for fd in fds[2:])
    for fd in fds:
        os.close(fd)
    if result["status"] != "passed" and (read_oom_kills(oom_fd) > ooms or "MemoryError" in stderr
                                         + (result.get("error") or "")):
        result["status"] = "memory_limit"
    if result["status"] != "passed" and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
        result["status"] = "timeout"
    marks["done"] = time.monotonic()
    result["phases_ms"] = {k: round((t - start) * 1000, 3) for k, t in marks.items()}
    result.update(stdout=stdout, stderr=stderr, wall_s=round(time.monotonic() - start, 4),
                  peak_memory_mb=round(peak_kib / 1024, 1))
    return result


def read_oom_kills(fd):
    """The ``oom_kill`` count of the sandbox cgroup's memory.events (v2) or memory.oom_control (v1)."""
    if fd is None:
        return 0
    text = os.pread(fd, 4096, 0).decode()
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("oom_kill ")), 0)


# ---------------------------------------------------------------- the fork server

def _kill_everything_else(keep):
    """Every process of this pid namespace but its init and ``keep`` (H and Z): what a run left
    behind (orphans, daemons). Only inside a sandbox's own pid namespace. A process with a
    SIGKILL pending cannot fork, so scanning until a scan finds no new process also catches
    children forked between a scan and its kills."""
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


def _reap():
    """Collect the children that have finished dying, without waiting for the others."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                return
        except ChildProcessError:
            return


def set_up_sandbox(config):
    """What every process of the sandbox shares, set before anything is forked: the CPU, the
    seccomp filter, the folders of the installed packages the host bound."""
    if config.get("cpu") is not None:
        os.sched_setaffinity(0, {config["cpu"]})
    if config.get("seccomp"):
        install_seccomp(config["seccomp"])
    sys.path.extend(p for p in config.get("path", ()) if p not in sys.path)


def serve(config, stdin=0, stdout=1):
    """Run requests from ``stdin`` until it closes; one result frame per request on ``stdout``.
    ``config``: uid (P's, when started as root), cpu (where H, Z and every P run: a call's round
    trip between H and P costs ~5 us on one CPU, ~50 us between two), seccomp (the filter, hex),
    cgroup_fds and oom_fd (the sandbox's cgroup, opened by the host), path (installed packages),
    own_pid_namespace."""
    set_up_sandbox(config)
    LIBC.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0 (Z, forked below, inherits it)
    for name in ("collections", "itertools", "functools", "heapq", "math", "re", "string", "typing", "bisect"):
        __import__(name)  # the usual imports of a program and its tests, paid once per server
    gc.freeze()  # objects loaded so far skip collection: a fork's pages stay shared, not copied
    uid = config.get("uid") if os.getuid() == 0 else None
    zygote = Zygote(uid, config.get("cgroup_fds", ()))
    if os.getuid() == 0:
        keep_only_capabilities(CAP_KILL)
    resource.setrlimit(resource.RLIMIT_AS, (TEST_PROCESS_MB << 20,) * 2)
    signal.signal(signal.SIGALRM, _on_alarm)
    oom_fd = config.get("oom_fd")
    write_frame(stdout, {"ready": True, "uid": uid, "python": sys.version.split()[0]})
    spare = None
    while True:
        try:
            request = read_frame(stdin)
        except EOFError:
            _discard(spare)
            return
        try:
            result = test_run(request, stdin, zygote, spare, oom_fd)
        except EOFError:  # the host went away, or Z died: this server ends (the host starts another)
            return
        except (KeyError, TypeError, ValueError, OSError) as err:
            result = {"status": "sandbox_error", "error": f"{type(err).__name__}: {err}"[:500]}
        if config.get("own_pid_namespace"):
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


def unpack_files(workdir, uid):
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
    if uid is not None:
        for root, dirs, names in os.walk(workdir):
            for name in [root, *(os.path.join(root, n) for n in dirs + names)]:
                os.chown(name, uid, uid)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)


def launch(config, workdir, command):
    """Become ``command`` with the run's limits, uid, cgroups and seccomp filter, in ``workdir``
    (``Sandbox.run``); first ``--files-on-stdin`` makes the work dir from stdin (``unpack_files``)."""
    uid = config.get("uid") if os.getuid() == 0 else None
    if command[:1] == ["--files-on-stdin"]:
        unpack_files(workdir, uid)
        command = command[1:]
    for fd in config.get("cgroup_fds", ()):
        os.write(fd, b"0")
        os.close(fd)
    set_up_sandbox(config)
    _limit_and_drop(config["limits"], workdir, uid)
    _program_environment(workdir)
    if config.get("path"):
        os.environ["PYTHONPATH"] = os.pathsep.join(config["path"])
    os.execvp(command[0], command)


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(json.loads(sys.argv[2]))
elif __name__ == "__main__" and sys.argv[1:2] == ["launch"]:
    launch(json.loads(sys.argv[2]), sys.argv[3], sys.argv[4:])
