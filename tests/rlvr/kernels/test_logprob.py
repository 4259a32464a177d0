"""Log-probabilities from the lm head chunk by chunk (``LinearLogprob``) equal the full
computation, forward and backward, and the model and learner read them through it."""

import pytest
import torch

import rlvr.kernels as K
import rlvr.model as M
from rlvr.kernels.logprob import linear_target_logprobs_chunked, linear_target_logprobs_ref
from rlvr.model.config import tiny


def _grads(fn, h, w, t, gl):
    logp, entropy = fn(h, w, t)  # (the entropy is a metric: no gradient, as in the C kernel)
    return (logp, entropy, *torch.autograd.grad((logp * gl).sum(), (h, w)))


@pytest.mark.parametrize("n,d,V,chunk,rows", [(37, 16, 50, 8, None), (64, 32, 264, 64, None), (5, 8, 11, 1, None),
                                             (100, 24, 300, 33, None), (37, 16, 50, 8, 7), (100, 24, 300, 33, 299),
                                             (5, 8, 11, 1, 1)])
def test_chunks_equal_the_full_computation_forward_and_backward(n, d, V, chunk, rows):
    """Token chunks in the forward, token chunks x vocabulary slices in the backward (slices that
    split the vocabulary unevenly, one row each, one row short of the whole)."""
    torch.manual_seed(n)
    h = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(V, d) / d**0.5).requires_grad_()
    t = torch.randint(0, V, (n,))
    gl = torch.randn(n)
    ref = _grads(linear_target_logprobs_ref, h, w, t, gl)
    got = _grads(lambda *a: linear_target_logprobs_chunked(*a, chunk, rows), h, w, t, gl)
    assert not got[1].requires_grad
    for name, a, b in zip(("logp", "entropy", "d hidden", "d weight"), ref, got):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (name, float((a - b).abs().max()))


def test_bf16_weights_give_bf16_gradients_close_to_the_reference():
    torch.manual_seed(0)
    h = torch.randn(48, 32, dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(200, 32) / 6).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, 200, (48,))
    gl = torch.randn(48)
    ref = _grads(linear_target_logprobs_ref, h, w, t, gl)
    got = _grads(lambda *a: linear_target_logprobs_chunked(*a, 7, 30), h, w, t, gl)
    assert got[2].dtype == got[3].dtype == torch.bfloat16
    # the same bf16 logits, read in fp32
    assert torch.allclose(ref[0], got[0], atol=1e-5) and torch.allclose(ref[1], got[1], atol=1e-5)
    for a, b in zip(ref[2:], got[2:]):
        assert torch.allclose(a.float(), b.float(), atol=2e-2, rtol=2e-2)


def test_the_model_returns_the_same_logprobs_through_its_lm_head(monkeypatch):
    torch.manual_seed(0)
    model = M.HybridLM(tiny())
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    keep = torch.rand(2, 11) > 0.3
    targets = ids[:, 1:][keep]
    logits = model(ids[:, :-1], keep=keep)
    ref_logp, ref_entropy = K.target_logprobs(logits, targets)
    full = model(ids[:, :-1], keep=keep, targets=targets)  # (the whole logits fit the budget)
    monkeypatch.setattr(K, "LOGITS_BUDGET_BYTES", 4 * model.config.vocab_size * 3)  # 3 tokens a chunk
    chunked = model(ids[:, :-1], keep=keep, targets=targets)
    for got in (full, chunked):
        assert torch.allclose(got[0], ref_logp, atol=1e-5) and torch.allclose(got[1], ref_entropy, atol=1e-5)
    # the gradients of the weights through the chunked head equal those through the logits
    ref_logp.sum().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logp, _ = model(ids[:, :-1], keep=keep, targets=targets)
    logp.sum().backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, want[n], atol=1e-5, rtol=1e-4), n


def test_targets_need_the_positions_they_belong_to():
    model = M.HybridLM(tiny())
    with pytest.raises(ValueError, match="targets need keep"):
        model(torch.zeros(1, 3, dtype=torch.long), targets=torch.zeros(3, dtype=torch.long))
