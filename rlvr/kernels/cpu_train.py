"""The CPU training path: autograd Functions whose forward and backward are C loops
(``csrc/train_cpu.c``), with the exact arguments of their torch references (``conv_silu_ref``
and ``gated_rms_norm`` in ``mamba.py``, ``ssd_chunk_scan`` in ``ssd.py``), and the Mamba mixer
built from them (``mamba_chunk_train``: the reference's flow with those stages in C).

The SSD scan runs the recurrence token by token (its specification, ``ssd_scan_ref``): on a CPU
the chunked algorithm's quadratic in-chunk "attention", its masks and their gradients cost more
than the O(L) recurrence they replace on a GPU. Its backward recomputes the states of each
segment of 64 tokens from the state kept at the segment's start, then runs the adjoint back.

Each backward recomputes what it needs from the saved inputs (the conv's pre-activation, the
gated norm's h and 1/rms) rather than saving intermediates: less memory, and a recompute under
gradient checkpointing gives identical results. fp32 in the kernels; inputs of another dtype are
converted, and gradients are returned in the inputs' dtypes.
"""

from __future__ import annotations

import torch

from rlvr.kernels.cpu import _f32, _i64, _lib, _ptr
from rlvr.kernels.mamba import MambaDims, MambaWeights, conv_silu_ref, mamba_chunk_ref

SEGMENT = 64  # tokens between the states the SSD forward keeps for its backward (SEG in train_cpu.c)


class ConvSiLU(torch.autograd.Function):
    """silu(causal depthwise conv1d) over (batch, seqlen, channels), documents of packed rows kept
    apart by ``seq_idx``."""

    @staticmethod
    def forward(ctx, x, weight, bias, seq_idx):
        xf, wf, bf, sf = _f32(x), _f32(weight), _f32(bias), _i64(seq_idx)
        b, L, ch = xf.shape
        out = torch.empty_like(xf)
        _lib().conv_silu_fwd_f32(b, L, ch, wf.shape[-1], xf.data_ptr(), wf.data_ptr(), _ptr(bf), _ptr(sf),
                                 out.data_ptr(), torch.get_num_threads())
        ctx.save_for_backward(xf, wf, bf, sf)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xf, wf, bf, sf = ctx.saved_tensors
        b, L, ch = xf.shape
        go = _f32(grad_out)
        gx, gw = torch.empty_like(xf), torch.empty_like(wf)
        gb = None if bf is None else torch.empty_like(bf)
        _lib().conv_silu_bwd_f32(b, L, ch, wf.shape[-1], xf.data_ptr(), wf.data_ptr(), _ptr(bf), _ptr(sf),
                                 go.data_ptr(), gx.data_ptr(), gw.data_ptr(), _ptr(gb), torch.get_num_threads())
        dx, dw, db = ctx.dtypes
        return gx.to(dx), gw.to(dw), None if gb is None else gb.to(db), None


class GatedNorm(torch.autograd.Function):
    """RMSNorm of y * silu(z) per group of channels, times the weight (see ``gated_rms_norm``)."""

    @staticmethod
    def forward(ctx, y, z, weight, group_size, eps):
        yf, zf, wf = _f32(y), _f32(z), _f32(weight)
        out = torch.empty_like(yf)
        rows, dim = yf.numel() // yf.shape[-1], yf.shape[-1]
        _lib().gated_norm_fwd_f32(rows, dim, group_size, yf.data_ptr(), zf.data_ptr(), wf.data_ptr(), eps,
                                  out.data_ptr(), torch.get_num_threads())
        ctx.save_for_backward(yf, zf, wf)
        ctx.args = (group_size, eps, y.dtype, z.dtype, weight.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        yf, zf, wf = ctx.saved_tensors
        group_size, eps, dy, dz, dw = ctx.args
        go = _f32(grad_out)
        gy, gz, gw = torch.empty_like(yf), torch.empty_like(zf), torch.empty_like(wf)
        rows, dim = yf.numel() // yf.shape[-1], yf.shape[-1]
        _lib().gated_norm_bwd_f32(rows, dim, group_size, yf.data_ptr(), zf.data_ptr(), wf.data_ptr(), eps,
                                  go.data_ptr(), gy.data_ptr(), gz.data_ptr(), gw.data_ptr(), torch.get_num_threads())
        return gy.to(dy), gz.to(dz), gw.to(dw), None, None


class SSDScan(torch.autograd.Function):
    """The SSD recurrence (see ``ssd_scan_ref``), token by token in C: O(L) work per state entry,
    no quadratic chunk "attention" to build and differentiate."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, initial_state, seq_idx):
        xf, dtf, Af, Bf, Cf, Df = (_f32(t) for t in (x, dt, A, B, C, D))
        init, sf = _f32(initial_state), _i64(seq_idx)
        b, L, h, p = xf.shape
        g, n = Bf.shape[2], Bf.shape[3]
        y, final = torch.empty_like(xf), xf.new_empty(b, h, p, n)
        chk = xf.new_empty(b, h, -(-L // SEGMENT), p, n)
        _lib().ssd_scan_fwd_f32(b, L, h, p, g, n, *map(_ptr, (xf, dtf, Af, Bf, Cf, Df, init, sf, y, final, chk)),
                                torch.get_num_threads())
        ctx.save_for_backward(xf, dtf, Af, Bf, Cf, Df, sf, chk)
        ctx.meta = (initial_state is not None, [t.dtype for t in (x, dt, A, B, C, D)],
                    None if initial_state is None else initial_state.dtype)
        return y, final

    @staticmethod
    def backward(ctx, grad_y, grad_final):
        xf, dtf, Af, Bf, Cf, Df, sf, chk = ctx.saved_tensors
        has_init, dtypes, init_dtype = ctx.meta
        b, L, h, p = xf.shape
        g, n = Bf.shape[2], Bf.shape[3]
        gy = _f32(grad_y) if grad_y is not None else torch.zeros_like(xf)
        gfinal = _f32(grad_final)
        gx, gdt = torch.empty_like(xf), torch.empty_like(dtf)
        gA, gD = xf.new_empty(b, h), xf.new_empty(b, h)
        gB, gC = xf.new_empty(b, L, h, n), xf.new_empty(b, L, h, n)
        ginit = xf.new_empty(b, h, p, n) if has_init else None
        _lib().ssd_scan_bwd_f32(b, L, h, p, g, n, *map(_ptr, (xf, dtf, Af, Bf, Cf, Df, sf, chk, gy, gfinal, gx, gdt, gA,
                                                              gB, gC, gD, ginit)), torch.get_num_threads())
        per_group = (b, L, g, h // g, n)  # B and C are shared by the heads of a group
        grads = (gx, gdt, gA.sum(0), gB.view(per_group).sum(3), gC.view(per_group).sum(3), gD.sum(0))
        return (*(t.to(d) for t, d in zip(grads, dtypes)), None if ginit is None else ginit.to(init_dtype), None)


class TokenLogprob(torch.autograd.Function):
    """log p(target) of each row of logits, and its entropy (no gradient: a metric), in one pass;
    the backward is one pass more (softmax recomputed from the saved log-sum-exp)."""

    @staticmethod
    def forward(ctx, logits, targets):
        lf, tf = _f32(logits), _i64(targets)
        rows, V = tf.numel(), lf.shape[-1]
        logp, entropy, lse = (lf.new_empty(tf.shape) for _ in range(3))
        _lib().logprob_fwd_f32(rows, V, *map(_ptr, (lf, tf, logp, entropy, lse)), torch.get_num_threads())
        ctx.save_for_backward(lf, tf, lse)
        ctx.mark_non_differentiable(entropy)
        ctx.dtype = logits.dtype
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        lf, tf, lse = ctx.saved_tensors
        grad = torch.empty_like(lf)
        _lib().logprob_bwd_f32(tf.numel(), lf.shape[-1], *map(_ptr, (lf, tf, lse, _f32(grad_logp), grad)),
                               torch.get_num_threads())
        return grad.to(ctx.dtype), None


def token_logprobs_cpu(logits, input_ids):
    """``token_logprobs_ref`` with a C forward and backward."""
    return TokenLogprob.apply(logits, input_ids[:, 1:])


def ssd_scan_cpu(x, dt, A, B, C, D, chunk_size=None, initial_state=None, seq_idx=None):
    """``ssd_chunk_scan``'s arguments and results (chunk_size unused), C forward and backward."""
    return SSDScan.apply(x, dt, A, B, C, D, initial_state, seq_idx)


def conv_silu_cpu(xBC, weight, bias, conv_prev=None, seq_idx=None):
    """``conv_silu_ref`` with a C forward and backward (a continuation from ``conv_prev`` takes the
    reference: training never passes one)."""
    if conv_prev is not None:
        return conv_silu_ref(xBC, weight, bias, conv_prev, seq_idx)
    return ConvSiLU.apply(xBC, weight, bias, seq_idx)


def gated_norm_cpu(y, z, weight, group_size: int, eps: float):
    """``gated_rms_norm`` with a C forward and backward."""
    return GatedNorm.apply(y, z, weight, group_size, eps)


def mamba_chunk_train(zxbcdt, w: MambaWeights, dims: MambaDims, conv_prev=None, initial_state=None, seq_idx=None,
                      lengths=None):
    """``mamba_chunk_ref`` for calls that need gradients: its conv, SSD scan and gated norm in C
    (dt's softplus, a few elementwise ops on (batch, seqlen, nheads), stays in torch)."""
    return mamba_chunk_ref(zxbcdt, w, dims, conv_prev, initial_state, seq_idx, lengths,
                           conv_silu=conv_silu_cpu, ssd=ssd_scan_cpu, gated_norm=gated_norm_cpu)


__all__ = ["ConvSiLU", "GatedNorm", "SSDScan", "TokenLogprob", "conv_silu_cpu", "gated_norm_cpu", "mamba_chunk_train",
           "ssd_scan_cpu", "token_logprobs_cpu"]
