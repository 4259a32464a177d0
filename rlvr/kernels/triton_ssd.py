"""Triton kernels for the Mamba-2 mixer on GPUs (the ``triton`` backend), except the chunked scan
(``triton_scan.py``): the causal conv (+ SiLU) over a sequence, forward and backward; the gated
RMSNorm (the z-gate fused in), forward and backward; the decode step's conv state update and
selective state update; and ``mamba_chunk_triton``, the mixer with every stage in Triton.

References: ``conv_silu_ref``, ``gated_rms_norm`` and ``mamba_step_ref`` (``mamba.py``),
``ssd_step`` (``ssd.py``). Inputs may be bf16 or fp32; everything inside a kernel is fp32 and the
states stay fp32, as in the reference. On a machine without a GPU the kernels run under
``TRITON_INTERPRET=1`` (tests, fp32 only: the interpreter computes bf16 wrongly).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rlvr.kernels.mamba import MambaDims, MambaWeights, mamba_chunk_ref, split_zxbcdt


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
def _conv_tap(x_ptr, seq_ptr, row, t, c, doc, k, L, channels, stride_b, stride_t, K: tl.constexpr,
              HAS_SEQ: tl.constexpr):
    """Tap k of the causal window for a (tokens, channels) tile: x[t - (K-1) + k], zero before the
    row starts or where that input belongs to another document than token t (``doc``)."""
    s = t - (K - 1) + k
    ok = (t < L) & (s >= 0)
    if HAS_SEQ:
        ok = ok & (tl.load(seq_ptr + row * L + s, mask=ok, other=-2) == doc)
    return tl.load(x_ptr + row * stride_b + s[:, None] * stride_t + c[None, :],
                   mask=ok[:, None] & (c < channels)[None, :], other=0.0).to(tl.float32)


@triton.jit
def _conv_pre(x_ptr, w_ptr, bias_ptr, seq_ptr, row, t, c, L, channels, stride_b, stride_t, K: tl.constexpr,
              HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """The conv before SiLU for a tile, and each token's document (its own index without seq_idx)."""
    mc = c < channels
    acc = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=mc, other=0.0).to(tl.float32)[None, :]
    doc = t
    if HAS_SEQ:
        doc = tl.load(seq_ptr + row * L + t, mask=t < L, other=-1)
    for k in tl.static_range(K):
        xs = _conv_tap(x_ptr, seq_ptr, row, t, c, doc, k, L, channels, stride_b, stride_t, K, HAS_SEQ)
        acc += xs * tl.load(w_ptr + c * K + k, mask=mc, other=0.0).to(tl.float32)[None, :]
    return acc, doc


@triton.jit
def _conv_silu_kernel(x_ptr, w_ptr, bias_ptr, seq_ptr, out_ptr, L, channels, stride_b, stride_t,
                      K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, BLOCK_T: tl.constexpr,
                      BLOCK_C: tl.constexpr):
    """silu(causal depthwise conv) for a (tokens, channels) tile of one row; inputs from another
    document of a packed row (``seq_idx``) are left out of each window."""
    row = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    acc, _ = _conv_pre(x_ptr, w_ptr, bias_ptr, seq_ptr, row, t, c, L, channels, stride_b, stride_t, K, HAS_BIAS,
                       HAS_SEQ, BLOCK_T, BLOCK_C)
    tl.store(out_ptr + (row * L + t[:, None]) * channels + c[None, :], acc / (1.0 + tl.exp(-acc)),
             mask=(t < L)[:, None] & (c < channels)[None, :])


@triton.jit
def _conv_silu_bwd_kernel(x_ptr, w_ptr, bias_ptr, seq_ptr, go_ptr, g_ptr, dw_ptr, db_ptr, L, channels, stride_b,
                          stride_t, K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr,
                          BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """For a (tokens, channels) tile: g = grad_out · silu'(conv) (the conv recomputed), stored for
    the input's gradient; this tile's share of the weight's and bias's gradients."""
    row, tb = tl.program_id(0), tl.program_id(1)
    t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = c < channels
    acc, doc = _conv_pre(x_ptr, w_ptr, bias_ptr, seq_ptr, row, t, c, L, channels, stride_b, stride_t, K, HAS_BIAS,
                         HAS_SEQ, BLOCK_T, BLOCK_C)
    sig = 1.0 / (1.0 + tl.exp(-acc))
    tile = (t < L)[:, None] & mc[None, :]
    go = tl.load(go_ptr + (row * L + t[:, None]) * channels + c[None, :], mask=tile, other=0.0)
    g = go * sig * (1.0 + acc * (1.0 - sig))
    tl.store(g_ptr + (row * L + t[:, None]) * channels + c[None, :], g, mask=tile)
    part = row * tl.num_programs(1) + tb
    for k in tl.static_range(K):  # dw[c, k] = sum_t g[t] x[t - (K-1) + k] (same document)
        xs = _conv_tap(x_ptr, seq_ptr, row, t, c, doc, k, L, channels, stride_b, stride_t, K, HAS_SEQ)
        tl.store(dw_ptr + (part * channels + c) * K + k, tl.sum(g * xs, axis=0), mask=mc)
    tl.store(db_ptr + part * channels + c, tl.sum(g, axis=0), mask=mc)


@triton.jit
def _conv_input_grad_kernel(g_ptr, w_ptr, seq_ptr, dx_ptr, L, channels, K: tl.constexpr, HAS_SEQ: tl.constexpr,
                            BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """dx[s] = sum_k g[s + (K-1) - k] w[k], over the outputs s feeds (same document)."""
    row = tl.program_id(0)
    s = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    ms, mc = s < L, c < channels
    if HAS_SEQ:
        doc = tl.load(seq_ptr + row * L + s, mask=ms, other=-1)
    acc = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    for k in tl.static_range(K):
        t = s + (K - 1) - k
        ok = ms & (t < L)
        if HAS_SEQ:
            ok = ok & (tl.load(seq_ptr + row * L + t, mask=ok, other=-2) == doc)
        g = tl.load(g_ptr + (row * L + t[:, None]) * channels + c[None, :], mask=ok[:, None] & mc[None, :], other=0.0)
        acc += g * tl.load(w_ptr + c * K + k, mask=mc, other=0.0).to(tl.float32)[None, :]
    tl.store(dx_ptr + (row * L + s[:, None]) * channels + c[None, :], acc, mask=ms[:, None] & mc[None, :])


class ConvSiLUTriton(torch.autograd.Function):
    """silu(causal depthwise conv1d) over (batch, seqlen, channels) with its backward in Triton;
    ``seq_idx`` keeps the documents of packed rows apart."""

    @staticmethod
    def forward(ctx, x, weight, bias, seq_idx):
        b, L, channels = x.shape
        out = torch.empty(b, L, channels, dtype=torch.float32, device=x.device)
        grid, meta = _conv_launch(x, weight, bias, seq_idx)
        _conv_silu_kernel[grid](x, weight.contiguous(), bias if bias is not None else weight,
                                seq_idx.contiguous() if seq_idx is not None else out, out, L, channels,
                                x.stride(0), x.stride(1), **meta)
        ctx.save_for_backward(x, weight, bias, seq_idx)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, seq_idx = ctx.saved_tensors
        b, L, channels = x.shape
        grid, meta = _conv_launch(x, weight, bias, seq_idx)
        K, parts = weight.shape[-1], b * grid[1]
        g = torch.empty(b, L, channels, dtype=torch.float32, device=x.device)
        dw = torch.empty(parts, channels, K, dtype=torch.float32, device=x.device)
        db = torch.empty(parts, channels, dtype=torch.float32, device=x.device)
        seq = seq_idx.contiguous() if seq_idx is not None else g
        _conv_silu_bwd_kernel[grid](x, weight.contiguous(), bias if bias is not None else weight, seq,
                                    grad_out.float().contiguous(), g, dw, db, L, channels, x.stride(0), x.stride(1),
                                    **meta)
        dx = torch.empty_like(g)
        _conv_input_grad_kernel[grid](g, weight.contiguous(), seq, dx, L, channels, K=K, HAS_SEQ=seq_idx is not None,
                                      BLOCK_T=meta["BLOCK_T"], BLOCK_C=meta["BLOCK_C"])
        return (dx.to(x.dtype), dw.sum(0).to(weight.dtype),
                None if bias is None else db.sum(0).to(bias.dtype), None)


def _conv_launch(x, weight, bias, seq_idx):
    block_t, block_c = 16, 64
    grid = (x.shape[0], triton.cdiv(x.shape[1], block_t), triton.cdiv(x.shape[2], block_c))
    return grid, dict(K=weight.shape[-1], HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None,
                      BLOCK_T=block_t, BLOCK_C=block_c)


def conv_silu_triton(xBC: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv_prev=None,
                     seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """``conv_silu_ref`` with forward and backward in Triton (a continuation from ``conv_prev``,
    prefill after a cached prefix, takes the reference) -> (batch, seqlen, channels) fp32. ``xBC``
    may be a strided slice (channels contiguous), as the mixer passes it."""
    from rlvr.kernels.mamba import conv_silu_ref

    if conv_prev is not None or xBC.stride(-1) != 1:
        return conv_silu_ref(xBC, weight, bias, conv_prev, seq_idx)
    return ConvSiLUTriton.apply(xBC, weight, bias, seq_idx)


@triton.jit
def _gated_norm_fwd_kernel(y_ptr, z_ptr, w_ptr, out_ptr, rstd_ptr, dim, group_size, eps, BLOCK: tl.constexpr):
    """out = w · h / rms(h) with h = y · silu(z), over one group of one row."""
    row, grp = tl.program_id(0), tl.program_id(1)
    c = grp * group_size + tl.arange(0, BLOCK)
    m = tl.arange(0, BLOCK) < group_size
    y = tl.load(y_ptr + row * dim + c, mask=m, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + row * dim + c, mask=m, other=0.0).to(tl.float32)
    h = y * z / (1.0 + tl.exp(-z))
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / group_size + eps)
    tl.store(rstd_ptr + row * (dim // group_size) + grp, rstd)
    tl.store(out_ptr + row * dim + c, tl.load(w_ptr + c, mask=m, other=0.0).to(tl.float32) * h * rstd, mask=m)


@triton.jit
def _gated_norm_bwd_kernel(y_ptr, z_ptr, w_ptr, rstd_ptr, go_ptr, dy_ptr, dz_ptr, dw_ptr, dim, group_size,
                           BLOCK: tl.constexpr):
    """dh = rstd (go w - n · mean(go w n)) with n = h rstd; then through h = y silu(z). The
    weight's gradient go · n per row (summed over rows by the caller)."""
    row, grp = tl.program_id(0), tl.program_id(1)
    c = grp * group_size + tl.arange(0, BLOCK)
    m = tl.arange(0, BLOCK) < group_size
    y = tl.load(y_ptr + row * dim + c, mask=m, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + row * dim + c, mask=m, other=0.0).to(tl.float32)
    sig = 1.0 / (1.0 + tl.exp(-z))
    rstd = tl.load(rstd_ptr + row * (dim // group_size) + grp)
    normed = y * z * sig * rstd
    go = tl.load(go_ptr + row * dim + c, mask=m, other=0.0)
    gw = go * tl.load(w_ptr + c, mask=m, other=0.0).to(tl.float32)
    dh = rstd * (gw - normed * tl.sum(gw * normed, axis=0) / group_size)
    tl.store(dy_ptr + row * dim + c, dh * z * sig, mask=m)
    tl.store(dz_ptr + row * dim + c, dh * y * sig * (1.0 + z * (1.0 - sig)), mask=m)
    tl.store(dw_ptr + row * dim + c, go * normed, mask=m)


class GatedNormTriton(torch.autograd.Function):
    """``gated_rms_norm``: the z-gate and the group RMSNorm in one kernel, forward and backward."""

    @staticmethod
    def forward(ctx, y, z, weight, group_size, eps):
        dim = y.shape[-1]
        y2, z2 = y.reshape(-1, dim).contiguous(), z.reshape(-1, dim).contiguous()
        rows = y2.shape[0]
        out = torch.empty(rows, dim, dtype=torch.float32, device=y.device)
        rstd = torch.empty(rows, dim // group_size, dtype=torch.float32, device=y.device)
        block = triton.next_power_of_2(group_size)
        _gated_norm_fwd_kernel[(rows, dim // group_size)](y2, z2, weight.contiguous(), out, rstd, dim, group_size,
                                                          eps, BLOCK=block)
        ctx.save_for_backward(y2, z2, weight, rstd)
        ctx.meta = (group_size, block, y.shape, y.dtype, z.dtype)
        return out.view(*y.shape)

    @staticmethod
    def backward(ctx, grad_out):
        y2, z2, weight, rstd = ctx.saved_tensors
        group_size, block, shape, y_dtype, z_dtype = ctx.meta
        rows, dim = y2.shape
        dy, dz, dw = (torch.empty(rows, dim, dtype=torch.float32, device=y2.device) for _ in range(3))
        _gated_norm_bwd_kernel[(rows, dim // group_size)](y2, z2, weight.contiguous(), rstd,
                                                          grad_out.reshape(rows, dim).float().contiguous(), dy, dz,
                                                          dw, dim, group_size, BLOCK=block)
        return (dy.view(shape).to(y_dtype), dz.view(shape).to(z_dtype), dw.sum(0).to(weight.dtype), None, None)


def gated_norm_triton(y, z, weight, group_size: int, eps: float) -> torch.Tensor:
    """``gated_rms_norm`` (same arguments) -> fp32."""
    return GatedNormTriton.apply(y, z, weight, group_size, eps)


def mamba_chunk_triton(zxbcdt, w: MambaWeights, dims: MambaDims, conv_prev=None, initial_state=None,
                       seq_idx=None, lengths=None):
    """``mamba_chunk_ref`` with every stage in Triton (forward and backward): conv + SiLU, the
    chunked SSD scan (``triton_scan.py``), the gated norm."""
    from rlvr.kernels.triton_scan import ssd_chunk_scan_triton

    if zxbcdt.numel() >= 2 ** 31:  # (the kernels index with 32-bit offsets)
        raise ValueError(f"Mamba mixer input {tuple(zxbcdt.shape)} is too large for the Triton kernels' 32-bit "
                         "offsets: split the batch")
    return mamba_chunk_ref(zxbcdt, w, dims, conv_prev, initial_state, seq_idx, lengths, conv_silu=conv_silu_triton,
                           ssd=ssd_chunk_scan_triton, gated_norm=gated_norm_triton)


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
    y = gated_norm_triton(y.reshape(b, dims.d_inner), z, w.norm_weight, dims.group_size, dims.eps)
    return y, conv_state, ssm_state
