"""What a sandbox is made of on the host: the file system view (symlinks kept, folders passable,
only the named packages), slots held across processes, and a cgroup per sandbox."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from environments.code import confine


def test_bind_keeps_symlinks_and_makes_folders_passable(tmp_path):
    (tmp_path / "real" / "lib").mkdir(parents=True)
    (tmp_path / "real" / "lib" / "libx.so.1.2").write_text("")
    (tmp_path / "lib").symlink_to("real/lib")
    (tmp_path / "real" / "lib" / "libx.so.1").symlink_to("libx.so.1.2")
    args, made = [], set()
    confine._bind(str(tmp_path / "lib" / "libx.so.1"), made, args)
    pairs = [tuple(args[i:i + 3]) for i, a in enumerate(args) if a in ("--symlink", "--ro-bind")]
    assert ("--symlink", "real/lib", str(tmp_path / "lib")) in pairs
    assert ("--symlink", "libx.so.1.2", str(tmp_path / "real/lib/libx.so.1")) in pairs
    assert ("--ro-bind", str(tmp_path / "real/lib/libx.so.1.2"), str(tmp_path / "real/lib/libx.so.1.2")) in pairs
    assert all(args[i - 2:i] == ["--perms", "0755"] for i, a in enumerate(args) if a == "--dir")


def test_the_view_is_the_interpreter_and_the_named_packages_only():
    view, path = confine.interpreter_view(sys.executable)
    sources = {view[i + 1] for i, a in enumerate(view) if a == "--ro-bind"}
    info = confine.interpreter(sys.executable)
    assert info["executable"] in sources and set(info["stdlib"]) <= sources and path == []
    assert not [s for s in sources if "site-packages" in s]
    assert not [s for s in sources if s.startswith(str(Path(__file__).resolve().parents[3]))]  # nothing of the project
    view, path = confine.interpreter_view(sys.executable, ("pyyaml", "yaml"))
    packages = {Path(view[i + 1]).name for i, a in enumerate(view) if a == "--ro-bind" and "site-packages" in view[i + 1]}
    assert "yaml" in packages and path and not packages - {"yaml"} - {p for p in packages if p.lower().startswith("pyyaml")}


def test_a_claim_is_held_across_processes_until_its_descriptor_closes():
    slot, fd = confine.claim("test-slots", range(1000, 1003))
    other = subprocess.run([sys.executable, "-c", "from environments.code import confine\n"
                            "got = confine.claim('test-slots', range(1000, 1003))\nprint(got and got[0])"],
                           capture_output=True, text=True, timeout=60)
    assert int(other.stdout) == slot + 1
    os.close(fd)
    again = confine.claim("test-slots", range(1000, 1003))
    assert again[0] == slot
    os.close(again[1])


@pytest.mark.skipif(confine.Cgroup.create(64, 8) is None, reason="this machine does not let the tests make cgroups")
def test_a_cgroup_caps_memory_processes_and_cpu_and_goes_away():
    group = confine.Cgroup.create(96, 12, cpus=1.0)
    try:
        for controller, folder in group.folders.items():
            assert folder.is_dir() and folder.name.startswith(f"rlvr-sandbox-{os.getpid()}-")
            files = {p.name: p for p in folder.iterdir()}
            if controller == "memory":
                limit = files.get("memory.max") or files["memory.limit_in_bytes"]
                assert int(limit.read_text()) == 96 << 20
            elif controller == "pids":
                assert files["pids.max"].read_text().strip() == "12"
            elif "cpu.max" in files:
                assert files["cpu.max"].read_text().split() == ["100000", "100000"]
            else:
                assert files["cpu.cfs_quota_us"].read_text().strip() == files["cpu.cfs_period_us"].read_text().strip()
        assert len(group.procs_fds) == len(set(group.folders.values()))
    finally:
        group.close()
    assert not any(folder.exists() for folder in group.folders.values())


@pytest.mark.skipif(confine.Cgroup.create(64, 8) is None, reason="this machine does not let the tests make cgroups")
def test_cgroups_of_dead_processes_are_removed():
    group = confine.Cgroup.create(64, 8)
    parent = next(iter(group.folders.values())).parent
    group.close()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = parent / f"rlvr-sandbox-{dead.pid}-1"
    stale.mkdir()
    confine.Cgroup.create(64, 8).close()
    assert not stale.exists()
