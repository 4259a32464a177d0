"""What a bubblewrap sandbox sees and what it may use, made on the host: the file system view
(the interpreter and nothing else), a uid of its own, and a cgroup of its own.

* ``interpreter_view``: bwrap arguments that bind the interpreter's executable, its standard
  library, the shared libraries those load (``ldd``), the loader's cache, and the installed
  packages a user named (``packages``), all read-only; the interpreter's own ``site-packages``
  is masked. Nothing else of the host exists inside: no datasets, no project, no home, no
  sockets in the file system.
* ``claim``: a slot (a CPU, a uid) held by an exclusive ``flock`` until its descriptor closes or
  its process dies, shared by every process on the machine.
* ``Cgroup``: memory (shared memory and files included), process count and CPU of everything a
  sandbox's programs start, capped together, in a child of this process's own cgroup (v1 or
  v2) when the machine lets this process make one. Elsewhere the limits are per process
  (rlimits) and per sandbox uid, and ``Cgroup.create`` says so once.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

CLAIMS = Path(tempfile.gettempdir(), "rlvr-sandbox-claims")
UID_BASE, UID_SLOTS = 2_000_000_000, 4096  # far above login and subordinate (container) uid ranges


# ---------------------------------------------------------------- slots shared across processes

def claim(kind: str, slots) -> tuple[int, int] | None:
    """The first free slot of ``slots`` for ``kind``, held until the returned descriptor closes
    (or its process dies): an exclusive ``flock`` on a file per slot. -> (slot, fd), or None."""
    folder = CLAIMS / kind
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        for path in (CLAIMS, folder):
            path.chmod(0o1777)  # shared by every user's runners, like /tmp
    for slot in slots:
        fd = os.open(folder / f"{slot}.lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o444)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return slot, fd
        except OSError:  # held by another runner (or not ours to lock)
            os.close(fd)
    return None


def claim_uid() -> tuple[int, int] | None:
    """A uid for one sandbox's programs (as root): per-uid kernel accounting (process count,
    keyrings, signals) then reaches no other sandbox. -> (uid, fd) or None when all are held."""
    got = claim("uids", range(UID_SLOTS))
    return None if got is None else (UID_BASE + got[0], got[1])


# ---------------------------------------------------------------- the file system view

@functools.cache
def interpreter(python: str) -> dict:
    """Where ``python`` keeps what it runs: its real executable, standard library folders and
    installed-package folders (asked of the interpreter itself, once; with ``site``, which is
    what makes a virtual environment's folders its own)."""
    probe = ("import json, os, sys, sysconfig\n"
             "base = {'base': sys.base_prefix, 'platbase': sys.base_exec_prefix, 'installed_base': sys.base_prefix,"
             " 'installed_platbase': sys.base_exec_prefix}\n"
             "paths = sysconfig.get_paths(vars=base)\n"
             "print(json.dumps({'executable': os.path.realpath(sys.executable),"
             " 'stdlib': sorted({paths['stdlib'], paths['platstdlib']}),"
             " 'site': sorted({sysconfig.get_path('purelib'), sysconfig.get_path('platlib')}),"
             " 'base_site': sorted({paths['purelib'], paths['platlib']})}))\n")
    out = subprocess.run([python, "-I", "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


@functools.cache
def shared_libraries(files: tuple[str, ...]) -> tuple[str, ...]:
    """The shared libraries ``files`` load (with the dynamic loader), by ``ldd`` (0.3 s for an
    interpreter's 70 extension modules: kept in a cache of this user's, keyed by the files'
    sizes and times); () without ``ldd``."""
    if shutil.which("ldd") is None:
        return ()
    stats = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    cache = _cache_dir()
    path = cache / f"ldd-{hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:32]}.json" if cache else None
    if path is not None and path.exists():
        return tuple(json.loads(path.read_text()))
    out = subprocess.run(["ldd", *files], capture_output=True, text=True, timeout=60).stdout
    found = set()
    for line in out.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            found.add(os.path.normpath(match.group(1)))
    if path is not None:
        partial = path.with_suffix(f".{os.getpid()}")
        partial.write_text(json.dumps(sorted(found)))
        partial.replace(path)
    return tuple(sorted(found))


def _cache_dir() -> Path | None:
    """This user's cache folder (``$XDG_CACHE_HOME/rlvr``, ``~/.cache/rlvr``, else a 0700 folder
    in the temporary folder), or None when none is this user's alone."""
    base = os.environ.get("XDG_CACHE_HOME") or (os.path.expanduser("~/.cache") if os.path.expanduser("~") != "~" else "")
    for folder in ([Path(base, "rlvr")] if base else []) + [Path(tempfile.gettempdir(), f"rlvr-{os.getuid()}")]:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = folder.stat()
            if st.st_uid == os.getuid() and not st.st_mode & 0o022:
                return folder
        except OSError:
            continue
    return None


def _bind(path: str, made: set[str], args: list[str]) -> None:
    """bwrap arguments that make ``path`` exist inside as on the host: each symlink on the way
    made again as a symlink (``/lib -> usr/lib``), folders above passable (0755; bwrap makes new
    ones 0700), the file or folder itself bound read-only."""
    parts = Path(path).parts
    current = "/"
    for i, part in enumerate(parts[1:], start=1):
        current = os.path.join(current, part)
        if current in made:
            continue
        if os.path.islink(current):
            target = os.readlink(current)
            args += ["--symlink", target, current]
            made.add(current)
            resolved = os.path.normpath(os.path.join(os.path.dirname(current), target))
            _bind(os.path.join(resolved, *parts[i + 1:]), made, args)
            return
        if i == len(parts) - 1:
            args += ["--ro-bind", current, current]
        else:
            args += ["--perms", "0755", "--dir", current]
        made.add(current)


@functools.cache
def interpreter_view(python: str, packages: tuple[str, ...] = (),
                     executables: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """-> (bwrap arguments, folders to add to ``sys.path`` inside) for ``python``, its standard
    library, the libraries they load, the installed ``packages`` named (each package's folders,
    files and ``*.libs`` next to it in site-packages), and other ``executables``."""
    info = interpreter(python)
    dynload = [str(p) for d in info["stdlib"] for p in Path(d).glob("lib-dynload/*.so")
               if not p.name.startswith("_tkinter")]  # (Tk's X11 libraries: no display here)
    programs = [info["executable"], *(e for e in executables if os.path.isfile(e))]
    wanted = [*programs, *info["stdlib"], *shared_libraries(tuple([*programs, *dynload]))]
    if os.path.exists("/etc/ld.so.cache"):
        wanted.append("/etc/ld.so.cache")
    sys_path = []
    for site in info["site"]:
        entries = [e for e in Path(site).glob("*") if packages and _names_package(e.name, packages)]
        if entries:
            sys_path.append(site)
        extensions = [str(p) for e in entries for p in (e.rglob("*.so") if e.is_dir() else [e]) if p.suffix == ".so"]
        wanted += [str(e) for e in entries] + list(shared_libraries(tuple(extensions)) if extensions else ())
    args, made = [], set()
    for path in dict.fromkeys(wanted):
        _bind(path, made, args)
    for site in info["base_site"]:  # pip, setuptools and the rest of the base interpreter's packages
        if os.path.isdir(site) and site not in sys_path and any(site.startswith(d + "/") for d in info["stdlib"]):
            args += ["--tmpfs", site]
    return args, sys_path


def _names_package(entry: str, packages: tuple[str, ...]) -> bool:
    stem = entry.split("-")[0].split(".")[0].lower().replace("_", "-")
    return any(stem == p.lower().replace("_", "-") for p in packages) and not entry.endswith(".pth")


# ---------------------------------------------------------------- cgroups

CONTROLLERS = ("memory", "pids", "cpu")


def _own_cgroups() -> dict[str, Path]:
    """controller -> this process's cgroup folder in the hierarchy that has it (v1 first)."""
    mounts = {}  # (version, controller or "") -> (mount root, mount point)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        fstype, options = fields[sep + 1], fields[sep + 3].split(",")
        if fstype == "cgroup":
            for c in CONTROLLERS:
                if c in options:
                    mounts[(1, c)] = (fields[3], fields[4])
        elif fstype == "cgroup2":
            mounts[(2, "")] = (fields[3], fields[4])
    found = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, names, path = line.split(":", 2)
        for c in CONTROLLERS:
            key = (2, "") if number == "0" else (1, c)
            if (number == "0" or c in names.split(",")) and key in mounts and c not in found:
                root, point = mounts[key]
                folder = Path(point, os.path.relpath(path, root))
                if folder.is_dir() and (number != "0" or c in (folder / "cgroup.subtree_control").read_text().split()):
                    found[c] = folder
    return found


class Cgroup:
    """One sandbox's cgroup in each hierarchy that has a controller: programs join it through
    ``procs_fds`` (opened here, written from inside), and the test process reads the count of
    out-of-memory kills from ``events_fd``."""

    missing_said = False

    def __init__(self, folders: dict[str, Path]):
        self.folders = folders
        dirs = list(dict.fromkeys(folders.values()))
        self.procs_fds = [os.open(d / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for d in dirs]
        events = folders.get("memory")
        self.events_fd = None
        if events is not None:
            name = "memory.events" if (events / "memory.events").exists() else "memory.oom_control"
            self.events_fd = os.open(events / name, os.O_RDONLY | os.O_CLOEXEC)

    @classmethod
    def create(cls, memory_mb: int, processes: int, cpus: float | None = 1.0) -> Cgroup | None:
        """A new cgroup capping memory (+ swap) at ``memory_mb``, ``processes``, and ``cpus``
        CPUs unless None, or None (said once in the log) where this process cannot make one.
        (A runner pinned to a CPU asks for no CPU cap: a program cannot leave that CPU, and a
        group of its own would cost every call between the tests and the program ~1 ms of
        scheduling.)"""
        try:
            own = _own_cgroups()
        except (OSError, ValueError):
            own = {}
        name = f"rlvr-sandbox-{os.getpid()}-{time.monotonic_ns()}"
        folders, errors = {}, []
        wanted = [c for c in CONTROLLERS if c != "cpu" or cpus is not None]
        for controller, parent in own.items():
            if controller not in wanted:
                continue
            try:
                _remove_stale(parent)
                folder = parent / name
                folder.mkdir(exist_ok=True)
                _set_limit(folder, controller, memory_mb, processes, cpus)
                folders[controller] = folder
            except OSError as err:
                errors.append(f"{controller}: {err.strerror or err}")
        missing = [c for c in wanted if c not in folders]
        if missing and not cls.missing_said:
            cls.missing_said = True
            log.warning("code sandbox: no cgroup for %s here (%s); those limits apply per program process "
                        "(rlimits) and per sandbox uid instead", "/".join(missing),
                        "; ".join(errors) or "the controllers are not delegated to this process")
        if not folders:
            return None
        return cls(folders)

    def close(self) -> None:
        """Remove the cgroups (once their processes have exited: retried for a second)."""
        for fd in [*self.procs_fds, self.events_fd]:
            if fd is not None:
                os.close(fd)
        self.procs_fds, self.events_fd = [], None
        for folder in dict.fromkeys(self.folders.values()):
            for _ in range(100):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY: a process of it is still exiting
                    time.sleep(0.01)


def _set_limit(folder: Path, controller: str, memory_mb: int, processes: int, cpus: float) -> None:
    period = 100_000
    if controller == "memory":
        limit = str(memory_mb << 20)
        v2 = (folder / "memory.max").exists()
        (folder / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(limit)
        swap = folder / ("memory.swap.max" if v2 else "memory.memsw.limit_in_bytes")
        if swap.exists():
            swap.write_text("0" if v2 else limit)
    elif controller == "pids":
        (folder / "pids.max").write_text(str(processes))
    elif (folder / "cpu.max").exists():
        (folder / "cpu.max").write_text(f"{int(period * cpus)} {period}")
    else:
        (folder / "cpu.cfs_period_us").write_text(str(period))
        (folder / "cpu.cfs_quota_us").write_text(str(int(period * cpus)))


def _remove_stale(parent: Path) -> None:
    """Cgroups left by sandboxes of processes that no longer exist (killed with -9)."""
    for folder in parent.glob("rlvr-sandbox-*-*"):
        pid = folder.name.split("-")[2]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                folder.rmdir()
            except OSError:
                pass
