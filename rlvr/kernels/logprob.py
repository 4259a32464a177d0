"""Per-token log-probabilities of the targets and the entropy of each next-token distribution:
what the learner reads from the logits (torch reference; the C kernel is ``cpu_train.TokenLogprob``).

``LinearLogprob`` starts one step earlier, from the final hidden states and the lm-head weight, and
never holds the (tokens, vocab) logits: it projects a chunk of tokens at a time, keeps only the
two numbers per token, and recomputes each chunk's logits in the backward (as a fused linear +
cross-entropy does). At Nano's vocabulary (131,072) and 8,192 tokens per micro-batch the logits
are 4.3 GB in fp32 per copy; the log-softmax, its exponent and the backward's gradient are more
copies. Chunked, the stage holds one chunk's few copies instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def target_logprobs_ref(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and the entropy of each next-token distribution, fp32: logits (..., V),
    targets (...) -> two tensors of the targets' shape."""
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    logp = logp_all.gather(-1, targets[..., None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def token_logprobs_ref(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``target_logprobs_ref`` of every next token: logits (B, L - 1, V), input_ids (B, L)."""
    return target_logprobs_ref(logits, input_ids[:, 1:])


def linear_target_logprobs_ref(hidden: torch.Tensor, weight: torch.Tensor,
                               targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``target_logprobs_ref`` of the logits ``hidden (n, d) @ weight (V, d).T``, computed in the
    weight's dtype (as ``nn.Linear`` would) and read in fp32: the reference ``LinearLogprob``
    equals."""
    return target_logprobs_ref(F.linear(hidden, weight), targets)


class LinearLogprob(torch.autograd.Function):
    """``linear_target_logprobs_ref`` over chunks of ``chunk`` tokens: forward and backward hold
    one chunk's logits at a time. The entropy is a metric (no gradient), as in the C kernel
    ``TokenLogprob``. Saved for the backward: the inputs.

    With z the logits of a token, p = softmax(z) and t its target, d log p_t / dz = onehot(t) - p;
    the chunk's dz then gives d hidden = dz @ W and dW += dz.T @ hidden (accumulated in fp32)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logp)
        for s in range(0, n, chunk):  # two chunk-sized buffers at a time: the logits, then p log p
            z = F.linear(hidden[s:s + chunk], weight).float()
            z.sub_(torch.logsumexp(z, dim=-1, keepdim=True))  # log p, in place
            logp[s:s + chunk] = z.gather(-1, targets[s:s + chunk, None])[:, 0]
            entropy[s:s + chunk] = z.exp().mul_(z).sum(-1).neg_()
        ctx.save_for_backward(hidden, weight, targets)
        ctx.mark_non_differentiable(entropy)
        ctx.chunk = chunk
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets = ctx.saved_tensors
        chunk, n = ctx.chunk, hidden.shape[0]
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        for s in range(0, n, chunk):
            h, g = hidden[s:s + chunk], grad_logp[s:s + chunk, None]
            dz = F.linear(h, weight).float()  # -> softmax, in place: one chunk-sized buffer
            dz.sub_(dz.amax(dim=-1, keepdim=True)).exp_()
            dz.mul_(-g / dz.sum(dim=-1, keepdim=True))
            dz.scatter_add_(-1, targets[s:s + chunk, None], g)
            if want_h:
                grad_h[s:s + chunk] = (dz.to(weight.dtype) @ weight).to(hidden.dtype)
            if want_w:
                grad_w.addmm_(dz.t(), h.float())
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None


def linear_target_logprobs_chunked(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                   chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``LinearLogprob``: log p(target) and entropies of ``hidden @ weight.T``, ``chunk`` tokens at a time."""
    return LinearLogprob.apply(hidden, weight, targets, max(1, int(chunk)))
