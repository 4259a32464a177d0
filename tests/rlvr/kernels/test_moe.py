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
