"""GRPO maths against numbers worked out by hand."""

import math

import pytest
import torch

from rlvr import grpo


def test_group_advantages_grpo_and_dr_grpo():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # two groups of 4
    # group 1: mean 0.5, unbiased std sqrt(1/3) = 0.57735 -> +-0.866025
    adv = grpo.group_advantages(rewards, 4, eps=0.0)
    assert torch.allclose(adv[:4], torch.tensor([0.866025, -0.866025, -0.866025, 0.866025]), atol=1e-5)
    assert torch.all(adv[4:] == 0)  # all-equal group: zero advantage, not 0/0
    dr = grpo.ADVANTAGE_ESTIMATORS["dr_grpo"](rewards, 4)
    assert torch.allclose(dr, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="groups of 3"):
        grpo.group_advantages(rewards, 3)


def test_informative_groups():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    assert grpo.informative_groups(rewards, 2).tolist() == [True, False, False]


def test_kl_estimators():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert torch.allclose(grpo.kl_k1(logp, ref), torch.tensor([math.log(2)]))
    assert torch.allclose(grpo.kl_k2(logp, ref), torch.tensor([0.5 * math.log(2) ** 2]))
    # k3 = r - log r - 1 with r = pi_ref/pi = 0.5: 0.5 + log 2 - 1 = 0.193147
    assert torch.allclose(grpo.kl_k3(logp, ref), torch.tensor([0.193147]), atol=1e-6)
    assert grpo.kl_k3(ref, ref).item() == 0


def test_clipped_loss_with_clip_higher():
    old = torch.zeros(1, 4)
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.7]])
    logp = ratio.log()
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, clipped = grpo.clipped_policy_loss(logp, old, adv, clip_low=0.2, clip_high=0.28)
    # A>0, ratio 1.5: min(1.5, 1.28) = 1.28 -> -1.28 (clipped); ratio 0.5: min(0.5, 0.8) -> -0.5
    # A<0, ratio 1.1: min(-1.1, -1.1) -> 1.1; ratio 0.7: min(-0.7, -0.8) = -0.8 -> 0.8 (clipped)
    assert torch.allclose(loss, torch.tensor([[-1.28, -0.5, 1.1, 0.8]]), atol=1e-6)
    assert clipped.tolist() == [[1.0, 0.0, 0.0, 1.0]]


def test_gradient_of_the_clipped_loss_is_zero_where_clipped():
    logp = torch.tensor([[math.log(1.5), math.log(1.1)]], requires_grad=True)
    loss, _ = grpo.clipped_policy_loss(logp, torch.zeros(1, 2), torch.tensor([1.0]), 0.2, 0.2)
    loss.sum().backward()
    # d/dlogp of -ratio*A is -ratio*A: 0 for the clipped token, -1.1 for the other
    assert torch.allclose(logp.grad, torch.tensor([[0.0, -1.1]]))


def test_aggregations():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert grpo.aggregate(per_token, mask, "token_mean").item() == pytest.approx(10 / 4)
    assert grpo.aggregate(per_token, mask, "seq_mean_token_mean").item() == pytest.approx((2 + 4) / 2)
    assert grpo.aggregate(per_token, mask, "seq_mean_token_sum_norm").item() == pytest.approx(10 / 8)
    assert grpo.aggregate(per_token, mask, "seq_mean_token_sum_norm", max_len=10).item() == pytest.approx(10 / 20)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        grpo.aggregate(per_token, mask, "sum")


def test_truncated_importance_weights():
    old = torch.log(torch.tensor([0.5, 0.9, 0.1]))
    engine = torch.log(torch.tensor([0.25, 0.9, 0.01]))
    w = grpo.truncated_is_weights(old, engine, cap=2.0)
    assert torch.allclose(w, torch.tensor([2.0, 1.0, 2.0]))  # 0.5/0.25 = 2, 1, 10 -> capped at 2


# Two sequences: the first with three trained tokens, the second with two (its last is padding).
# Token ratios pi_prox / pi_engine: [2, 0.5, 4] and [1.5, 0.25].
PROX = torch.log(torch.tensor([[0.8, 0.2, 0.4], [0.6, 0.1, 0.7]]))
ENGINE = torch.log(torch.tensor([[0.4, 0.4, 0.1], [0.4, 0.4, 0.9]]))
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_importance_ratios_per_token_per_sequence_and_geometric():
    token = grpo.importance_ratios(PROX, ENGINE, MASK, "token")
    assert torch.allclose(token[MASK.bool()], torch.tensor([2.0, 0.5, 4.0, 1.5, 0.25]))
    sequence = grpo.importance_ratios(PROX, ENGINE, MASK, "sequence")  # products: 4 and 0.375, on every token
    assert torch.allclose(sequence, torch.tensor([[4.0] * 3, [0.375] * 3]))
    geometric = grpo.importance_ratios(PROX, ENGINE, MASK, "geometric")  # 4 ** (1/3), 0.375 ** (1/2)
    assert torch.allclose(geometric, torch.tensor([[4 ** (1 / 3)] * 3, [0.375 ** 0.5] * 3]))
    # a product over a long sequence is clamped, not inf
    long = grpo.importance_ratios(torch.zeros(1, 100), torch.full((1, 100), -1.0), torch.ones(1, 100), "sequence")
    assert torch.isfinite(long).all() and long[0, 0] == pytest.approx(math.exp(20), rel=1e-5)
    with pytest.raises(ValueError, match="level"):
        grpo.importance_ratios(PROX, ENGINE, MASK, "batch")


def test_truncated_importance_sampling_at_each_level():
    w, keep = grpo.importance_weights(PROX, ENGINE, MASK, "truncate", "token", high=2.0)
    assert torch.allclose(w[MASK.bool()], torch.tensor([2.0, 0.5, 2.0, 1.5, 0.25]))  # 4 -> 2
    assert torch.equal(keep, MASK.bool())  # truncation rejects nothing
    w, _ = grpo.importance_weights(PROX, ENGINE, MASK, "truncate", "sequence", high=2.0)
    assert torch.allclose(w, torch.tensor([[2.0] * 3, [0.375] * 3]))
    # the token level is what the loss always applied (truncated_is_weights), bit for bit
    assert torch.equal(grpo.importance_weights(PROX, ENGINE, torch.ones_like(MASK), "truncate", "token", high=2.0)[0],
                       grpo.truncated_is_weights(PROX, ENGINE, 2.0))


def test_masked_importance_sampling_rejects_tokens_or_whole_sequences():
    # token level, kept in [0.45, 2.05]: 2 (kept), 0.5 (kept), 4 (out), 1.5 (kept), 0.25 (out)
    w, keep = grpo.importance_weights(PROX, ENGINE, MASK, "mask", "token", low=0.45, high=2.05)
    assert keep.tolist() == [[True, True, False], [True, False, False]]
    assert torch.allclose(w, torch.tensor([[2.0, 0.5, 0.0], [1.5, 0.0, 0.0]]))
    # sequence level: 4 and 0.375 are both out of [0.45, 2.05]: nothing is trained
    w, keep = grpo.importance_weights(PROX, ENGINE, MASK, "mask", "sequence", low=0.45, high=2.05)
    assert not keep.any() and not w.any()
    # geometric: 1.587 (kept: every token of the first sequence, weighted by it), 0.612 (kept)
    w, keep = grpo.importance_weights(PROX, ENGINE, MASK, "mask", "geometric", low=0.45, high=2.05)
    assert torch.equal(keep, MASK.bool())
    assert torch.allclose(w, torch.tensor([[4 ** (1 / 3)] * 3, [0.375 ** 0.5] * 2 + [0.0]]))
    # ... and with the floor above 0.612, the second sequence goes whole
    _, keep = grpo.importance_weights(PROX, ENGINE, MASK, "mask", "geometric", low=0.7, high=2.05)
    assert keep.tolist() == [[True, True, True], [False, False, False]]
    with pytest.raises(ValueError, match="mode"):
        grpo.importance_weights(PROX, ENGINE, MASK, "clip")


def test_importance_metrics_count_truncated_and_masked_tokens():
    ratio = grpo.importance_ratios(PROX, ENGINE, MASK, "token")
    w, keep = grpo.importance_weights(PROX, ENGINE, MASK, "truncate", "token", high=2.0)
    m = grpo.importance_metrics(ratio, w, keep, MASK, "truncate", 2.0)
    assert m["is/ratio_mean"] == pytest.approx((2 + 0.5 + 4 + 1.5 + 0.25) / 5)
    assert m["is/ratio_min"] == pytest.approx(0.25) and m["is/ratio_max"] == pytest.approx(4.0)
    assert m["is/truncated_share"] == pytest.approx(1 / 5)  # only 4 is above the cap
    w, keep = grpo.importance_weights(PROX, ENGINE, MASK, "mask", "token", low=0.45, high=2.05)
    assert grpo.importance_metrics(ratio, w, keep, MASK, "mask", 2.05)["is/masked_share"] == pytest.approx(2 / 5)


def test_precomputed_importance_weights_replace_the_truncation_in_the_loss():
    # rejected tokens leave the mask before the loss is normalised: the token mean is over the kept ones
    w, keep = grpo.importance_weights(PROX, ENGINE, MASK, "mask", "token", low=0.45, high=2.05)
    adv = torch.tensor([1.0, -1.0])
    loss, m = grpo.grpo_loss(PROX, PROX, adv, keep.int(), grpo.LossConfig(tis_cap=2.0), engine_logp=ENGINE,
                             is_weights=w)
    # ratio 1 everywhere (logp = old): per token -A, weighted 2, 0.5 (first), 1.5 (second), over 3 tokens
    assert loss.item() == pytest.approx((-2.0 - 0.5 + 1.5) / 3)
    assert m["is_weight_mean"] == pytest.approx((2.0 + 0.5 + 1.5) / 3)


def test_segment_means_follow_the_sequences_packed_in_a_row():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    mask = torch.tensor([[1, 1, 0, 1, 1]])  # the third token is a boundary (no target)
    segments = torch.tensor([[0, 0, 0, 1, 1]])  # two sequences in the row
    assert grpo.segment_mean(values, mask, segments).tolist() == [[1.5, 1.5, 1.5, 4.5, 4.5]]
    assert grpo.segment_mean(values, mask).tolist() == [[3.0] * 5]  # one sequence per row
    total, count = grpo.segment_totals(values, mask, segments)
    assert total.tolist() == [[3.0, 3.0, 3.0, 9.0, 9.0]] and count.tolist() == [[2, 2, 2, 2, 2]]


def test_gspo_clips_one_geometric_mean_ratio_per_sequence_and_has_its_gradient():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]))
    # sequence 1: token ratios 1.2 and 1.5 -> geometric mean sqrt(1.8) = 1.342; sequence 2: 0.9, 1.0, 1.1
    new = torch.log(torch.tensor([[0.6, 0.75, 0.5], [0.45, 0.5, 0.55]])).requires_grad_()
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    ratio = grpo.sequence_ratio(new, old, mask)
    s1, s2 = math.sqrt(1.8), (0.9 * 1.0 * 1.1) ** (1 / 3)
    assert torch.allclose(ratio.detach(), torch.tensor([[s1] * 3, [s2] * 3]))
    adv = torch.tensor([1.0, -1.0])
    cfg = grpo.LossConfig(clip_low=3e-4, clip_high=4e-4, aggregation="seq_mean_token_mean", tis_cap=None,
                          policy_ratio="sequence")
    loss, m = grpo.grpo_loss(new, old, adv, mask, cfg)
    # sequence 1 is clipped at 1 + 4e-4 (A > 0, ratio above): no gradient; sequence 2 (A < 0,
    # ratio 0.9967 below 1 - 3e-4) is clipped too: its loss is -clip * A... = +0.9997
    assert loss.item() == pytest.approx((-(1 + 4e-4) + (1 - 3e-4)) / 2, abs=1e-6)
    assert m["clip_fraction"] == pytest.approx(1.0)
    # unclipped (a wide range), the gradient is GSPO's: -A_i s_i / |y_i| on each of the sequence's tokens
    # (divided by the 2 sequences of the mean)
    wide = grpo.LossConfig(clip_low=0.9, clip_high=0.9, aggregation="seq_mean_token_mean", tis_cap=None,
                           policy_ratio="sequence")
    grad, = torch.autograd.grad(grpo.grpo_loss(new, old, adv, mask, wide)[0], new)
    want = torch.tensor([[-s1 / 2, -s1 / 2, 0.0], [s2 / 3, s2 / 3, s2 / 3]]) / 2
    assert torch.allclose(grad, want, atol=1e-6)
    with pytest.raises(ValueError, match="policy ratio"):
        grpo.grpo_loss(new, old, adv, mask, grpo.LossConfig(policy_ratio="batch"))


def test_sequence_level_truncation_inside_the_loss_follows_packed_sequences():
    # two sequences packed in one row equal the same two as rows of their own
    prox, engine = PROX[:, :2], ENGINE[:, :2]  # ratios [2, 0.5] and [1.5, 0.25]
    packed_prox, packed_engine = prox.reshape(1, 4), engine.reshape(1, 4)
    segments = torch.tensor([[0, 0, 1, 1]])
    for level in ("sequence", "geometric"):
        rows = grpo.importance_weights(prox, engine, torch.ones(2, 2), "truncate", level, high=2.0)[0]
        packed = grpo.importance_weights(packed_prox, packed_engine, torch.ones(1, 4), "truncate", level, high=2.0,
                                         segments=segments)[0]
        assert torch.allclose(packed, rows.reshape(1, 4)), level
    # geometric: sqrt(2 * 0.5) = 1 and sqrt(1.5 * 0.25) = 0.61
    assert torch.allclose(rows, torch.tensor([[1.0, 1.0], [0.375 ** 0.5] * 2]))


def test_overlong_penalty_and_kl_in_reward():
    lengths = torch.tensor([50, 80, 90, 100, 120])
    assert grpo.overlong_penalty(lengths, max_len=100, buffer=20).tolist() == pytest.approx([0, 0, -0.5, -1, -1])
    kl = torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert grpo.kl_in_reward(torch.tensor([1.0, 0.0]), kl, mask, beta=0.5).tolist() == pytest.approx([0.85, -0.5])


def test_kl_goes_into_the_reward_or_the_loss_never_both():
    assert grpo.kl_placement(0.1, in_reward=True) == (0.1, 0.0)
    assert grpo.kl_placement(0.1, in_reward=False) == (0.0, 0.1)


def test_shape_rewards_by_hand():
    rewards = torch.tensor([1.0, 0.0, 1.0])
    lengths = torch.tensor([50, 90, 100])
    truncated = torch.tensor([False, False, True])
    mask = torch.ones(3, 2)
    kl = torch.tensor([[0.1, 0.1], [0.2, 0.0], [1.0, 1.0]])
    plain, same_mask = grpo.shape_rewards(rewards, lengths, truncated, mask, max_tokens=100)
    assert torch.equal(plain, rewards) and torch.equal(same_mask, mask)
    shaped, new_mask = grpo.shape_rewards(rewards, lengths, truncated, mask, max_tokens=100, overlong_buffer=20,
                                          overlong_mask=True, kl_per_token=kl, kl_beta=0.5)
    # overlong: 0, -0.5, -1; truncated row masked out, so its KL does not count; KL: 0.1, 0.1, 0
    assert shaped.tolist() == pytest.approx([1.0 - 0.1, 0.0 - 0.5 - 0.1, 1.0 - 1.0])
    assert new_mask.tolist() == [[1, 1], [1, 1], [0, 0]] and mask.sum() == 6  # the input is not modified
    with pytest.raises(ValueError, match="per-token KL"):
        grpo.shape_rewards(rewards, lengths, truncated, mask, max_tokens=100, kl_beta=0.5)


def test_grpo_loss_wires_everything():
    logp = torch.log(torch.tensor([[0.6, 0.5], [0.2, 0.4]]))
    old = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.5]]))
    engine = torch.log(torch.tensor([[0.5, 0.25], [0.2, 0.5]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([1.0, -1.0])
    cfg = grpo.LossConfig(clip_low=0.2, clip_high=0.28, aggregation="token_mean", tis_cap=2.0, kl_coef=0.0)
    loss, metrics = grpo.grpo_loss(logp, old, adv, mask, cfg, engine_logp=engine)
    # ratios: 1.2, 1.0, 1.0 (masked 0.8); per token -1.2, -1.0, +1.0; IS weights 1, 2, 1
    # token mean over 3 tokens: (-1.2 - 2.0 + 1.0) / 3
    assert loss.item() == pytest.approx((-1.2 - 2.0 + 1.0) / 3, abs=1e-6)
    assert metrics["clip_fraction"] == 0 and metrics["is_weight_mean"] == pytest.approx(4 / 3)
    assert metrics["is_truncated_share"] == pytest.approx(1 / 3)  # the ratio 2 sits at the cap
    with pytest.raises(ValueError, match="reference"):
        grpo.grpo_loss(logp, old, adv, mask, grpo.LossConfig(kl_coef=0.1))
    loss_kl, m = grpo.grpo_loss(logp, old, adv, mask, grpo.LossConfig(kl_coef=0.1, tis_cap=None), ref_logp=old)
    assert m["kl"] > 0 and loss_kl.item() > grpo.grpo_loss(logp, old, adv, mask, grpo.LossConfig(tis_cap=None))[0].item()


def test_routing_agreement_counts_expert_sets_on_recorded_trained_tokens():
    # 3 tokens x 2 layers x top-2; token 2 has no record (-1), token 1 is not trained
    own = torch.tensor([[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[0, 1], [0, 1]]])
    recorded = torch.tensor([[[1, 0], [2, 4]], [[4, 5], [6, 7]], [[-1, -1], [-1, -1]]], dtype=torch.int8)
    got = grpo.routing_agreement(own, recorded, torch.tensor([1.0, 0.0, 1.0]))
    # token 0: layer 0 the same set in another order, layer 1 differs -> 1/2 of its decisions
    assert got == {"routing_agreement": 0.5, "routing_tokens_agree": 0.0}
    assert grpo.routing_agreement(own, recorded, torch.ones(3))["routing_agreement"] == 0.75
