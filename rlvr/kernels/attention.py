"""Causal grouped-query attention, in plain torch (SDPA): the reference for the CPU kernel
(``csrc/attention_cpu.c``) and the path autograd uses.

One convention covers every case the model meets: query ``i`` of row ``r`` sees the keys
``[start, past[r] + i]``, where ``past[r]`` counts the keys before this chunk's first query (0
for a fresh sequence; the cached length when a prefill continues or a token decodes) and
``start`` is the first token of the query's document when ``seq_idx`` packs several documents
into a row (else 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_ref(
    q: torch.Tensor,  # (batch, nheads, Lq, head_dim)
    k: torch.Tensor,  # (batch, kv_heads, keys, head_dim): keys past the last visible one are ignored
    v: torch.Tensor,  # (batch, kv_heads, keys, head_dim)
    past: torch.Tensor | None = None,  # (batch,) int; None means 0 for every row
    seq_idx: torch.Tensor | None = None,  # (batch, Lq) document of each packed token (past must be 0)
) -> torch.Tensor:
    """-> (batch, Lq, nheads, head_dim)."""
    Lq, keys = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if past is None and seq_idx is None and Lq == keys:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=Lq > 1, enable_gqa=gqa)
        return out.transpose(1, 2)
    past = torch.zeros(q.shape[0], dtype=torch.long, device=q.device) if past is None else past
    last = past[:, None] + torch.arange(Lq, device=q.device)  # (b, Lq): last visible key
    mask = torch.arange(keys, device=q.device) <= last[..., None]  # (b, Lq, keys)
    if seq_idx is not None:
        mask = mask & (seq_idx[:, :, None] == seq_idx[:, None, :keys])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], enable_gqa=gqa)
    return out.transpose(1, 2)
