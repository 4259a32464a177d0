"""The seccomp filter of every sandboxed program: the system calls a test program never needs,
refused with EPERM, built here (on the host) as a classic BPF program that the harness installs
(``harness.install_seccomp``) in the server before it forks anything, so that the zygote and
every program process inherit it; a filter cannot be removed, only narrowed.

Refused, by class (x86_64 and aarch64 numbers below; another architecture gets no filter and a
warning, its programs are then held by the namespaces, uid and limits alone):

    keyring          add_key, keyctl, request_key: a key in the user keyring outlives the run
                     and is readable by every later process of the uid
    other processes  ptrace, process_vm_readv/writev, kcmp, pidfd_getfd
    namespaces       unshare, setns, clone with any CLONE_NEW* flag (a user namespace would give
                     a program every capability inside it); clone3 answers ENOSYS, so that
                     libc falls back to clone, whose flags this filter can read
    mounts           mount, umount2, pivot_root, chroot and the new mount API
    SysV and POSIX   shm*, sem*, msg*, mq_*: objects that outlive their process (shared memory
    IPC              is memory outside any process's limit)
    CPU placement    sched_setaffinity: a program stays on its runner's CPU
    kernel surfaces  perf_event_open, bpf, userfaultfd, io_uring_*, kernel modules, kexec,
                     syslog, personality, open_by_handle_at, acct, swapon/off, quotactl,
                     lookup_dcookie

A call made through another ABI (i386's ``int 0x80`` on x86_64, or x32) kills the process: its
numbers differ and the table would not apply.
"""

from __future__ import annotations

import functools
import platform
import struct

# seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_NR, _ARCH, _ARG0_LOW = 0, 4, 16  # (little-endian: the low word of args[0] comes first)
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
RET_KILL_PROCESS, RET_ERRNO, RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
EPERM, ENOSYS = 1, 38
CLONE_NEW = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80
X32_BIT = 0x40000000

REFUSED = (
    "add_key", "keyctl", "request_key",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "unshare", "setns",
    "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
    "mount_setattr",
    "shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semctl", "semtimedop",
    "msgget", "msgsnd", "msgrcv", "msgctl",
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    "sched_setaffinity",
    "perf_event_open", "bpf", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "syslog", "personality",
    "open_by_handle_at", "acct", "swapon", "swapoff", "quotactl", "lookup_dcookie",
)

# (AUDIT_ARCH_*, {name: number}) from the kernel's unistd tables (asm/unistd_64.h, asm-generic/unistd.h)
ARCHES = {
    "x86_64": (0xC000003E, {
        "add_key": 248, "keyctl": 250, "request_key": 249, "ptrace": 101, "process_vm_readv": 310,
        "process_vm_writev": 311, "kcmp": 312, "pidfd_getfd": 438, "unshare": 272, "setns": 308, "mount": 165,
        "umount2": 166, "pivot_root": 155, "chroot": 161, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "shmget": 29, "shmat": 30,
        "shmctl": 31, "shmdt": 67, "semget": 64, "semop": 65, "semctl": 66, "semtimedop": 220, "msgget": 68,
        "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "mq_open": 240, "mq_unlink": 241, "mq_timedsend": 242,
        "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245, "sched_setaffinity": 203,
        "perf_event_open": 298, "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246,
        "kexec_file_load": 320, "syslog": 103, "personality": 135, "open_by_handle_at": 304, "acct": 163,
        "swapon": 167, "swapoff": 168, "quotactl": 179, "lookup_dcookie": 212, "clone": 56, "clone3": 435}),
    "aarch64": (0xC00000B7, {
        "add_key": 217, "keyctl": 219, "request_key": 218, "ptrace": 117, "process_vm_readv": 270,
        "process_vm_writev": 271, "kcmp": 272, "pidfd_getfd": 438, "unshare": 97, "setns": 268, "mount": 40,
        "umount2": 39, "pivot_root": 41, "chroot": 51, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "shmget": 194, "shmat": 196,
        "shmctl": 195, "shmdt": 197, "semget": 190, "semop": 193, "semctl": 191, "semtimedop": 192, "msgget": 186,
        "msgsnd": 189, "msgrcv": 188, "msgctl": 187, "mq_open": 180, "mq_unlink": 181, "mq_timedsend": 182,
        "mq_timedreceive": 183, "mq_notify": 184, "mq_getsetattr": 185, "sched_setaffinity": 122,
        "perf_event_open": 241, "bpf": 280, "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "init_module": 105, "finit_module": 273, "delete_module": 106, "kexec_load": 104,
        "kexec_file_load": 294, "syslog": 116, "personality": 92, "open_by_handle_at": 265, "acct": 89,
        "swapon": 224, "swapoff": 225, "quotactl": 60, "lookup_dcookie": 18, "clone": 220, "clone3": 435}),
}


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)  # struct sock_filter


@functools.cache
def program_filter(machine: str | None = None) -> bytes | None:
    """The filter as ``struct sock_filter`` records (8 bytes each), or None on an architecture
    without a table here."""
    machine = machine or platform.machine()
    if machine not in ARCHES:
        return None
    arch, nr = ARCHES[machine]
    refused = sorted({nr[name] for name in REFUSED})
    # Layout: checks, then one jump per refused call to DENY, then the clone checks, then the
    # returns. A jump's offset counts the instructions it skips (at most 255).
    head = [_op(_LD_ABS, _ARCH), _op(_JEQ, arch, 1, 0), _op(_RET, RET_KILL_PROCESS), _op(_LD_ABS, _NR)]
    if machine == "x86_64":
        head += [_op(_JGE, X32_BIT, 0, 1), _op(_RET, RET_KILL_PROCESS)]
    # the calls a program makes most (read, write, mmap, ...: below every refused number on
    # x86_64) leave after one comparison
    head += [_op(_JGE, min(refused + [nr["clone"], nr["clone3"]]), 1, 0), _op(_RET, RET_ALLOW)]
    n = len(refused)
    # after the refused list: [0] jeq clone, [1] jeq clone3, [2] ret allow, [3] ld arg0,
    # [4] jset CLONE_NEW, [5] ret allow, [6] DENY, [7] ENOSYS
    body = [_op(_JEQ, number, (n - 1 - i) + 6, 0) for i, number in enumerate(refused)]
    tail = [
        _op(_JEQ, nr["clone"], 2, 0),  # -> ld arg0
        _op(_JEQ, nr["clone3"], 5, 0),  # -> ENOSYS
        _op(_RET, RET_ALLOW),
        _op(_LD_ABS, _ARG0_LOW),
        _op(_JSET, CLONE_NEW, 1, 0),  # -> DENY
        _op(_RET, RET_ALLOW),
        _op(_RET, RET_ERRNO | EPERM),
        _op(_RET, RET_ERRNO | ENOSYS),
    ]
    return b"".join(head + body + tail)


def simulate(filter_bytes: bytes, nr: int, arch: int, arg0: int = 0) -> int:
    """Run the filter on one system call (a classic-BPF interpreter for the five instructions
    used here) -> the action it returns. For tests: what the kernel would decide."""
    ops = [struct.unpack_from("<HBBI", filter_bytes, i) for i in range(0, len(filter_bytes), 8)]
    data = {_NR: nr, _ARCH: arch, _ARG0_LOW: arg0 & 0xFFFFFFFF}
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = ops[pc]
        if code == _RET:
            return k
        if code == _LD_ABS:
            acc = data[k]
            pc += 1
            continue
        taken = {_JEQ: acc == k, _JGE: acc >= k, _JSET: bool(acc & k)}[code]
        pc += 1 + (jt if taken else jf)
