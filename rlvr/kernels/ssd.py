"""Mamba-2 state space duality (SSD) scan: the chunked algorithm and its token-by-token spec.

The recurrence, per head h (``A`` scalar per head, ``B``/``C`` shared by the heads of a group):

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t ⊗ B_t          # (headdim, dstate)
    y_t = h_t @ C_t + D * x_t

``ssd_scan_ref`` runs it literally, one token at a time: it is the specification, used by tests.
``ssd_chunk_scan`` is the chunked algorithm of the Mamba-2 paper (quadratic "attention" inside a
chunk, the recurrence only between chunks), all in fp32 as vLLM does it: a bf16 softplus/scan
alone is reported to cost ~0.4 KL between trainer and inference engine.

Packed sequences: ``seq_idx`` (batch, seqlen) numbers the document of each token; no state crosses
a change of ``seq_idx``. Both functions honour it, so a packed row equals its documents run alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segsum(x: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = sum_{j < k <= i} x[..., k] for i >= j, -inf above the diagonal.
    Masked cumulative sums rather than differences of cumsums: no cancellation error."""
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)  # x[..., k, j] = x_k
    below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=-1)
    x = x.masked_fill(~below, 0)
    out = torch.cumsum(x, dim=-2)
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=0)
    return out.masked_fill(~keep, -torch.inf)


def _heads(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """(..., ngroups, n) -> (..., nheads, n): every head of a group shares its B/C."""
    return t.repeat_interleave(nheads // t.shape[-2], dim=-2)


def ssd_chunk_scan(
    x: torch.Tensor,  # (batch, seqlen, nheads, headdim)
    dt: torch.Tensor,  # (batch, seqlen, nheads), after softplus and clamping
    A: torch.Tensor,  # (nheads,), negative
    B: torch.Tensor,  # (batch, seqlen, ngroups, dstate)
    C: torch.Tensor,  # (batch, seqlen, ngroups, dstate)
    D: torch.Tensor,  # (nheads,)
    chunk_size: int,
    initial_state: torch.Tensor | None = None,  # (batch, nheads, headdim, dstate)
    seq_idx: torch.Tensor | None = None,  # (batch, seqlen) int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns y (batch, seqlen, nheads, headdim) and the final state (batch, nheads, headdim,
    dstate), both fp32.

    Written as batched matmuls over (batch, chunk, group, head-in-group) so that B/C are never
    repeated per head and no einsum needs a permuted copy; the maths is the paper's."""
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    q = h // g  # heads per group
    x, dt, A, D = x.float(), dt.float(), A.float(), D.float()
    B, C = B.float(), C.float()
    pad = (-L) % chunk_size
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))  # dt = 0: padded steps neither decay nor add
        if seq_idx is not None:
            seq_idx = torch.cat([seq_idx, seq_idx[:, -1:].expand(b, pad)], dim=1)
    c, l = x.shape[1] // chunk_size, chunk_size
    # Layouts: xdt (b, c, g, q, l, p); B, C (b, c, g, 1, l, n); dA (b, c, g, q, l).
    xdt = (x * dt[..., None]).view(b, c, l, g, q, p).permute(0, 1, 3, 4, 2, 5)
    B = B.view(b, c, l, g, n).permute(0, 1, 3, 2, 4)[:, :, :, None]
    C = C.view(b, c, l, g, n).permute(0, 1, 3, 2, 4)[:, :, :, None]
    dA = (dt * A).view(b, c, l, g, q).permute(0, 1, 3, 4, 2)
    dA_cum = torch.cumsum(dA, dim=-1)
    seq = seq_idx.view(b, c, 1, 1, l) if seq_idx is not None else None

    # 1. Inside each chunk: a decayed, causal "attention" of C over B. Within one chunk the
    # cumulative sums are small, so their difference loses nothing; clamping at 0 keeps the
    # masked (s > l) entries finite so no NaN reaches the backward pass.
    causal = torch.ones(l, l, dtype=torch.bool, device=x.device).tril()
    if seq is not None:
        causal = causal & (seq[..., :, None] == seq[..., None, :])
    decay = torch.exp((dA_cum[..., :, None] - dA_cum[..., None, :]).clamp(max=0)) * causal  # (b,c,g,q,l,s)
    scores = (C @ B.transpose(-1, -2)) * decay  # (b, c, g, q, l, s)
    y = scores @ xdt  # (b, c, g, q, l, p)

    # 2. The state each chunk leaves behind, from its own tokens.
    to_end = torch.exp(dA_cum[..., -1:] - dA_cum)  # (b, c, g, q, l)
    if seq is not None:
        to_end = to_end * (seq == seq[..., -1:])
    states = (xdt * to_end[..., None]).transpose(-1, -2) @ B  # (b, c, g, q, p, n)

    # 3. Pass states between chunks: one small matmul over chunk indices.
    if initial_state is None:
        initial_state = x.new_zeros(b, h, p, n)
    states = torch.cat([initial_state.float().view(b, 1, g, q, p, n), states], dim=1)
    chunk_decay = torch.exp(segsum(F.pad(dA_cum[..., -1].permute(0, 2, 3, 1), (1, 0))))  # (b, g, q, c+1, c+1)
    if seq is not None:
        # Document current where each state is defined: at the start, then at each chunk end.
        ends = torch.cat([seq_idx[:, :1], seq_idx.view(b, c, l)[:, :, -1]], dim=1)  # (b, c+1)
        chunk_decay = chunk_decay * (ends[:, None, None, :, None] == ends[:, None, None, None, :])
    flat = states.permute(0, 2, 3, 1, 4, 5).reshape(b, g, q, c + 1, p * n)
    passed = (chunk_decay @ flat).view(b, g, q, c + 1, p, n)
    final_state = passed[:, :, :, -1].reshape(b, h, p, n)
    start_states = passed[:, :, :, :-1].permute(0, 3, 1, 2, 4, 5)  # (b, c, g, q, p, n)

    # 4. Each token reads the state its chunk started from.
    from_start = torch.exp(dA_cum)  # (b, c, g, q, l)
    if seq is not None:
        from_start = from_start * (seq == ends[:, :-1].view(b, c, 1, 1, 1))
    y = y + (C @ start_states.transpose(-1, -2)) * from_start[..., None]  # (b, c, g, q, l, p)

    y = y.permute(0, 1, 4, 2, 3, 5).reshape(b, c * l, h, p) + D[:, None] * x.reshape(b, c * l, h, p)
    return y[:, :L], final_state


def ssd_scan_ref(x, dt, A, B, C, D, chunk_size=None, initial_state=None, seq_idx=None):
    """The recurrence, token by token (same signature as ``ssd_chunk_scan``; chunk_size unused)."""
    b, L, h, p = x.shape
    x, dt, A, D = x.float(), dt.float(), A.float(), D.float()
    B, C = _heads(B.float(), h), _heads(C.float(), h)
    state = (torch.zeros(b, h, p, B.shape[-1], dtype=torch.float32, device=x.device)
             if initial_state is None else initial_state.float().clone())
    ys = []
    for t in range(L):
        if seq_idx is not None and t > 0:
            same = (seq_idx[:, t] == seq_idx[:, t - 1]).float()[:, None, None, None]
            state = state * same
        y, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def ssd_step(
    state: torch.Tensor,  # (batch, nheads, headdim, dstate) fp32
    x: torch.Tensor,  # (batch, nheads, headdim)
    dt: torch.Tensor,  # (batch, nheads)
    A: torch.Tensor,  # (nheads,)
    B: torch.Tensor,  # (batch, ngroups or nheads, dstate)
    C: torch.Tensor,  # (batch, ngroups or nheads, dstate)
    D: torch.Tensor,  # (nheads,)
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step: O(1) in the sequence length. Returns (y, new_state), fp32."""
    h = x.shape[1]
    x, dt = x.float(), dt.float()
    B, C = _heads(B.float(), h), _heads(C.float(), h)
    decay = torch.exp(dt * A.float())[..., None, None]  # (b, h, 1, 1)
    state = state * decay + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, C) + D.float()[:, None] * x
    return y, state
