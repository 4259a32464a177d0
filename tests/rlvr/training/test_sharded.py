"""A ZeRO-3 learner built partitioned (rlvr/training/sharded.py): each rank's partitions hold
exactly the checkpoint's values, the KL reference is partitioned too and gives the starting
policy's log-probabilities, and the built model never went through a full copy."""

import pytest
import torch

import rlvr.model as M
from rlvr.kernels import token_logprobs
from rlvr.model.config import tiny
from rlvr.model.names import checkpoint_items
from rlvr.training import sharded
from rlvr.training.learner import LearnerGroup
from rlvr.training.precision import KEEP_FP32

from test_learner import _batch, _config, _weights


def test_no_init_leaves_the_initialisers_untouched_afterwards():
    before = torch.nn.init.normal_
    with sharded.no_init():
        t = torch.nn.Linear(4, 4).weight.detach().clone()
        assert torch.nn.init.normal_(torch.zeros(3)).abs().sum() == 0  # (a no-op inside)
    assert torch.nn.init.normal_ is before
    assert torch.nn.init.normal_(torch.zeros(100)).abs().sum() > 0
    assert t.shape == (4, 4)


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True])
def test_zero3_ranks_hold_exactly_the_checkpoint(ray_cluster, tmp_path, bf16):
    torch.manual_seed(0)
    # 2048 x 64: parameters past DeepSpeed's persistence threshold, cut across both ranks
    M.HybridLM(tiny(vocab_size=2048, initializer_range=0.1)).save(tmp_path)
    start = dict(checkpoint_items(M.load(tmp_path).state_dict()))
    group = LearnerGroup(_config(tmp_path, num_ranks=2, zero_stage=3, bf16=bf16), str(tmp_path))
    try:
        loaded = _weights(group)  # gathered to rank 0 alone, as a rollout engine receives them
        direct = _weights(group, "mapped")  # read from each rank's partitions where they lie
        buckets = _weights(group, "disk")  # all-gathered, bucket by bucket
    finally:
        group.shutdown()
    assert loaded.keys() == start.keys() == buckets.keys() == direct.keys()
    assert all(torch.equal(loaded[n], buckets[n]) and torch.equal(loaded[n], direct[n]) for n in loaded)
    for name, tensor in loaded.items():
        fp32 = not bf16 or name.endswith(KEEP_FP32 + ("e_score_correction_bias",))
        assert tensor.dtype == (torch.float32 if fp32 else torch.bfloat16), name
        assert torch.equal(tensor, start[name].to(tensor.dtype)), name


@pytest.mark.slow
def test_zero3_reference_is_the_starting_policy_on_every_rank(ray_cluster, tmp_path):
    torch.manual_seed(0)
    M.HybridLM(tiny(vocab_size=2048, initializer_range=0.1)).save(tmp_path)
    policy = M.load(tmp_path).eval()
    batch = _batch(0)
    with torch.no_grad():
        # (the learner reads the response tokens only: zero elsewhere)
        expected = token_logprobs(policy(batch.input_ids[:, :-1]), batch.input_ids)[0] * batch.mask
    cfg = _config(tmp_path, num_ranks=2, zero_stage=3, max_tokens_per_micro_batch=36)
    cfg.algorithm.kl_coef = 0.1  # (KL in the loss: every micro-step reads the reference)
    group = LearnerGroup(cfg, str(tmp_path))
    try:
        before = group.reference_logprobs(batch)
        metrics = [group.train(_batch(step)) for step in range(2)]
        after = group.reference_logprobs(batch)
        moved = _weights(group)
    finally:
        group.shutdown()
    print(f"reference vs one whole fp32 model: {(before - expected).abs().max():.2e}")
    assert (before - expected).abs().max() < 1e-5
    assert torch.equal(before, after)  # frozen while the policy trains
    assert metrics[1]["kl"] > 0 and not torch.equal(moved["lm_head.weight"], policy.lm_head.weight)
