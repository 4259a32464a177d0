"""The launch recipes of the README, run as written: every script parses, a job submitted to a
local Ray head with its dashboard and token authentication trains, and the Slurm script starts
its Ray cluster and trains with stand-in ``scontrol``/``srun`` commands that run its two "nodes"
on this machine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rlvr.model as M
from rlvr.model.config import tiny
from rlvr.tokenizer import ByteTokenizer

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCRIPTS = sorted((ROOT / "launch").iterdir())


def _job(ckpt: Path) -> list[str]:
    return [f"model.path={ckpt}", "~sft", "steps=2", "prompts_per_step=16", "algorithm.group_size=4",
            "eval_prompts=16", "logging.progress=false", "logging.tensorboard=false", "reward.workers=1"]


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    M.HybridLM(tiny(initializer_range=0.1, eos_token_id=ByteTokenizer.eos_token_id)).save(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _ray(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_launch_script_parses(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_ray_job_submit_recipe_with_dashboard_and_token_auth(ckpt, tmp_path):
    env = os.environ | {"RAY_AUTH_MODE": "token"}
    _ray("stop", "--force", env=env)
    started = _ray("start", "--head", "--port=6393", "--dashboard-port=8293", "--dashboard-host=127.0.0.1",
                   "--include-dashboard=true", "--num-cpus=4", "--disable-usage-stats", env=env)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        done = subprocess.run(["bash", "launch/ray_submit.sh", *_job(ckpt), "name=submitted"], cwd=ROOT,
                              env=env | {"RAY_ADDRESS": "http://127.0.0.1:8293", "RLVR_OUTPUTS": str(tmp_path)},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        summary = json.loads((tmp_path / "submitted" / "summary.json").read_text())
        assert summary["steps"] == 2 and summary["eval_prompts"] == 16
        assert "succeeded" in done.stdout
        # The same head joined directly, as the README's two-node recipe does: cluster.num_cpus
        # (8 in cluster=local) belongs to a Ray started by the job and is not passed to a cluster.
        direct = subprocess.run([str(BIN / "rlvr-train"), *_job(ckpt), "steps=1", "cluster.address=127.0.0.1:6393",
                                 f"hydra.run.dir={tmp_path / 'direct'}"], env=env, capture_output=True, text=True,
                                timeout=600)
        assert direct.returncode == 0, direct.stderr[-3000:]
    finally:
        _ray("stop", "--force", env=env)


STAND_IN_SRUN = """#!/usr/bin/env bash
# srun on one machine: drop srun's own options, run the command here; the node's address is
# the loopback one (this rehearsal never leaves the machine).
while [ $# -gt 0 ]; do
  case "$1" in
    -w|--nodelist) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
if [ "$1" = hostname ]; then echo 127.0.0.1; exit 0; fi
exec "$@"
"""

STAND_IN_SCONTROL = """#!/usr/bin/env bash
# scontrol show hostnames LIST: two made-up node names
[ "$1 $2" = "show hostnames" ] && printf 'node-a\\nnode-b\\n'
"""


@pytest.mark.slow
def test_slurm_script_starts_ray_on_both_nodes_and_trains(ckpt, tmp_path):
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    for name, text in {"srun": STAND_IN_SRUN, "scontrol": STAND_IN_SCONTROL}.items():
        (stand_ins / name).write_text(text)
        (stand_ins / name).chmod(0o755)
    env = os.environ | {"PATH": f"{stand_ins}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node-[a-b]",
                        "SLURM_CPUS_ON_NODE": "2", "SLURM_SUBMIT_DIR": str(ROOT), "RLVR_RAY_PORT": "6394",
                        "RAY_AUTH_MODE": "token"}
    _ray("stop", "--force", env=env)
    try:
        done = subprocess.run(["bash", "launch/slurm.sbatch", *_job(ckpt), f"hydra.run.dir={tmp_path / 'run'}"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["steps"] == 2
        nodes = set(summary["placement"]["rollout_nodes"] + summary["placement"]["learner_nodes"])
        assert nodes, summary["placement"]
    finally:
        _ray("stop", "--force", env=env)
