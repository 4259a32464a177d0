"""Per-token log-probabilities of the targets and the entropy of each next-token distribution:
what the learner reads from the logits (torch reference; the C kernel is ``cpu_train.TokenLogprob``).
"""

from __future__ import annotations

import torch


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
