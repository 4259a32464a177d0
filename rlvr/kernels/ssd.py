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
    dstate), both fp32."""
    b, L, h, p = x.shape
    x, dt, A, D = x.float(), dt.float(), A.float(), D.float()
    B, C = _heads(B.float(), h), _heads(C.float(), h)
    pad = (-L) % chunk_size
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))  # dt = 0: padded steps neither decay nor add
        if seq_idx is not None:
            seq_idx = torch.cat([seq_idx, seq_idx[:, -1:].expand(b, pad)], dim=1)
    c = x.shape[1] // chunk_size
    x, B, C = (t.reshape(b, c, chunk_size, *t.shape[2:]) for t in (x, B, C))
    dt = dt.reshape(b, c, chunk_size, h)
    xdt = x * dt[..., None]
    dA = (dt * A).permute(0, 3, 1, 2)  # (b, h, c, l)
    dA_cum = torch.cumsum(dA, dim=-1)

    # 1. Inside each chunk: a masked, decayed "attention" of C over B.
    L_mat = torch.exp(segsum(dA))  # (b, h, c, l, s)
    if seq_idx is not None:
        seq = seq_idx.reshape(b, c, chunk_size)
        L_mat = L_mat * (seq[:, None, :, :, None] == seq[:, None, :, None, :])
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, L_mat, xdt)

    # 2. The state each chunk leaves behind, from its own tokens.
    decay_states = torch.exp(dA_cum[..., -1:] - dA_cum)  # (b, h, c, l)
    if seq_idx is not None:
        decay_states = decay_states * (seq == seq[..., -1:])[:, None]
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, xdt)

    # 3. Pass states between chunks (the only sequential part, as a small matrix product).
    if initial_state is None:
        initial_state = torch.zeros(b, h, p, B.shape[-1], dtype=x.dtype, device=x.device)
    states = torch.cat([initial_state.float()[:, None], states], dim=1)  # (b, c+1, h, p, n)
    decay_chunk = torch.exp(segsum(F.pad(dA_cum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    if seq_idx is not None:
        # Document current where each state is defined: at the start, then at each chunk end.
        ends = torch.cat([seq[:, :1, 0], seq[:, :, -1]], dim=1)  # (b, c+1)
        decay_chunk = decay_chunk * (ends[:, None, :, None] == ends[:, None, None, :])
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = new_states[:, :-1], new_states[:, -1]

    # 4. Each token reads the state its chunk started from.
    state_decay_out = torch.exp(dA_cum)  # (b, h, c, l)
    if seq_idx is not None:
        state_decay_out = state_decay_out * (seq == ends[:, :-1, None])[:, None]
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states, state_decay_out)

    y = (y_diag + y_off).reshape(b, c * chunk_size, h, p) + D[:, None] * x.reshape(b, -1, h, p)
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
