"""Drawing the next token: the torch reference for ``csrc/sample_cpu.c``.

Inverse-CDF sampling with one uniform number per row: token = the first index whose cumulative
probability (at temperature T) exceeds u. Log-probabilities are of the raw model distribution
(temperature 1), which is what the learner recomputes.
"""

from __future__ import annotations

import torch


def sample_ref(logits: torch.Tensor, temperature: float, uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (rows, vocab), uniform (rows,) in [0, 1) -> (tokens (rows,) int64, log p(token) fp32)."""
    logits = logits.float()
    cdf = (logits / temperature).softmax(-1).cumsum(-1)
    tokens = torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:], right=True)[:, 0].clamp_(max=cdf.shape[1] - 1)
    return tokens, torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0]
