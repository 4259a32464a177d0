import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import ray


@pytest.fixture
def kill_at_checkpoint():
    """run(command, out, tag): start a training command, wait until its run folder ``out`` points
    at checkpoint ``tag``, then kill -9 the driver and everything it started (no clean-up)."""

    def run(command: list[str], out: Path, tag: str = "step_000002") -> None:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        pointer = out / "checkpoints" / "resume_from"
        deadline = time.monotonic() + 900
        while not (pointer.exists() and pointer.read_text() == tag):
            assert proc.poll() is None and time.monotonic() < deadline, f"the run ended before its {tag} checkpoint"
            time.sleep(0.01)  # (the short jobs' next checkpoint comes ~0.15 s after this one)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    return run


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray for one test module's learner groups (4 CPUs: two ranks and their helpers)."""
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
