"""Beyond one machine: a two-node Ray cluster started on this machine (``ray start --head`` and a
second ``ray start --address=...`` node with its own resources) runs GRPO steps with the rollout
workers on one node and two ZeRO-2 learner ranks on the other (launch/two_node_local.sh)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import rlvr.model as M
from rlvr.model.config import tiny
from rlvr.tokenizer import ByteTokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash for the launch script")
def test_rollout_and_learner_on_different_nodes(tmp_path):
    torch.manual_seed(0)
    tok = ByteTokenizer()
    M.HybridLM(tiny(initializer_range=0.1, eos_token_id=tok.eos_token_id)).save(tmp_path / "ckpt")
    out = tmp_path / "run"
    done = subprocess.run(
        ["bash", str(ROOT / "launch" / "two_node_local.sh"), str(out), f"model.path={tmp_path / 'ckpt'}", "~sft",
         "steps=2", "prompts_per_step=16", "algorithm.group_size=4", "learner=zero2_2ranks",
         "learner.max_tokens_per_micro_batch=256", "learner.resources={learner_node: 0.5}", "eval_prompts=16",
         "logging.progress=false", "logging.tensorboard=false"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Ray cluster: 2 nodes" in done.stdout
    placement = json.loads((out / "summary.json").read_text())["placement"]
    assert len(placement["learner_nodes"]) == 2 and len(set(placement["learner_nodes"])) == 1
    assert not set(placement["rollout_nodes"]) & set(placement["learner_nodes"])
