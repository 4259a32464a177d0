"""The long-lived processes' settings (rlvr/runtime.py): a step's freed memory comes back
without page faults."""

import json
import subprocess
import sys

import pytest

# 16 "steps", each filling buffers of 12-60 MiB (272 MiB in all) and freeing them at its end, as a
# learner step does with its activations and gradients; the page faults of each step. (Blocks of
# 64 MiB and more keep their own mappings: rlvr/runtime.py says why.)
PROBE = """
import json, resource, sys, torch
from rlvr import runtime
if sys.argv[1] == "retain":
    assert runtime.retain_freed_memory()
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step = [torch.empty(n << 20).fill_(1.0) for n in (15, 3, 12, 7, 5, 14, 12)]
    del step
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux) only")
def test_retained_memory_is_reused_without_page_faults():
    def faults(mode: str) -> list[int]:
        done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    default, retained = faults("default"), faults("retain")
    print(f"page faults per step, default: {default}\nretained: {retained}")
    # By default blocks are mapped afresh and the heap's top handed back: every step faults its
    # memory in again (here tens of thousands of 4 KiB pages); retained, the later steps reuse it.
    assert sum(default[8:]) > 0
    assert sum(retained[8:]) <= sum(default[8:]) / 10
