"""Token-budget micro-batches with packed rows: the same loss and gradients as the padded batch."""

import pytest
import torch

import rlvr.model as M
from rlvr import grpo
from rlvr.training import packing
from rlvr.kernels import token_logprobs
from rlvr.model.config import tiny


def _ragged(seed=0, B=12, L=20):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, L + 1, (B,), generator=g)
    lengths[0] = L
    ids = torch.randint(1, 256, (B, L), generator=g)
    mask = torch.zeros(B, L - 1)
    for i, n in enumerate(lengths.tolist()):
        ids[i, n:] = 0
        mask[i, 3:n - 1] = 1  # "response": from position 4 to the end
    adv = torch.randn(B, generator=g)
    engine = -torch.rand(B, L - 1, generator=g) * mask
    return ids, lengths, mask, adv, engine


def test_pack_rows_first_fit_decreasing_within_the_width():
    lengths = [7, 3, 5, 2, 8, 1]
    rows = packing.pack_rows(lengths, list(range(6)), width=8)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum(lengths[i] for i in r) <= 8 for r in rows)
    assert len(rows) == 4  # 8 | 7+1 | 5+3 | 2


def test_plan_gives_every_rank_as_many_micro_batches_within_the_budget():
    lengths = [20] * 3 + [5] * 13
    plans = packing.plan(lengths, [list(range(8)), list(range(8, 16))], max_tokens=40)
    assert len(plans[0]) == len(plans[1])
    for rank in plans:
        for micro in rank:
            assert len(micro) * max(lengths) <= 40
    assert sorted(i for rank in plans for m in rank for r in m for i in r) == list(range(16))


def test_pack_unpack_round_trip_and_boundaries_masked():
    ids, lengths, mask, adv, engine = _ragged()
    rows = packing.pack_rows(lengths.tolist(), list(range(len(lengths))), ids.shape[1])
    micro = packing.pack(ids, lengths, {"mask": mask, "engine_logp": engine}, rows)
    assert micro.seq_idx is not None and micro.input_ids.shape[0] < len(lengths)
    assert int(micro.tokens["mask"].sum()) == int(mask.sum())
    # every real token is in some row exactly once
    assert sorted(micro.input_ids[micro.input_ids > 0].tolist()) == sorted(ids[ids > 0].tolist())
    out = torch.zeros_like(engine)
    packing.unpack(micro.tokens["engine_logp"], micro, lengths, out)
    assert torch.equal(out, engine)


def test_packed_expert_records_follow_their_tokens():
    """Routing replay's records, (B, L - 1, layers, top_k) integers: each stays with the input
    token it was recorded for; positions of no sequence hold -1 (no record)."""
    ids, lengths, mask, adv, engine = _ragged()
    L = ids.shape[1]
    experts = torch.stack([ids[:, :-1] % 8, (ids[:, :-1] + 1) % 8], -1)[:, :, None].to(torch.int8)
    experts[torch.arange(L - 1)[None, :] >= lengths[:, None] - 1] = -1
    rows = packing.pack_rows(lengths.tolist(), list(range(len(lengths))), L)
    micro = packing.pack(ids, lengths, {"mask": mask, "experts": experts}, rows)
    got = micro.tokens["experts"]
    assert got.shape == (len(rows), L - 1, 1, 2) and got.dtype == torch.int8 and any(len(r) > 1 for r in rows)
    recorded = (got >= 0).all(-1)[..., 0]
    assert int(recorded.sum()) == int((lengths - 1).sum()) and bool(((got >= 0) == (got[..., :1] >= 0)).all())
    inputs = micro.input_ids[:, :-1][recorded]
    assert torch.equal(got[recorded][:, 0].long(), torch.stack([inputs % 8, (inputs + 1) % 8], -1))
    empty = packing.pack(ids, lengths, {"mask": mask, "experts": experts}, [])
    assert bool((empty.tokens["experts"] == -1).all()) and float(empty.tokens["mask"].sum()) == 0


@pytest.mark.parametrize("aggregation,policy_ratio,is_level", [
    ("token_mean", "token", "token"), ("seq_mean_token_mean", "token", "token"),
    ("seq_mean_token_sum_norm", "token", "token"),
    ("seq_mean_token_mean", "sequence", "geometric"),  # GSPO, and truncation of each sequence's ratio
    ("token_mean", "token", "sequence"),
])
def test_packed_micro_batches_give_the_padded_loss_and_gradients(aggregation, policy_ratio, is_level):
    torch.manual_seed(0)
    model = M.HybridLM(tiny(initializer_range=0.1))
    ids, lengths, mask, adv, engine = _ragged()
    cfg = grpo.LossConfig(aggregation=aggregation, tis_cap=2.0, policy_ratio=policy_ratio, is_level=is_level)

    def loss_of(logp, old, a, m, e, w=None, segments=None):
        return grpo.grpo_loss(logp, old, a, m, cfg, engine_logp=e, weights=w, segments=segments)[0]

    # Reference: the whole padded batch in one forward.
    model.zero_grad()
    logp = token_logprobs(model(ids[:, :-1]), ids)[0]
    # (the old log-probs vary by token, so that a sequence's ratio depends on which tokens are its own)
    full = loss_of(logp, logp.detach() - 0.1 + 0.05 * engine, adv, mask, engine)
    full.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    weights = grpo.loss_weights(mask, aggregation)
    tokens = {"mask": mask, "engine_logp": engine, "advantages": adv[:, None].expand_as(mask), "weights": weights}
    plans = packing.plan(lengths.tolist(), [list(range(len(lengths)))], max_tokens=45)[0]
    assert len(plans) > 1 and any(len(row) > 1 for rows in plans for row in rows)
    model.zero_grad()
    total = 0.0
    for rows in plans:
        m = packing.pack(ids, lengths, tokens, rows)
        seq_idx = None if m.seq_idx is None else m.seq_idx[:, :-1]
        logp = token_logprobs(model(m.input_ids[:, :-1], seq_idx=seq_idx), m.input_ids)[0]
        t = m.tokens
        loss = loss_of(logp, logp.detach() - 0.1 + 0.05 * t["engine_logp"], t["advantages"], t["mask"],
                       t["engine_logp"], t["weights"], seq_idx)
        loss.backward()
        total += float(loss.detach())
    print(f"{aggregation}, {policy_ratio} ratio, {is_level} IS: padded {float(full.detach()):.6f}, packed {total:.6f}")
    assert total == pytest.approx(float(full.detach()), rel=1e-5, abs=1e-9)
    for n, p in model.named_parameters():
        if n in want:
            assert torch.allclose(p.grad, want[n], atol=1e-6, rtol=1e-4), n


def test_right_pad_masks_the_response_targets():
    ids, mask, lengths = packing.right_pad([[1, 2], [3]], [[4, 5, 6], [7]], pad_id=0)
    assert ids.tolist() == [[1, 2, 4, 5, 6], [3, 7, 0, 0, 0]]
    assert lengths.tolist() == [5, 2]
    # target t predicts token t + 1: the response tokens are targets 1..3 and 0
    assert mask.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]
    values = torch.zeros_like(mask).masked_scatter_(mask.bool(), torch.tensor([0.4, 0.5, 0.6, 0.7]))
    assert torch.allclose(values, torch.tensor([[0, 0.4, 0.5, 0.6], [0.7, 0, 0, 0]]))
