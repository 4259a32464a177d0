"""Triton kernels for the Mamba-2 mixer on GPUs (the ``triton`` backend). So far the decode step
(the causal-conv state update (+ SiLU) and the selective state update of the SSD recurrence) and
the causal conv (+ SiLU) over a sequence, forward; the chunked scan's forward and backward, and
the conv's backward, are still to come.

References: ``mamba_step_ref`` (``mamba.py``) and ``ssd_step`` (``ssd.py``). Inputs may be bf16
or fp32; everything inside a kernel is fp32 and the states stay fp32, as in the reference.
On a machine without a GPU the kernels run under ``TRITON_INTERPRET=1`` (tests, fp32 only: the
interpreter computes bf16 wrongly).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rlvr.kernels.mamba import MambaDims, MambaWeights, gated_rms_norm, split_zxbcdt


@triton.jit
def _conv_update_kernel(state_ptr, x_ptr, w_ptr, bias_ptr, out_ptr, channels, K: tl.constexpr,
                        HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """One token through the depthwise conv of one row: window = [state (K-1 rows), x]; out =
    silu(sum_k window[k] * w[:, k] + bias); the state shifts by one (in place)."""
    row = tl.program_id(0)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = c < channels
    x = tl.load(x_ptr + row * channels + c, mask=m, other=0.0).to(tl.float32)
    acc = tl.load(w_ptr + c * K + (K - 1), mask=m, other=0.0).to(tl.float32) * x
    base = state_ptr + row * (K - 1) * channels
    for k in tl.static_range(K - 1):
        s = tl.load(base + k * channels + c, mask=m, other=0.0)
        acc += tl.load(w_ptr + c * K + k, mask=m, other=0.0).to(tl.float32) * s
        if k > 0:  # shift: state[k - 1] <- state[k]
            tl.store(base + (k - 1) * channels + c, s, mask=m)
    tl.store(base + (K - 2) * channels + c, x, mask=m)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * channels + c, acc / (1.0 + tl.exp(-acc)), mask=m)


@triton.jit
def _state_update_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr, nheads, headdim, dstate,
                         heads_per_group, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """h = exp(dt A) h + dt x (x) B;  y = h C + D x, for one (row, head) and a block of headdim."""
    bh = tl.program_id(0)
    row, head = bh // nheads, bh % nheads
    group = head // heads_per_group
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    mp, mn = p < headdim, n < dstate
    x = tl.load(x_ptr + bh * headdim + p, mask=mp, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + bh).to(tl.float32)
    da = tl.exp(dt * tl.load(A_ptr + head).to(tl.float32))
    groups = nheads // heads_per_group
    Bv = tl.load(B_ptr + (row * groups + group) * dstate + n, mask=mn, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + (row * groups + group) * dstate + n, mask=mn, other=0.0).to(tl.float32)
    offs = bh * headdim * dstate + p[:, None] * dstate + n[None, :]
    mask = mp[:, None] & mn[None, :]
    h = tl.load(state_ptr + offs, mask=mask, other=0.0)
    h = da * h + (dt * x)[:, None] * Bv[None, :]
    tl.store(state_ptr + offs, h, mask=mask)
    y = tl.sum(h * Cv[None, :], axis=1) + tl.load(D_ptr + head).to(tl.float32) * x
    tl.store(y_ptr + bh * headdim + p, y, mask=mp)


@triton.jit
def _conv_silu_kernel(x_ptr, w_ptr, bias_ptr, seq_ptr, out_ptr, L, channels, stride_b, stride_t,
                      K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, BLOCK_T: tl.constexpr,
                      BLOCK_C: tl.constexpr):
    """silu(causal depthwise conv) for a (tokens, channels) tile of one row; inputs from another
    document of a packed row (``seq_idx``) are left out of each window."""
    row = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mt, mc = t < L, c < channels
    acc = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=mc, other=0.0).to(tl.float32)[None, :]
    if HAS_SEQ:
        doc = tl.load(seq_ptr + row * L + t, mask=mt, other=-1)
    for k in tl.static_range(K):
        s = t - (K - 1) + k
        ok = mt & (s >= 0)
        if HAS_SEQ:
            ok = ok & (tl.load(seq_ptr + row * L + s, mask=ok, other=-2) == doc)
        xs = tl.load(x_ptr + row * stride_b + s[:, None] * stride_t + c[None, :], mask=ok[:, None] & mc[None, :],
                     other=0.0).to(tl.float32)
        acc += xs * tl.load(w_ptr + c * K + k, mask=mc, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + (row * L + t[:, None]) * channels + c[None, :], acc / (1.0 + tl.exp(-acc)),
             mask=mt[:, None] & mc[None, :])


def conv_silu_triton(xBC: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv_prev=None,
                     seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """``conv_silu_ref`` (no gradient; a continuation from ``conv_prev`` takes the reference) ->
    (batch, seqlen, channels) fp32. ``xBC`` may be a strided slice (channels contiguous)."""
    from rlvr.kernels.mamba import conv_silu_ref

    if conv_prev is not None or xBC.stride(-1) != 1:
        return conv_silu_ref(xBC, weight, bias, conv_prev, seq_idx)
    b, L, channels = xBC.shape
    out = torch.empty(b, L, channels, dtype=torch.float32, device=xBC.device)
    seq = seq_idx.contiguous() if seq_idx is not None else out
    block_t, block_c = 16, 64
    _conv_silu_kernel[(b, triton.cdiv(L, block_t), triton.cdiv(channels, block_c))](
        xBC, weight.contiguous(), bias if bias is not None else weight, seq, out, L, channels, xBC.stride(0),
        xBC.stride(1), K=weight.shape[-1], HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None,
        BLOCK_T=block_t, BLOCK_C=block_c)
    return out


def conv_update_triton(conv_state: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
    """conv_state (batch, kernel - 1, channels) fp32, updated in place; x (batch, channels);
    weight (channels, kernel) -> silu(conv) (batch, channels) fp32."""
    b, channels = x.shape
    out = torch.empty(b, channels, dtype=torch.float32, device=x.device)
    block = 128
    _conv_update_kernel[(b, triton.cdiv(channels, block))](
        conv_state, x.contiguous(), weight.contiguous(), bias if bias is not None else weight, out, channels,
        K=weight.shape[-1], HAS_BIAS=bias is not None, BLOCK=block)
    return out


def state_update_triton(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                        C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """``ssd_step`` with the state (batch, nheads, headdim, dstate) fp32 updated in place -> y."""
    b, h, p = x.shape
    g, n = B.shape[1], B.shape[2]
    y = torch.empty(b, h, p, dtype=torch.float32, device=x.device)
    block_p = min(64, triton.next_power_of_2(p))
    _state_update_kernel[(b * h, triton.cdiv(p, block_p))](
        state, x.contiguous(), dt.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(), D.contiguous(), y,
        h, p, n, h // g, BLOCK_P=block_p, BLOCK_N=triton.next_power_of_2(n))
    return y


def mamba_step_triton(zxbcdt, w: MambaWeights, dims: MambaDims, conv_state, ssm_state):
    """``mamba_step_ref`` with the conv and state updates in Triton (states updated in place)."""
    from rlvr.kernels.mamba import _xBC_sizes, softplus_dt

    b = zxbcdt.shape[0]
    z, xBC, dt = split_zxbcdt(zxbcdt, dims)
    xBC = conv_update_triton(conv_state, xBC, w.conv_weight[:, 0], w.conv_bias)
    x, B, C = xBC.split(_xBC_sizes(dims), dim=-1)
    y = state_update_triton(ssm_state, x.reshape(b, dims.nheads, dims.headdim), softplus_dt(dt, w.dt_bias, dims),
                            -torch.exp(w.A_log.float()), B.reshape(b, dims.ngroups, dims.dstate),
                            C.reshape(b, dims.ngroups, dims.dstate), w.D)
    y = gated_rms_norm(y.reshape(b, dims.d_inner), z, w.norm_weight, dims.group_size, dims.eps)
    return y, conv_state, ssm_state
