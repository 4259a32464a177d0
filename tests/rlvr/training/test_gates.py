"""Gates on a run's metrics: the window, the bounds, warn against stop; and a run whose judge
always falls back stops at the default gate with a one-line reason."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rlvr.model as M
from rlvr.config import Config, GateConfig
from rlvr.model.config import tiny
from rlvr.tokenizer import ByteTokenizer
from rlvr.training.gates import Gates, GateTripped

METRIC = "reward/judge/fallback_share"


def test_a_gate_judges_a_full_window_of_the_steps_that_log_its_metric():
    gates = Gates([GateConfig(metric=METRIC, above=0.5, window=3)])
    assert gates.check(1, {METRIC: 1.0}) == [] and gates.check(2, {"reward/mean": 0.1}) == []
    assert gates.check(3, {METRIC: 1.0}) == []  # two values so far: not a full window
    with pytest.raises(GateTripped, match=r"reward/judge/fallback_share averaged 0.833 over the last 3 steps "
                                          r"\(to step 4\), above 0.5: the judge's answers hold no verdict"):
        gates.check(4, {METRIC: 0.5})


def test_a_warning_gate_warns_once_a_window_and_a_lower_bound_works():
    gates = Gates([GateConfig(metric="eval/accuracy", below=0.2, window=2, action="warn")])
    assert gates.check(1, {"eval/accuracy": 0.1}) == []
    assert len(gates.check(2, {"eval/accuracy": 0.1})) == 1
    assert gates.check(3, {"eval/accuracy": 0.1}) == []  # a new window begins
    assert gates.check(4, {"eval/accuracy": 0.9}) == []  # mean 0.5: fine


def test_gate_configs_are_checked():
    with pytest.raises(ValueError, match="exactly one of above and below"):
        GateConfig(metric=METRIC)
    with pytest.raises(ValueError, match="exactly one of above and below"):
        GateConfig(metric=METRIC, above=1, below=0)
    assert Config.model_fields["gates"].default[0].metric == METRIC


@pytest.mark.slow
def test_a_run_whose_judge_always_falls_back_stops_at_the_gate(tmp_path):
    torch.manual_seed(0)
    tok = ByteTokenizer()
    M.HybridLM(tiny(max_position_embeddings=2048, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save(
        tmp_path / "judge")  # a random judge: it writes no verdict
    command = [str(Path(sys.executable).parent / "rlvr-train"), "experiment=mixture", f"hydra.run.dir={tmp_path / 'run'}",
               "name=gate_test", "steps=8", "prompts_per_step=4", "algorithm.group_size=2", "eval_prompts=4",
               "eval_every=100", "time_limit=null", "logging.progress=false", "logging.tensorboard=false",
               "cluster.num_cpus=4", "reward.workers=1", "rollout.sampling.max_tokens=16",
               "rollout.eval_sampling.max_tokens=16", "data.train.3.env_args.max_tokens=8",
               "data.eval.3.env_args.max_tokens=8", "data.train.0.weight=0.001", "data.train.1.weight=0.001",
               "data.train.2.weight=0.001", f"gates=[{{metric: {METRIC}, above: 0.5, window: 2}}]"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env=os.environ | {"RLVR_JUDGE_CHECKPOINT": str(tmp_path / "judge")})
    assert done.returncode == 3, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("rlvr-train: stopped at step 2 by a gate: reward/judge/fallback_share averaged 1 over "
                           "the last 2 steps"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if "reward/mean" in line]
    assert len(steps) == 2 and (tmp_path / "run" / "checkpoints" / "step_000002").is_dir()
