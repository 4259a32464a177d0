"""The grouped expert product and its backward against a loop over experts."""

import pytest
import torch

from rlvr.kernels.moe import grouped_mm


@pytest.mark.parametrize("counts", [[3, 0, 5, 1], [0, 0, 7, 0], [2, 2, 2, 2]])
def test_grouped_mm_and_its_gradients_are_a_loop_over_experts(counts):
    g = torch.Generator().manual_seed(sum(counts))
    E, k, n = len(counts), 6, 5
    x, w = torch.randn(sum(counts), k, generator=g), torch.randn(E, n, k, generator=g)
    offsets = torch.tensor(counts).cumsum(0).to(torch.int32)
    grad = torch.randn(sum(counts), n, generator=g)

    def run(fn):
        x_, w_ = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = fn(x_, w_.transpose(1, 2))  # (E, k, n): as the MoE passes its stacked weights
        out.backward(grad)
        return out.detach(), x_.grad, w_.grad

    def loop(x_, wt):
        start, rows = 0, []
        for e, c in enumerate(counts):
            rows.append(x_[start:start + c] @ wt[e])
            start += c
        return torch.cat(rows)

    for got, want in zip(run(lambda x_, wt: grouped_mm(x_, wt, offsets)), run(loop)):
        assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())


def _moe_inputs(tokens=7, hidden=8, dim=8, inter=6, E=4, top_k=2, seed=0):
    from rlvr.kernels.moe import MoEDims, MoEWeights

    g = torch.Generator().manual_seed(seed)
    w = MoEWeights(torch.randn(E, hidden, generator=g), torch.zeros(E), torch.randn(E, inter, dim, generator=g) * 0.3,
                   torch.randn(E, dim, inter, generator=g) * 0.3)
    dims = MoEDims(n_experts=E, top_k=top_k, n_group=1, topk_group=1, norm_topk_prob=True, scale=1.5)
    return torch.randn(tokens, hidden, generator=g), w, dims


def test_replayed_experts_are_used_by_hand_and_the_router_still_learns():
    # Routing replay: the experts come from elsewhere (a rollout engine), their weights from this
    # router's scores; the output is the sum over the replayed experts, computed here by hand.
    from rlvr.kernels.cpu_train import moe_routed_train
    from rlvr.kernels.moe import moe_routed_ref, route_ref

    x, w, dims = _moe_inputs()
    own, _ = route_ref(x, w.router, w.correction_bias, dims)
    chosen = (own + 1) % dims.n_experts  # every token on experts its router did not pick
    router = w.router.clone().requires_grad_()
    w_ = w._replace(router=router)
    out = moe_routed_ref(x, x, w_, dims, chosen)
    scores = torch.sigmoid(x @ router.T)
    by_hand = torch.zeros_like(x)
    for t in range(x.shape[0]):
        picked = scores[t, chosen[t]]
        weights = picked / picked.sum() * dims.scale
        for j, e in enumerate(chosen[t].tolist()):
            by_hand[t] += weights[j] * (w.down[e] @ torch.relu(w.up[e] @ x[t]) ** 2)
    assert torch.allclose(out, by_hand, atol=1e-5)
    grad, = torch.autograd.grad(out.sum(), router)
    assert grad.abs().sum() > 0  # the gate weights of the replayed experts train the router
    # the fused training path replays the same experts
    assert torch.allclose(moe_routed_train(x, x, w, dims, chosen), out.detach(), atol=1e-5)
    # replaying the router's own choice changes nothing
    assert torch.allclose(moe_routed_ref(x, x, w, dims, own), moe_routed_ref(x, x, w, dims), atol=1e-6)
