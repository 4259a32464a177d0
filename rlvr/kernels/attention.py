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


# ------------------------------------------------------------ packed rows as variable-length
# On CUDA a packed micro-batch attends through flash attention's variable-length kernel
# (``torch.nn.attention.varlen.varlen_attn``): every document a sequence of its own, no (L, L)
# mask (which rules the flash kernels out, and costs L^2 memory: 8,192 tokens x 32 heads of
# Nano's is 8 GiB of booleans broadcast per layer). The same maths as ``attention_ref`` with
# ``seq_idx``; ``attention_varlen_ref`` is its torch twin for tests on CPU.


def documents(seq_idx: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cu_seqlens (docs + 1,) int32, the longest document) of packed rows: a document is a run
    of equal ``seq_idx`` within a row (rows never share one), the rows laid end to end."""
    b, L = seq_idx.shape
    starts = torch.ones_like(seq_idx, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    first = starts.reshape(-1).nonzero()[:, 0]
    cu = torch.cat([first, first.new_tensor([b * L])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def attention_varlen_ref(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, *, window_size=(-1, 0), enable_gqa=False):
    """What ``varlen_attn`` computes for causal attention (``window_size=(-1, 0)``): q (T, heads,
    head_dim), k and v (T, kv_heads, head_dim) -> (T, heads, head_dim), each document on its own."""
    if tuple(window_size) != (-1, 0) or not torch.equal(cu_seq_q, cu_seq_k):
        raise NotImplementedError("the reference covers causal self-attention only")
    out = torch.empty_like(q)
    bounds = cu_seq_q.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        qd, kd, vd = (t[s:e].transpose(0, 1)[None] for t in (q, k, v))
        out[s:e] = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=enable_gqa)[0].transpose(0, 1)
    return out


def attention_packed(q, k, v, seq_idx, varlen=None):
    """``attention_ref(q, k, v, seq_idx=seq_idx)`` of a fresh packed batch (no cache) through a
    variable-length kernel: ``varlen`` (default: torch's flash ``varlen_attn``, CUDA only)."""
    if varlen is None:
        from torch.nn.attention.varlen import varlen_attn as varlen
    b, heads, L, d = q.shape
    cu, longest = documents(seq_idx)
    tokens = [t.transpose(1, 2).reshape(b * L, t.shape[1], d) for t in (q, k, v)]
    out = varlen(*tokens, cu, cu, longest, longest, window_size=(-1, 0), enable_gqa=heads != k.shape[1])
    return out.reshape(b, L, heads, d)
