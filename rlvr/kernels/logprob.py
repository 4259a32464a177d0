"""Per-token log-probabilities of the targets and the entropy of each next-token distribution:
what the learner reads from the logits (torch reference; the C kernel is ``cpu_train.TokenLogprob``).
"""

from __future__ import annotations

import torch


def token_logprobs_ref(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(input_ids[:, t+1] | ...) and the entropy of each next-token distribution, fp32.
    logits (B, L - 1, V) -> two (B, L - 1) tensors."""
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    logp = logp_all.gather(-1, input_ids[:, 1:, None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
