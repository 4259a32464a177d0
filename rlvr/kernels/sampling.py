"""Drawing the next token: the torch reference for ``csrc/sample_cpu.c``.

Inverse-CDF sampling with one uniform number per row: token = the first index whose cumulative
probability (at temperature T) exceeds u. Log-probabilities are of the raw model distribution
(temperature 1), which is what the learner recomputes.

The uniform numbers come from a counter-based generator: u = hash(request key, token position),
so each request has its own stream whatever else is in the batch (``counter_uniform_ref``, the
reference for ``counter_uniform_f32`` in the same C file).
"""

from __future__ import annotations

import torch


def sample_ref(logits: torch.Tensor, temperature: float, uniform: torch.Tensor, top_k: int = 0,
               top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (rows, vocab), uniform (rows,) in [0, 1) -> (tokens (rows,) int64, log p(token) fp32
    under the raw model). The draw is from the distribution at ``temperature`` restricted to the
    ``top_k`` most likely tokens (0: all) and to the smallest set whose mass reaches ``top_p``."""
    logits = logits.float()
    scaled = logits / temperature
    if top_k:
        kth = scaled.topk(min(top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, -torch.inf)
    if top_p < 1:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p (the first always stays).
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        scaled = scaled.masked_fill(drop_sorted.scatter(1, order, drop_sorted), -torch.inf)
    cdf = scaled.softmax(-1).cumsum(-1)
    tokens = torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:], right=True)[:, 0].clamp_(max=cdf.shape[1] - 1)
    return tokens, torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0]


_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2**32 for x in [0, 2**32), without leaving int64's range (no signed overflow)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' "lowbias32" integer hash: a bijection of [0, 2**32) with near-ideal avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_uniform_ref(keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """keys (rows, 2) from ``request_keys``, positions (rows,) token index -> (rows,) uniform
    float32 in [0, 1) with 24 random bits, a pure function of (key, position): a counter-based
    generator (one hash per draw, vectorised over rows; a torch.Generator per request would cost
    a Python call per row per token)."""
    h = _mix32(_mix32(_mix32(positions & _M32) ^ keys[:, 0]) ^ keys[:, 1])
    return (h >> 8).float() * 2.0**-24
