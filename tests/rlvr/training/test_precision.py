"""Under DeepSpeed's bf16 the SSM's A_log, D and dt_bias stay fp32 (rlvr/training/precision.py):
in the module after initialize and after steps, in the weights a rollout engine receives, trained,
averaged over ranks, and resumed exactly from a checkpoint."""

import pytest
import torch

import rlvr.model as M
from rlvr.model.config import tiny
from rlvr.training.learner import LearnerGroup
from rlvr.training.precision import KEEP_FP32, Fp32Params, clip_coefficient

from test_learner import _batch, _config, _weights


def test_the_tensors_become_fp32_buffers_under_their_names_and_still_learn():
    torch.manual_seed(0)
    model = M.HybridLM(tiny())
    names = set(model.state_dict())
    kept = Fp32Params(model.to(torch.bfloat16))
    assert set(model.state_dict()) == names  # checkpoint names unchanged
    assert sorted({n.rsplit(".", 1)[1] for n, _, _ in kept.owners}) == sorted(KEEP_FP32)
    assert not any(n.endswith(KEEP_FP32) for n, _ in model.named_parameters())  # DeepSpeed will not see them
    assert all(t.dtype == torch.float32 and t.requires_grad for t in kept.tensors)
    ids = torch.randint(0, 200, (2, 9))
    keep = torch.ones(2, 8, dtype=torch.bool)
    logp, _ = model(ids[:, :-1], keep=keep, targets=ids[:, 1:][keep])
    logp.sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in kept.tensors)
    kept.start(lambda ts: torch.optim.AdamW(ts, lr=1e-2))
    before = [t.detach().clone() for t in kept.tensors]
    kept.step(1e-2, 1.0)
    assert all(not torch.equal(a, t) for a, t in zip(before, kept.tensors)) and all(t.grad is None for t in kept.tensors)


def test_the_clip_coefficient_counts_every_part():
    assert clip_coefficient(None, 9.0, 16.0) == (5.0, 1.0)
    assert clip_coefficient(10.0, 9.0, 16.0) == (5.0, 1.0)
    total, coef = clip_coefficient(1.0, 9.0, 16.0)
    assert total == 5.0 and coef == pytest.approx(0.2, rel=1e-5)


def _ssm(weights: dict) -> dict:
    return {k: v for k, v in weights.items() if k.endswith(KEEP_FP32)}


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_bf16_training_keeps_them_fp32_trains_them_and_resumes_exactly(ray_cluster, tmp_path, zero_stage):
    torch.manual_seed(0)
    M.HybridLM(tiny(initializer_range=0.1)).save(tmp_path / "start")
    cfg = _config(tmp_path / "start", bf16=True, zero_stage=zero_stage, num_ranks=2, max_tokens_per_micro_batch=36)
    group = LearnerGroup(cfg, str(tmp_path / "start"))
    try:
        start = _weights(group)  # after deepspeed.initialize, as a rollout engine receives them
        assert _ssm(start) and all(v.dtype == torch.float32 for v in _ssm(start).values())
        assert start["backbone.layers.0.mixer.in_proj.weight"].dtype == torch.bfloat16  # the rest is bf16
        group.train(_batch(0))
        group.save(str(tmp_path / "ckpt"), "one")
        group.train(_batch(1))
        after = _weights(group)
        assert all(v.dtype == torch.float32 for v in _ssm(after).values())
        assert all(not torch.equal(after[k], start[k]) for k in _ssm(start))  # trained
        group.load(str(tmp_path / "ckpt"), "one")  # the fp32 values and their Adam moments come back
        group.train(_batch(1))
        again = _weights(group)
        for k in _ssm(after):
            assert torch.equal(again[k], after[k]), k
    finally:
        group.shutdown()
