"""Settings for the long-lived processes of a run (the trainer, learner ranks, rollout workers),
applied once they are set up: from then on they repeat one step's objects and allocations for
hours, and two of the C library's and Python's defaults, tuned for short programs, cost them
time every step."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def settle() -> None:
    """What exists now (the model, the engines, Ray, the libraries: ~300K objects) lives as long as
    the process: out of the cyclic collector's scans, whose full passes cost ~10 ms a step; and
    freed memory is kept for the next allocation (``retain_freed_memory``)."""
    gc.freeze()
    retain_freed_memory()


@functools.lru_cache(maxsize=1)
def retain_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.
    By default a block over its mmap threshold (at most 32 MiB) is mapped afresh on each
    allocation and unmapped when freed, and the heap's free top is trimmed: a training step's
    activations and gradients (tens of MB, the same sizes every step) then came back as new
    pages, faulted in and zeroed one 4 KiB page at a time, 3-20K faults per step of the default job
    (10-15% of its learner step). With these thresholds the heap stays at the peak a step reached
    (the resident size is the same: every step reaches that peak). Blocks from 64 MiB up still get
    their own mappings, returned when freed: served from the heap, a large model's transient
    gradients and gathered parameters (hundreds of MB each, of many sizes) fragmented it, and a
    ZeRO-3 rank of the nano-slice model peaked at 11.1 GiB instead of 8.4 (their faults cost
    little beside the work on them). Returns False where the C library is not glibc (nothing
    changes)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # (older glibc caps the mmap threshold at 32 MiB)
    mapped = mallopt(M_MMAP_THRESHOLD, 64 << 20) or mallopt(M_MMAP_THRESHOLD, 32 << 20)
    return bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1)) and bool(mapped)


def peak_resident_bytes(reset: bool = False) -> int:
    """This process's peak resident set (``VmHWM``) since it started or the last reset; with
    ``reset``, the peak restarts from the current resident set afterwards (Linux 4.0+;
    elsewhere the peak is never reset and 0 is read where ``/proc`` is absent)."""
    from pathlib import Path

    status = Path("/proc/self/status")
    if not status.exists():
        return 0
    peak = next(int(line.split()[1]) * 1024 for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
    if reset:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
    return peak
