"""`experiment=mixture`: math, code, SQL and judged tasks in one GRPO run, the judge a tiny
checkpoint run in the scoring processes (its rewards meaningless: it writes no verdicts)."""

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


@pytest.mark.slow
@pytest.mark.parametrize("max_staleness", [0, 1])  # 1: every environment's rollouts and scoring run ahead
def test_a_mixture_of_four_environments_trains_with_a_local_judge(tmp_path, max_staleness):
    torch.manual_seed(0)
    tok = ByteTokenizer()
    M.HybridLM(tiny(max_position_embeddings=2048, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save(
        tmp_path / "judge")
    command = [str(Path(sys.executable).parent / "rlvr-train"), "experiment=mixture", f"hydra.run.dir={tmp_path / 'run'}",
               "name=mixture_test", "steps=2", "prompts_per_step=8", "algorithm.group_size=2", "eval_prompts=8",
               "eval_every=100", "time_limit=null", "logging.progress=false", "logging.tensorboard=false",
               "cluster.num_cpus=4", "reward.workers=1", "rollout.sampling.max_tokens=24",
               "rollout.eval_sampling.max_tokens=24", "data.train.3.env_args.max_tokens=8",
               "data.eval.3.env_args.max_tokens=8", f"algorithm.max_staleness={max_staleness}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env=os.environ | {"RLVR_JUDGE_CHECKPOINT": str(tmp_path / "judge")})
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if "reward/mean" in line]
    assert len(steps) == 2
    if max_staleness:
        assert [s["staleness/mean"] for s in steps] == [0, 1]
    for env in ("math", "code", "sql", "judge"):
        assert any(f"reward/{env}/mean" in s for s in steps), env
    judged = [s for s in steps if "reward/judge/mean" in s]
    # a random judge writes no verdict: every comparison falls back to the neutral one, counted
    assert all(s["reward/judge/mean"] == 0.5 and s["reward/judge/fallback_share"] == 1.0 for s in judged)
    assert all(s["reward/scoring_failures"] == 0 for s in steps)


def test_without_a_judge_the_mixture_names_the_missing_option(tmp_path):
    command = [str(Path(sys.executable).parent / "rlvr-train"), "experiment=mixture", f"hydra.run.dir={tmp_path}",
               "steps=1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLVR_JUDGE")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "data.train.3.env_args: judge: give exactly one of base_url" in done.stderr, done.stderr[-2000:]
    assert "RLVR_JUDGE_URL" in done.stderr
