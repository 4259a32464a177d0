"""The programs' seccomp filter, decided as the kernel would (a BPF interpreter over the built
filter) for every refused call, the calls every program makes, and the other ABIs; the calls
refused inside a real sandbox are in test_sandbox_attacks.py."""

import pytest

from environments.code.seccomp import (ARCHES, CLONE_NEW, ENOSYS, EPERM, REFUSED, RET_ALLOW, RET_ERRNO,
                                       RET_KILL_PROCESS, X32_BIT, program_filter, simulate)

ALLOWED = {"x86_64": {"read": 0, "write": 1, "openat": 257, "mmap": 9, "exit_group": 231, "wait4": 61, "setsid": 112},
           "aarch64": {"read": 63, "write": 64, "openat": 56, "mmap": 222, "exit_group": 94, "wait4": 260,
                       "setsid": 157}}


@pytest.mark.parametrize("machine", sorted(ARCHES))
def test_refused_calls_get_eperm_and_the_rest_pass(machine):
    code = program_filter(machine)
    arch, numbers = ARCHES[machine]
    assert len(code) % 8 == 0 and len(code) // 8 < 120
    assert set(REFUSED) <= set(numbers)
    for name in REFUSED:
        assert simulate(code, numbers[name], arch) == RET_ERRNO | EPERM, name
    for name, number in ALLOWED[machine].items():
        assert simulate(code, number, arch) == RET_ALLOW, name


@pytest.mark.parametrize("machine", sorted(ARCHES))
def test_clone_with_a_namespace_flag_is_refused_and_clone3_falls_back(machine):
    code = program_filter(machine)
    arch, numbers = ARCHES[machine]
    fork_flags, thread_flags = 0x01200011, 0x003D0F00  # glibc's fork and pthread_create
    assert simulate(code, numbers["clone"], arch, fork_flags) == RET_ALLOW
    assert simulate(code, numbers["clone"], arch, thread_flags) == RET_ALLOW
    for bit in range(32):
        if CLONE_NEW & (1 << bit):
            assert simulate(code, numbers["clone"], arch, fork_flags | (1 << bit)) == RET_ERRNO | EPERM, hex(1 << bit)
    assert simulate(code, numbers["clone3"], arch) == RET_ERRNO | ENOSYS


def test_other_abis_are_killed():
    code = program_filter("x86_64")
    arch = ARCHES["x86_64"][0]
    assert simulate(code, 0, 0x40000003) == RET_KILL_PROCESS  # i386 through int 0x80
    assert simulate(code, X32_BIT | 0, arch) == RET_KILL_PROCESS  # x32
    assert simulate(code, 0, arch) == RET_ALLOW


def test_no_filter_where_there_is_no_table():
    assert program_filter("riscv64") is None
