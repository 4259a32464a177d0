"""The CPU training path: autograd Functions whose forward and backward are C loops
(``csrc/train_cpu.c``, ``csrc/norm_cpu.c``, ``csrc/attention_cpu.c``), with the exact arguments of
their torch references (``conv_silu_ref`` and ``gated_rms_norm`` in ``mamba.py``, ``ssd_chunk_scan``
in ``ssd.py``, ``rms_norm_ref`` in ``norm.py``, ``relu2`` in ``moe.py``, ``target_logprobs_ref`` in
``logprob.py``, ``attention_ref`` in ``attention.py``, the routed experts' token moves in
``moe_routed_ref``), and the Mamba mixer built from them
(``mamba_chunk_train``: the reference's flow with those stages, and dt's softplus and limits, in C).

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

import ctypes

import torch

from rlvr.kernels.cpu import _attn_dims, _dims, _f32, _head_major, _i64, _lib, _ptr, huge_empty, rms_norm_cpu
from rlvr.kernels.mamba import MambaDims, MambaWeights, mamba_chunk_ref
from rlvr.kernels.moe import MoEDims, MoEWeights, expert_slots, grouped_mm, route_ref

SEGMENT = 64  # tokens between the states the SSD forward keeps for its backward (SEG in train_cpu.c)


class GatedNorm(torch.autograd.Function):
    """RMSNorm of y * silu(z) per group of channels, times the weight (see ``gated_rms_norm``)."""

    @staticmethod
    def forward(ctx, y, z, weight, group_size, eps):
        yf, zf, wf = _f32(y), _f32(z), _f32(weight)
        out = torch.empty_like(yf)
        rows, dim = yf.numel() // yf.shape[-1], yf.shape[-1]
        _lib().gated_norm_fwd_f32(rows, dim, group_size, dim, yf.data_ptr(), zf.data_ptr(), wf.data_ptr(), eps,
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
        _lib().gated_norm_bwd_f32(rows, dim, group_size, dim, yf.data_ptr(), zf.data_ptr(), wf.data_ptr(), eps,
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
        _lib().ssd_scan_fwd_f32(b, L, h, p, g, n, h * p, g * n,  # (token strides of x and of B, C)
                                *map(_ptr, (xf, dtf, Af, Bf, Cf, Df, init, sf, y, final, chk)), torch.get_num_threads())
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
        gB, gC = xf.new_empty(b, L, g, n), xf.new_empty(b, L, g, n)
        ginit = xf.new_empty(b, h, p, n) if has_init else None
        _lib().ssd_scan_bwd_f32(b, L, h, p, g, n, h * p, g * n, h * p, g * n,  # (inputs' and gradients' strides)
                                *map(_ptr, (xf, dtf, Af, Bf, Cf, Df, sf, chk, gy, gfinal, gx, gdt, gA, gB, gC, gD,
                                            ginit)), torch.get_num_threads())
        grads = (gx, gdt, gA.sum(0), gB, gC, gD.sum(0))
        return (*(t.to(d) for t, d in zip(grads, dtypes)), None if ginit is None else ginit.to(init_dtype), None)


class TokenLogprob(torch.autograd.Function):
    """log p(target) of each row of logits, and its entropy (no gradient: a metric), in one pass;
    the backward is one pass more (softmax recomputed from the saved log-sum-exp). With
    ``consume``, the gradient is written over the logits themselves (each entry read, then
    overwritten): a caller that drops the logits after this call (the learner) saves a buffer of
    their size (0.27 GB for 4096 tokens x 16K vocabulary) and the page faults of filling it."""

    @staticmethod
    def forward(ctx, logits, targets, consume):
        lf, tf = _f32(logits), _i64(targets)
        rows, V = tf.numel(), lf.shape[-1]
        logp, entropy, lse = (lf.new_empty(tf.shape) for _ in range(3))
        _lib().logprob_fwd_f32(rows, V, *map(_ptr, (lf, tf, logp, entropy, lse)), torch.get_num_threads())
        ctx.save_for_backward(lf, tf, lse)
        ctx.mark_non_differentiable(entropy)
        ctx.args = (logits.dtype, consume)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        lf, tf, lse = ctx.saved_tensors
        dtype, consume = ctx.args
        grad, gl = (lf if consume else huge_empty(*lf.shape)), _f32(grad_logp)
        _lib().logprob_bwd_f32(tf.numel(), lf.shape[-1], *map(_ptr, (lf, tf, lse, gl, grad)),
                               torch.get_num_threads())
        return grad.to(dtype), None, None


class RMSNorm(torch.autograd.Function):
    """weight * x / rms(x) over the last dimension (see ``rms_norm_ref``): the inference kernel
    forward, a C backward that recomputes 1/rms from the saved input."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        ctx.save_for_backward(_f32(x), _f32(weight))
        ctx.args = (eps, x.dtype, weight.dtype)
        return rms_norm_cpu(x, weight, eps)

    @staticmethod
    def backward(ctx, grad_out):
        xf, wf = ctx.saved_tensors
        eps, dx, dw = ctx.args
        go = _f32(grad_out)
        gx, gw = huge_empty(*xf.shape), torch.empty_like(wf)
        rows, dim = xf.numel() // xf.shape[-1], xf.shape[-1]
        _lib().rms_norm_bwd_f32(rows, dim, xf.data_ptr(), wf.data_ptr(), eps, go.data_ptr(), gx.data_ptr(),
                                gw.data_ptr(), torch.get_num_threads())
        return gx.to(dx), gw.to(dw), None


class ReLU2(torch.autograd.Function):
    """relu(x)² (see ``relu2``), one C pass each way."""

    @staticmethod
    def forward(ctx, x):
        xf = _f32(x)
        out = huge_empty(*xf.shape)
        _lib().relu2_fwd_f32(xf.numel(), xf.data_ptr(), out.data_ptr(), torch.get_num_threads())
        ctx.save_for_backward(xf)
        ctx.dtype = x.dtype
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (xf,) = ctx.saved_tensors
        go, gx = _f32(grad_out), huge_empty(*xf.shape)
        _lib().relu2_bwd_f32(xf.numel(), xf.data_ptr(), go.data_ptr(), gx.data_ptr(), torch.get_num_threads())
        return gx.to(ctx.dtype)


class SlotGather(torch.autograd.Function):
    """x (tokens, dim) -> its rows in the experts' slots, x[token_of_slot] (``moe_routed_ref``'s
    index_select); the backward sums each token's slots in C (a gather by token, where
    index_select's backward fills zeros and scatters)."""

    @staticmethod
    def forward(ctx, x, token_of_slot, slot):
        ctx.save_for_backward(slot)
        ctx.dtype = x.dtype
        return x.index_select(0, token_of_slot)

    @staticmethod
    def backward(ctx, grad):
        (slot,) = ctx.saved_tensors
        (tokens, top_k), g = slot.shape, _f32(grad)
        gx = torch.empty(tokens, g.shape[1])
        _lib().moe_combine_f32(tokens, top_k, g.shape[1], g.data_ptr(), slot.data_ptr(), None, gx.data_ptr(),
                               torch.get_num_threads())
        return gx.to(ctx.dtype), None, None


class SlotCombine(torch.autograd.Function):
    """The experts' outputs y (slots, dim) back to their tokens, out[t] = sum_k weight[t, k]
    y[slot[t, k]] (``moe_routed_ref``'s weighting and index_add_), one C pass each way. fp32 out."""

    @staticmethod
    def forward(ctx, y, weight, slot):
        yf, wf = _f32(y), _f32(weight)
        (tokens, top_k), dim = slot.shape, yf.shape[1]
        out = torch.empty(tokens, dim)
        _lib().moe_combine_f32(tokens, top_k, dim, *map(_ptr, (yf, slot, wf, out)), torch.get_num_threads())
        ctx.save_for_backward(yf, wf, slot)
        ctx.dtypes = (y.dtype, weight.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        yf, wf, slot = ctx.saved_tensors
        gy, gw = torch.empty_like(yf), torch.empty_like(wf)
        _lib().moe_combine_bwd_f32(*slot.shape, yf.shape[1], *map(_ptr, (yf, slot, wf, _f32(grad_out), gy, gw)),
                                   torch.get_num_threads())
        return gy.to(ctx.dtypes[0]), gw.to(ctx.dtypes[1]), None


def moe_routed_train(x_router, x, w: MoEWeights, dims: MoEDims, chosen=None, chosen_out=None):
    """``moe_routed_ref`` with relu² and the moves between tokens and expert slots in C."""
    index, weight = route_ref(x_router, w.router, w.correction_bias, dims, chosen, chosen_out)
    order, offsets = expert_slots(index, dims.n_experts)
    slot = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel())).view(index.shape)
    h = ReLU2.apply(grouped_mm(SlotGather.apply(x, order // dims.top_k, slot), w.up.transpose(1, 2), offsets))
    return SlotCombine.apply(grouped_mm(h, w.down.transpose(1, 2), offsets), weight, slot).to(x.dtype)


class Attention(torch.autograd.Function):
    """Causal GQA attention over whole sequences (see ``attention_ref`` with ``past`` None), packed
    documents by ``seq_idx``: the inference kernel's prefill, keeping each query's log-sum-exp;
    a C backward that rebuilds the probabilities from it, per (row, kv head) so the heads sharing
    a kv head sum their key and value gradients without atomics. The gradients come back in the
    projections' layout, (b, L, heads, hd) seen as (b, heads, L, hd): no copy in their backward."""

    @staticmethod
    def forward(ctx, q, k, v, seq_idx):
        qf, kf, vf, sf = _head_major(q), _head_major(k), _head_major(v), _i64(seq_idx)
        b, nh, L, hd = qf.shape
        out, lse = torch.empty(b, L, nh, hd), torch.empty(b, nh, L)
        _lib().attention_train_fwd_f32(ctypes.byref(_attn_dims(qf, kf, vf)), b, L,
                                       *map(_ptr, (qf, kf, vf, sf, out, lse)), torch.get_num_threads())
        ctx.save_for_backward(qf, kf, vf, sf, out, lse)
        ctx.dtypes = (q.dtype, k.dtype, v.dtype)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        qf, kf, vf, sf, out, lse = ctx.saved_tensors
        b, nh, L, hd = qf.shape
        go = _f32(grad_out)
        gq, gk, gv = torch.empty(b, L, nh, hd), torch.empty(b, L, kf.shape[1], hd), torch.empty(b, L, kf.shape[1], hd)
        _lib().attention_train_bwd_f32(ctypes.byref(_attn_dims(qf, kf, vf)), b, L,
                                       *map(_ptr, (qf, kf, vf, sf, out, lse, go, gq, gk, gv)), torch.get_num_threads())
        return (*(g.transpose(1, 2).to(d) for g, d in zip((gq, gk, gv), ctx.dtypes)), None)


def attention_train(q, k, v, past=None, seq_idx=None):
    """``attention_ref`` for calls that need gradients (whole sequences: ``past`` None), in C."""
    return Attention.apply(q, k, v, seq_idx)


def relu2_train(x):
    """``relu2`` with a C forward and backward."""
    return ReLU2.apply(x)


def rms_norm_train(x, weight, eps: float):
    """``rms_norm_ref`` with a C forward and backward."""
    return RMSNorm.apply(x, weight, eps)


def target_logprobs_cpu(logits, targets, consume_logits: bool = False):
    """``target_logprobs_ref`` with a C forward and backward (``consume_logits``: see ``TokenLogprob``)."""
    return TokenLogprob.apply(logits, targets, consume_logits)


def ssd_scan_cpu(x, dt, A, B, C, D, chunk_size=None, initial_state=None, seq_idx=None):
    """``ssd_chunk_scan``'s arguments and results (chunk_size unused), C forward and backward."""
    return SSDScan.apply(x, dt, A, B, C, D, initial_state, seq_idx)


def gated_norm_cpu(y, z, weight, group_size: int, eps: float):
    """``gated_rms_norm`` with a C forward and backward."""
    return GatedNorm.apply(y, z, weight, group_size, eps)


class MambaMixer(torch.autograd.Function):
    """The whole mixer after in_proj (see ``mamba_chunk_ref``) as one Function: conv + SiLU, dt,
    the SSD scan and the gated norm in C, reading the conv's input, z and dt as column slices of
    in_proj's output and writing their gradients into one tensor of its shape. The stage-by-stage
    composition costs, per layer, a copy of each slice a kernel wants contiguous and a
    concatenation of the slices' gradients in autograd's backward of ``split`` (a tenth of a
    ``small-100m`` step); none of those happen here."""

    @staticmethod
    def forward(ctx, zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, initial_state, dims, seq_idx,
                lengths):
        zx, sf = _f32(zxbcdt), _i64(seq_idx)
        b, L, W = zx.shape
        di, cd, h, p, g, n = dims.d_inner, dims.conv_dim, dims.nheads, dims.headdim, dims.ngroups, dims.dstate
        wf, bf, Df, nwf, init = (_f32(t) for t in (conv_weight.view(cd, -1), conv_bias, D, norm_weight, initial_state))
        limits, dbf, ln = _dims(dims), _f32(dt_bias), _i64(lengths)
        dt = zx.new_empty(b, L, h)  # clamp(softplus(dt_raw + dt_bias)), zero at padding
        _lib().dt_fwd_f32(b, L, h, W, *map(_ptr, (zx[..., di + cd:], dbf)), limits.dt_min, limits.dt_max,
                          *map(_ptr, (ln, dt)), torch.get_num_threads())
        A = -torch.exp(A_log.float())
        xbc = huge_empty(b, L, cd)
        wT = wf.t().contiguous()  # (K, conv_dim): the kernels' loops over channels are contiguous
        _lib().conv_silu_fwd_f32(b, L, cd, wf.shape[-1], W, *map(_ptr, (zx[..., di:], wT, bf, sf, xbc)),
                                 torch.get_num_threads())
        y, final = huge_empty(b, L, h, p), zx.new_empty(b, h, p, n)
        chk = huge_empty(b, h, -(-L // SEGMENT), p, n)
        B, C = xbc[..., di:], xbc[..., di + g * n:]  # (column slices: token stride cd)
        _lib().ssd_scan_fwd_f32(b, L, h, p, g, n, cd, cd, *map(_ptr, (xbc, dt, A, B, C, Df, init, sf, y, final, chk)),
                                torch.get_num_threads())
        out = huge_empty(b, L, di)
        _lib().gated_norm_fwd_f32(b * L, di, dims.group_size, W, y.data_ptr(), zx.data_ptr(), nwf.data_ptr(), dims.eps,
                                  out.data_ptr(), torch.get_num_threads())
        ctx.save_for_backward(zx, wT, bf, dbf, ln, dt, A, Df, nwf, sf, chk, xbc, y)
        inputs = (zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, initial_state)
        ctx.meta = (dims, init is not None, [None if t is None else t.dtype for t in inputs])
        return out, final

    @staticmethod
    def backward(ctx, grad_out, grad_final):
        zx, wT, bf, dbf, ln, dt, A, Df, nwf, sf, chk, xbc, y = ctx.saved_tensors
        dims, has_init, dtypes = ctx.meta
        b, L, W = zx.shape
        di, cd, h, p, g, n = dims.d_inner, dims.conv_dim, dims.nheads, dims.headdim, dims.ngroups, dims.dstate
        threads = torch.get_num_threads()
        go, gfinal = _f32(grad_out), _f32(grad_final)  # (named: a converted copy must outlive the calls)
        gzx, gy, gnw = huge_empty(b, L, W), huge_empty(b, L, di), torch.empty_like(nwf)
        _lib().gated_norm_bwd_f32(b * L, di, dims.group_size, W, *map(_ptr, (y, zx, nwf)), dims.eps,
                                  *map(_ptr, (go, gy, gzx, gnw)), threads)
        gxbc, gdt = huge_empty(b, L, cd), torch.empty_like(dt)
        gA, gD = zx.new_empty(b, h), zx.new_empty(b, h)
        ginit = zx.new_empty(b, h, p, n) if has_init else None
        _lib().ssd_scan_bwd_f32(b, L, h, p, g, n, cd, cd, cd, cd, *map(_ptr, (
            xbc, dt, A, xbc[..., di:], xbc[..., di + g * n:], Df, sf, chk, gy, gfinal, gxbc, gdt, gA,
            gxbc[..., di:], gxbc[..., di + g * n:], gD, ginit)), threads)
        K = wT.shape[0]
        gw, gb = wT.new_empty(cd, K), None if bf is None else torch.empty_like(bf)
        _lib().conv_silu_bwd_f32(b, L, cd, K, W, *map(_ptr, (zx[..., di:], wT, bf, sf, gxbc, gzx[..., di:], gw, gb)),
                                 threads)
        limits, gdb = _dims(dims), torch.empty_like(dbf)
        _lib().dt_bwd_f32(b, L, h, W, *map(_ptr, (zx[..., di + cd:], dbf)), limits.dt_min, limits.dt_max,
                          *map(_ptr, (ln, gdt, gzx[..., di + cd:], gdb)), threads)
        grads = (gzx, gw.view(cd, 1, -1), gb, gdb, gA.sum(0) * A, gD.sum(0), gnw, ginit)
        return (*(None if t is None else t.to(d) for t, d in zip(grads, dtypes)), None, None, None)


def mamba_chunk_train(zxbcdt, w: MambaWeights, dims: MambaDims, conv_prev=None, initial_state=None, seq_idx=None,
                      lengths=None):
    """``mamba_chunk_ref`` for calls that need gradients, in C: the fused mixer, or (a continuation
    from ``conv_prev``: a prefill after a cached prefix, never a training step) the reference's flow
    with its SSD scan and gated norm in C."""
    if conv_prev is None:
        return MambaMixer.apply(zxbcdt, *w[:6], initial_state, dims, seq_idx, lengths)
    return mamba_chunk_ref(zxbcdt, w, dims, conv_prev, initial_state, seq_idx, lengths, ssd=ssd_scan_cpu,
                           gated_norm=gated_norm_cpu)


__all__ = ["Attention", "GatedNorm", "MambaMixer", "RMSNorm", "ReLU2", "SSDScan", "SlotCombine", "SlotGather",
           "TokenLogprob", "attention_train", "gated_norm_cpu", "mamba_chunk_train", "moe_routed_train", "relu2_train",
           "rms_norm_train", "ssd_scan_cpu", "target_logprobs_cpu"]
