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
    """``linear_target_logprobs_ref`` over tiles: the forward projects ``chunk`` tokens at a time
    onto the whole vocabulary; the backward takes the vocabulary ``rows`` at a time, each slice
    of the weight's gradient accumulated in fp32 over every token chunk and then written in the
    weight's dtype, so neither the logits nor an fp32 copy of the whole weight gradient (Nano:
    1.3 GiB) ever exists. The entropy is a metric (no gradient), as in the C kernel
    ``TokenLogprob``. Saved for the backward: the inputs and each token's log-normaliser.

    With z the logits of a token, p = softmax(z) = exp(z - lse) and t its target,
    d log p_t / dz = onehot(t) - p; a tile's dz then adds dz @ W[slice] to d hidden and
    dz.T @ hidden to dW[slice]."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, rows: int):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy, lse = torch.empty_like(logp), torch.empty_like(logp)
        for s in range(0, n, chunk):  # two chunk-sized buffers at a time: the logits, then p log p
            z = F.linear(hidden[s:s + chunk], weight).float()
            lse[s:s + chunk] = torch.logsumexp(z, dim=-1)
            z.sub_(lse[s:s + chunk, None])  # log p, in place
            logp[s:s + chunk] = z.gather(-1, targets[s:s + chunk, None])[:, 0]
            entropy[s:s + chunk] = z.exp().mul_(z).sum(-1).neg_()
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.mark_non_differentiable(entropy)
        ctx.chunk, ctx.rows = chunk, rows
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        chunk, rows, n, V = ctx.chunk, ctx.rows, hidden.shape[0], weight.shape[0]
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if want_h else None
        grad_w = torch.empty_like(weight) if want_w else None
        for v in range(0, V, rows):
            w = weight[v:v + rows]
            gw = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if want_w else None
            for s in range(0, n, chunk):
                h, g = hidden[s:s + chunk], grad_logp[s:s + chunk, None]
                dz = F.linear(h, w).float()  # -> p = exp(z - lse) for this slice, in place
                dz.sub_(lse[s:s + chunk, None]).exp_().mul_(-g)
                t = targets[s:s + chunk, None] - v
                hit = (t >= 0) & (t < w.shape[0])  # the tokens whose target lies in this slice
                dz.scatter_add_(-1, t.clamp(0, w.shape[0] - 1), g * hit)
                if want_h:
                    grad_h[s:s + chunk] += dz.to(weight.dtype) @ w
                if want_w:
                    gw.addmm_(dz.t(), h.float())
            if want_w:
                grad_w[v:v + rows] = gw
        return None if grad_h is None else grad_h.to(hidden.dtype), grad_w, None, None, None


def linear_target_logprobs_chunked(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                   chunk: int, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``LinearLogprob``: log p(target) and entropies of ``hidden @ weight.T``, ``chunk`` tokens at
    a time; the backward's vocabulary slices of ``rows`` (default: as many elements as a chunk's
    logits, ``chunk x V``, in the fp32 slice of the weight gradient)."""
    chunk = max(1, int(chunk))
    rows = rows or max(1, chunk * weight.shape[0] // weight.shape[1])
    return LinearLogprob.apply(hidden, weight, targets, chunk, min(int(rows), weight.shape[0]))
