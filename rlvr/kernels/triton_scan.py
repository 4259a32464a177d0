"""The Mamba-2 chunked SSD scan in Triton, forward and backward (the ``triton`` backend's training
path): the algorithm of ``ssd_chunk_scan`` (``ssd.py``) as four kernels, and their adjoints.

Forward, per chunk of ``Q`` tokens (``cs`` = the in-chunk cumulative sum of dt·A):

    1. chunk cumsum   cs[l] = sum_{k <= l} dt[k] A
    2. chunk states   S_c = sum_l exp(cs[Q-1] - cs[l]) dt[l] x[l] ⊗ B[l]       (what chunk c adds)
    3. state passing  start[c+1] = exp(cs_c[Q-1]) start[c] + S_c                  (sequential in c)
    4. chunk scan     y[l] = sum_{s <= l} (C[l]·B[s]) exp(cs[l] - cs[s]) dt[s] x[s]
                           + exp(cs[l]) C[l]·start[c] + D x[l]

The backward runs the same stages in reverse: the chunk scan's adjoint (dx, dB, dC, dD, d dt,
d cs, and the gradient of each chunk's start state), the state passing's (a reverse sequential
pass: the gradient of each chunk's own state and of the initial state), then the chunk states'
and the cumsum's adjoints in one kernel (d dt, dA). Packed rows (``seq_idx``) mask every term
that would cross a document, as the reference does; fp32 inside the kernels.

The chunk length is this kernel's choice (``Q`` = 64), not the model's ``chunk_size``: the
chunked algorithm is exact for any chunk length, and one (Q x Q) tile per program stays in
registers at 64. The z-gate is fused with the group RMSNorm that follows (``GatedNormTriton``),
as Mamba-2 does when the norm is on; dt's softplus and limits are elementwise torch before it.

Each program holds one (chunk, head) whole: headdim and dstate up to 128 as tiles. The adjoint
of the chunk scan keeps about ten such tiles live, more than a GPU's registers hold at dstate
128 (they spill to local memory): mamba_ssm splits these programs by headdim blocks, and so
should this once a GPU run has timed it. Offsets are 32-bit: a call whose tensors would pass 2^31
elements is refused (split the batch). Checked on this CPU under ``TRITON_INTERPRET=1`` against
``ssd_chunk_scan`` (tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

Q = 64  # tokens per chunk inside these kernels
WARPS = 8  # per (chunk, head) program: its (64 x 64) .. (64 x 128) tiles spread over 256 threads


@triton.jit
def _chunk_cumsum_fwd(dt_ptr, A_ptr, cs_ptr, nheads, Lp, Q: tl.constexpr):
    """cs[row, head, chunk tokens] = in-chunk cumsum of dt·A."""
    pid, head = tl.program_id(0), tl.program_id(1)
    row, c = pid // (Lp // Q), pid % (Lp // Q)
    t = c * Q + tl.arange(0, Q)
    dA = tl.load(dt_ptr + (row * Lp + t) * nheads + head) * tl.load(A_ptr + head)
    tl.store(cs_ptr + (row * nheads + head) * Lp + t, tl.cumsum(dA, axis=0))


@triton.jit
def _chunk_state_fwd(x_ptr, dt_ptr, cs_ptr, B_ptr, seq_ptr, st_ptr, nheads, hpg, Lp, P, N,
                     HAS_SEQ: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """S_c (P x N) = sum_l w[l] x[l] ⊗ B[l], w = dt exp(cs[Q-1] - cs) (same document as the last token)."""
    pid, head = tl.program_id(0), tl.program_id(1)
    row, c = pid // (Lp // Q), pid % (Lp // Q)
    l, p, n = tl.arange(0, Q), tl.arange(0, BP), tl.arange(0, BN)
    t = c * Q + l
    w = tl.load(dt_ptr + (row * Lp + t) * nheads + head) * _to_end(cs_ptr, seq_ptr, row, head, nheads, Lp, c, HAS_SEQ, Q)
    x = tl.load(x_ptr + ((row * Lp + t[:, None]) * nheads + head) * P + p[None, :], mask=p[None, :] < P, other=0.0)
    B = _load_bc(B_ptr, row, t, head // hpg, nheads // hpg, Lp, N, n)
    S = tl.dot(tl.trans(x * w[:, None]), B)
    tl.store(st_ptr + ((pid * nheads + head) * P + p[:, None]) * N + n[None, :], S,
             mask=(p[:, None] < P) & (n[None, :] < N))


@triton.jit
def _to_end(cs_ptr, seq_ptr, row, head, nheads, Lp, c, HAS_SEQ: tl.constexpr, Q: tl.constexpr):
    """exp(cs[Q-1] - cs[l]): what token l's input decays by until the chunk's end; zero for tokens
    of another document than the chunk's last."""
    t = c * Q + tl.arange(0, Q)
    cs = tl.load(cs_ptr + (row * nheads + head) * Lp + t)
    e = tl.exp(tl.load(cs_ptr + (row * nheads + head) * Lp + c * Q + Q - 1) - cs)
    if HAS_SEQ:
        doc = tl.load(seq_ptr + row * Lp + t)
        e = tl.where(doc == tl.load(seq_ptr + row * Lp + c * Q + Q - 1), e, 0.0)
    return e


@triton.jit
def _load_bc(ptr, row, t, group, ngroups, Lp, N, n):
    return tl.load(ptr + ((row * Lp + t[:, None]) * ngroups + group) * N + n[None, :], mask=n[None, :] < N, other=0.0)


@triton.jit
def _link(cs_ptr, seq_ptr, row, head, nheads, Lp, c, HAS_SEQ: tl.constexpr, Q: tl.constexpr):
    """The factor carrying chunk c's start state to its end: exp(cs[Q-1]), or 0 where the chunk
    ends in another document than the one its start state belongs to."""
    decay = tl.exp(tl.load(cs_ptr + (row * nheads + head) * Lp + c * Q + Q - 1))
    if HAS_SEQ:
        start_doc = tl.load(seq_ptr + row * Lp + tl.maximum(c * Q - 1, 0))
        decay = tl.where(tl.load(seq_ptr + row * Lp + c * Q + Q - 1) == start_doc, decay, 0.0)
    return decay


@triton.jit
def _state_passing_fwd(st_ptr, cs_ptr, seq_ptr, init_ptr, start_ptr, final_ptr, nheads, Lp, PN,
                       HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr, Q: tl.constexpr, BLOCK: tl.constexpr):
    """start[c] for every chunk and the final state, one block of the flattened (P x N) state."""
    bh, blk = tl.program_id(0), tl.program_id(1)
    row, head = bh // nheads, bh % nheads
    e = blk * BLOCK + tl.arange(0, BLOCK)
    m = e < PN
    S = tl.zeros((BLOCK,), dtype=tl.float32)
    if HAS_INIT:
        S = tl.load(init_ptr + bh * PN + e, mask=m, other=0.0)
    for c in range(Lp // Q):
        at = ((row * (Lp // Q) + c) * nheads + head) * PN + e
        tl.store(start_ptr + at, S, mask=m)
        S = S * _link(cs_ptr, seq_ptr, row, head, nheads, Lp, c, HAS_SEQ, Q) + tl.load(st_ptr + at, mask=m, other=0.0)
    tl.store(final_ptr + bh * PN + e, S, mask=m)


@triton.jit
def _scan_terms(x_ptr, dt_ptr, cs_ptr, B_ptr, C_ptr, seq_ptr, start_ptr, row, c, head, nheads, hpg, Lp, P, N,
                HAS_SEQ: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """What the chunk scan and its adjoint share: x (Q x P), B, C (Q x N), the start state (P x N),
    dt, cs, the masked decay exp(cs[l] - cs[s]) (Q x Q) and the start state's factor per token."""
    l, p, n = tl.arange(0, Q), tl.arange(0, BP), tl.arange(0, BN)
    t = c * Q + l
    group, ngroups = head // hpg, nheads // hpg
    x = tl.load(x_ptr + ((row * Lp + t[:, None]) * nheads + head) * P + p[None, :], mask=p[None, :] < P, other=0.0)
    B = _load_bc(B_ptr, row, t, group, ngroups, Lp, N, n)
    C = _load_bc(C_ptr, row, t, group, ngroups, Lp, N, n)
    S = tl.load(start_ptr + (((row * (Lp // Q) + c) * nheads + head) * P + p[:, None]) * N + n[None, :],
                mask=(p[:, None] < P) & (n[None, :] < N), other=0.0)
    dt = tl.load(dt_ptr + (row * Lp + t) * nheads + head)
    cs = tl.load(cs_ptr + (row * nheads + head) * Lp + t)
    keep = l[:, None] >= l[None, :]
    from_start = tl.exp(cs)
    if HAS_SEQ:
        doc = tl.load(seq_ptr + row * Lp + t)
        keep = keep & (doc[:, None] == doc[None, :])
        from_start = tl.where(doc == tl.load(seq_ptr + row * Lp + tl.maximum(c * Q - 1, 0)), from_start, 0.0)
    decay = tl.where(keep, tl.exp(tl.minimum(cs[:, None] - cs[None, :], 0.0)), 0.0)
    return x, B, C, S, dt, cs, decay, from_start


@triton.jit
def _chunk_scan_fwd(x_ptr, dt_ptr, cs_ptr, B_ptr, C_ptr, D_ptr, seq_ptr, start_ptr, y_ptr, nheads, hpg, Lp, P, N,
                    HAS_SEQ: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    pid, head = tl.program_id(0), tl.program_id(1)
    row, c = pid // (Lp // Q), pid % (Lp // Q)
    x, B, C, S, dt, cs, decay, from_start = _scan_terms(
        x_ptr, dt_ptr, cs_ptr, B_ptr, C_ptr, seq_ptr, start_ptr, row, c, head, nheads, hpg, Lp, P, N, HAS_SEQ, Q, BP, BN)
    M = tl.dot(C, tl.trans(B)) * decay * dt[None, :]
    y = tl.dot(M, x) + from_start[:, None] * tl.dot(C, tl.trans(S)) + tl.load(D_ptr + head) * x
    t, p = c * Q + tl.arange(0, Q), tl.arange(0, BP)
    tl.store(y_ptr + ((row * Lp + t[:, None]) * nheads + head) * P + p[None, :], y, mask=p[None, :] < P)


@triton.jit
def _chunk_scan_bwd(x_ptr, dt_ptr, cs_ptr, B_ptr, C_ptr, D_ptr, seq_ptr, start_ptr, dy_ptr, dx_ptr, dB_ptr, dC_ptr,
                    ddt_ptr, dcs_ptr, dD_ptr, dstart_ptr, nheads, hpg, Lp, P, N,
                    HAS_SEQ: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """The chunk scan's adjoint for one (chunk, head): dB, dC per head (summed over a group's
    heads by the caller), dD per chunk (summed by the caller), and the start state's gradient."""
    pid, head = tl.program_id(0), tl.program_id(1)
    row, c = pid // (Lp // Q), pid % (Lp // Q)
    x, B, C, S, dt, cs, decay, from_start = _scan_terms(
        x_ptr, dt_ptr, cs_ptr, B_ptr, C_ptr, seq_ptr, start_ptr, row, c, head, nheads, hpg, Lp, P, N, HAS_SEQ, Q, BP, BN)
    l, p, n = tl.arange(0, Q), tl.arange(0, BP), tl.arange(0, BN)
    t = c * Q + l
    tp = ((row * Lp + t[:, None]) * nheads + head) * P + p[None, :]
    dy = tl.load(dy_ptr + tp, mask=p[None, :] < P, other=0.0)
    D = tl.load(D_ptr + head)
    CB = tl.dot(C, tl.trans(B))
    M = CB * decay * dt[None, :]
    tl.store(dx_ptr + tp, tl.dot(tl.trans(M), dy) + D * dy, mask=p[None, :] < P)
    tl.store(dD_ptr + pid * nheads + head, tl.sum(tl.sum(dy * x, axis=1), axis=0))
    dy_s = dy * from_start[:, None]
    tl.store(dstart_ptr + ((pid * nheads + head) * P + p[:, None]) * N + n[None, :], tl.dot(tl.trans(dy_s), C),
             mask=(p[:, None] < P) & (n[None, :] < N))
    dyx = tl.dot(dy, tl.trans(x))  # (l, s)
    G = dyx * decay * dt[None, :]  # d(C·B)
    tn = ((row * Lp + t[:, None]) * nheads + head) * N + n[None, :]
    tl.store(dC_ptr + tn, tl.dot(G, B) + from_start[:, None] * tl.dot(dy, S), mask=n[None, :] < N)
    tl.store(dB_ptr + tn, tl.dot(tl.trans(G), C), mask=n[None, :] < N)
    H = dyx * M  # d(cs[l] - cs[s]), and dt[s] times d dt[s]
    tl.store(ddt_ptr + (row * Lp + t) * nheads + head, tl.sum(dyx * CB * decay, axis=0))
    from_start_term = tl.sum(dy_s * tl.dot(C, tl.trans(S)), axis=1)
    tl.store(dcs_ptr + (row * nheads + head) * Lp + t, tl.sum(H, axis=1) - tl.sum(H, axis=0) + from_start_term)


@triton.jit
def _state_passing_bwd(cs_ptr, seq_ptr, start_ptr, dstart_ptr, dfinal_ptr, dst_ptr, dinit_ptr, dlink_ptr,
                       nheads, Lp, PN, nblocks, HAS_SEQ: tl.constexpr, Q: tl.constexpr, BLOCK: tl.constexpr):
    """Reverse pass: the gradient of each chunk's own state, of the initial state, and (per block
    of the state, summed by the caller) of each chunk's link factor."""
    bh, blk = tl.program_id(0), tl.program_id(1)
    row, head = bh // nheads, bh % nheads
    e = blk * BLOCK + tl.arange(0, BLOCK)
    m = e < PN
    dS = tl.load(dfinal_ptr + bh * PN + e, mask=m, other=0.0)
    nc = Lp // Q
    for i in range(nc):
        c = nc - 1 - i
        at = ((row * nc + c) * nheads + head) * PN + e
        tl.store(dst_ptr + at, dS, mask=m)
        link = _link(cs_ptr, seq_ptr, row, head, nheads, Lp, c, HAS_SEQ, Q)
        S = tl.load(start_ptr + at, mask=m, other=0.0)
        tl.store(dlink_ptr + (bh * nc + c) * nblocks + blk, tl.sum(dS * S, axis=0) * link)  # d cs[Q-1], via exp
        dS = dS * link + tl.load(dstart_ptr + at, mask=m, other=0.0)
    tl.store(dinit_ptr + bh * PN + e, dS, mask=m)


@triton.jit
def _chunk_state_bwd(x_ptr, dt_ptr, A_ptr, cs_ptr, B_ptr, seq_ptr, dst_ptr, dlink_ptr, dx_ptr, dB_ptr, ddt_ptr,
                     dcs_ptr, dA_ptr, nheads, hpg, Lp, P, N,
                     HAS_SEQ: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """The chunk states' adjoint, added to what the scan's adjoint wrote (dx, dB, d dt, d cs),
    then the cumsum's: d dt += A · reverse-cumsum(d cs); dA per chunk (summed by the caller)."""
    pid, head = tl.program_id(0), tl.program_id(1)
    row, c = pid // (Lp // Q), pid % (Lp // Q)
    l, p, n = tl.arange(0, Q), tl.arange(0, BP), tl.arange(0, BN)
    t = c * Q + l
    td = (row * Lp + t) * nheads + head
    dt = tl.load(dt_ptr + td)
    e = _to_end(cs_ptr, seq_ptr, row, head, nheads, Lp, c, HAS_SEQ, Q)
    w = dt * e
    tp = ((row * Lp + t[:, None]) * nheads + head) * P + p[None, :]
    x = tl.load(x_ptr + tp, mask=p[None, :] < P, other=0.0)
    B = _load_bc(B_ptr, row, t, head // hpg, nheads // hpg, Lp, N, n)
    dS = tl.load(dst_ptr + ((pid * nheads + head) * P + p[:, None]) * N + n[None, :],
                 mask=(p[:, None] < P) & (n[None, :] < N), other=0.0)
    BdS = tl.dot(B, tl.trans(dS))  # (l, p)
    tl.store(dx_ptr + tp, tl.load(dx_ptr + tp, mask=p[None, :] < P, other=0.0) + w[:, None] * BdS, mask=p[None, :] < P)
    tn = ((row * Lp + t[:, None]) * nheads + head) * N + n[None, :]
    dB = tl.load(dB_ptr + tn, mask=n[None, :] < N, other=0.0) + w[:, None] * tl.dot(x, dS)
    tl.store(dB_ptr + tn, dB, mask=n[None, :] < N)
    dw = tl.sum(x * BdS, axis=1)
    ddt = tl.load(ddt_ptr + td) + dw * e
    dcs = tl.load(dcs_ptr + (row * nheads + head) * Lp + t) - dw * w
    nb = tl.load(dlink_ptr + (row * nheads + head) * (Lp // Q) + c)
    dcs += tl.where(l == Q - 1, tl.sum(dw * w, axis=0) + nb, 0.0)
    rev = tl.sum(dcs, axis=0) - tl.cumsum(dcs, axis=0) + dcs  # d(dt·A)[l] = sum_{k >= l} d cs[k]
    tl.store(ddt_ptr + td, ddt + rev * tl.load(A_ptr + head))
    tl.store(dA_ptr + pid * nheads + head, tl.sum(rev * dt, axis=0))


def _tile(d: int) -> int:
    return max(16, triton.next_power_of_2(d))  # (tl.dot wants every side >= 16)


def _launch_args(h, Lp, p, n, seq, dt):
    """The chunk kernels' shared arguments: sizes, tile shapes, and a seq_idx pointer (any tensor
    when there is none: the kernels do not read it then)."""
    tiles = dict(HAS_SEQ=seq is not None, Q=Q, BP=_tile(p), BN=_tile(n), num_warps=WARPS)
    return dict(nheads=h, Lp=Lp), tiles, (seq if seq is not None else dt)


class SSDChunkScanTriton(torch.autograd.Function):
    """``ssd_chunk_scan`` with the arguments it takes; -> (y, final state), fp32."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, initial_state, seq_idx):
        b, L, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        pad = (-L) % Q
        if max(b * (L + pad) * h * max(p, n), b * -(-L // Q) * h * p * n) >= 2 ** 31:
            # The kernels index with 32-bit offsets: past them they would read the wrong memory.
            raise ValueError(f"SSD scan of {b} rows x {L} tokens x {h} heads (headdim {p}, dstate {n}) is too large "
                             "for the Triton kernels' 32-bit offsets: split the batch")
        f32 = lambda t: t.float().contiguous()  # noqa: E731
        x, B, C = (f32(F.pad(t, (0, 0, 0, 0, 0, pad))) for t in (x, B, C))
        dt = f32(F.pad(dt, (0, 0, 0, pad)))  # dt = 0: padded steps neither decay nor add
        seq = None if seq_idx is None else torch.cat([seq_idx, seq_idx[:, -1:].expand(b, pad)], 1).contiguous()
        A, D = f32(A), f32(D)
        Lp = L + pad
        nc = Lp // Q
        dims, tiles, seq_ptr = _launch_args(h, Lp, p, n, seq, dt)
        cs = torch.empty(b, h, Lp, device=x.device)
        _chunk_cumsum_fwd[(b * nc, h)](dt, A, cs, Q=Q, **dims)
        states = torch.empty(b, nc, h, p, n, device=x.device)
        _chunk_state_fwd[(b * nc, h)](x, dt, cs, B, seq_ptr, states, hpg=h // g, P=p, N=n, **dims, **tiles)
        start, final = torch.empty_like(states), torch.empty(b, h, p, n, device=x.device)
        init = None if initial_state is None else f32(initial_state)
        block = min(1024, triton.next_power_of_2(p * n))
        _state_passing_fwd[(b * h, triton.cdiv(p * n, block))](
            states, cs, seq_ptr, init if init is not None else states, start, final, PN=p * n,
            HAS_INIT=init is not None, HAS_SEQ=seq is not None, Q=Q, BLOCK=block, **dims)
        y = torch.empty_like(x)
        _chunk_scan_fwd[(b * nc, h)](x, dt, cs, B, C, D, seq_ptr, start, y, hpg=h // g, P=p, N=n, **dims, **tiles)
        ctx.save_for_backward(x, dt, A, B, C, D, cs, start, seq)
        ctx.meta = (L, init is not None, block)
        return y[:, :L], final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, D, cs, start, seq = ctx.saved_tensors
        L, has_init, block = ctx.meta
        b, Lp, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        nc = Lp // Q
        dims, tiles, seq_ptr = _launch_args(h, Lp, p, n, seq, dt)
        dy = F.pad(dy.float(), (0, 0, 0, 0, 0, Lp - L)).contiguous()
        dfinal = torch.zeros(b, h, p, n, device=x.device) if dfinal is None else dfinal.float().contiguous()
        dx, ddt, dcs = torch.empty_like(x), torch.empty_like(dt), torch.empty_like(cs)
        dBh, dCh = (torch.empty(b, Lp, h, n, device=x.device) for _ in range(2))
        dD, dA = (torch.empty(b, nc, h, device=x.device) for _ in range(2))
        dstart = torch.empty_like(start)
        _chunk_scan_bwd[(b * nc, h)](x, dt, cs, B, C, D, seq_ptr, start, dy, dx, dBh, dCh, ddt, dcs, dD, dstart,
                                     hpg=h // g, P=p, N=n, **dims, **tiles)
        nblocks = triton.cdiv(p * n, block)
        dstates, dinit = torch.empty_like(start), torch.empty_like(dfinal)
        dlink = torch.empty(b, h, nc, nblocks, device=x.device)
        _state_passing_bwd[(b * h, nblocks)](cs, seq_ptr, start, dstart, dfinal, dstates, dinit, dlink, PN=p * n,
                                             nblocks=nblocks, HAS_SEQ=seq is not None, Q=Q, BLOCK=block, **dims)
        _chunk_state_bwd[(b * nc, h)](x, dt, A, cs, B, seq_ptr, dstates, dlink.sum(-1).contiguous(), dx, dBh, ddt,
                                      dcs, dA, hpg=h // g, P=p, N=n, **dims, **tiles)
        per_group = lambda t: t.view(b, Lp, g, h // g, n).sum(3)[:, :L]  # noqa: E731
        return (dx[:, :L], ddt[:, :L], dA.sum((0, 1)), per_group(dBh), per_group(dCh), dD.sum((0, 1)),
                dinit if has_init else None, None)


def ssd_chunk_scan_triton(x, dt, A, B, C, D, chunk_size=None, initial_state=None, seq_idx=None):
    """``ssd_chunk_scan`` (same arguments; ``chunk_size`` is the model's, these kernels chunk by
    ``Q``) -> (y (batch, seqlen, nheads, headdim), final state (batch, nheads, headdim, dstate)), fp32."""
    return SSDChunkScanTriton.apply(x, dt, A, B, C, D, initial_state, seq_idx)
