"""The Mamba-2 mixer between in_proj and out_proj, in plain torch: the reference every fused
kernel (``rlvr/kernels/cpu.py``, later Triton) is checked against, and the path autograd uses.

    zxbcdt = in_proj(hidden)                       # (batch, seqlen, d_inner + conv_dim + nheads)
    z, xBC, dt = split(zxbcdt)
    xBC = silu(causal_conv1d(xBC))                 # depthwise, kernel K, per channel
    x, B, C = split(xBC)
    dt = clamp(softplus(dt + dt_bias), time_step_limit)
    y = SSD(x, dt, A = -exp(A_log), B, C, D)       # rlvr/kernels/ssd.py
    out = out_proj(rmsnorm_per_group(y * silu(z)) * norm_weight)

``mamba_chunk_ref`` runs a sequence (training forward, prefill), ``mamba_step_ref`` one decode
token; the fused kernels take the same arguments. Everything after in_proj is fp32 (softplus,
scan, norm), as vLLM computes it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rlvr.kernels.ssd import ssd_chunk_scan, ssd_step


@dataclasses.dataclass(frozen=True)
class MambaDims:
    d_inner: int  # nheads * headdim
    nheads: int
    headdim: int
    ngroups: int
    dstate: int
    kernel: int  # conv width
    chunk_size: int
    eps: float  # gated RMSNorm epsilon
    dt_limit: tuple[float, float]

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.ngroups * self.dstate

    @property
    def group_size(self) -> int:
        return self.d_inner // self.ngroups


class MambaWeights(NamedTuple):
    conv_weight: torch.Tensor  # (conv_dim, 1, kernel), as nn.Conv1d holds it
    conv_bias: torch.Tensor | None  # (conv_dim,)
    dt_bias: torch.Tensor  # (nheads,)
    A_log: torch.Tensor  # (nheads,)
    D: torch.Tensor  # (nheads,)
    norm_weight: torch.Tensor  # (d_inner,)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise causal convolution. x (batch, channels, seqlen); weight (channels, kernel).
    With ``seq_idx``, inputs from another document are masked out of each window."""
    k = weight.shape[-1]
    if seq_idx is None:
        # A sum of k shifted products rather than F.conv1d: the same maths, but its backward is
        # elementwise too; oneDNN's depthwise-conv backward was a fifth of a training step.
        padded, L = F.pad(x, (k - 1, 0)), x.shape[-1]
        out = sum(padded[..., i:i + L] * weight[:, i:i + 1] for i in range(k))
        return out if bias is None else out + bias[:, None]
    windows = F.pad(x, (k - 1, 0)).unfold(-1, k, 1)  # (b, ch, L, k): inputs t-k+1 .. t
    seq = F.pad(seq_idx, (k - 1, 0), value=-1).unfold(-1, k, 1)  # (b, L, k)
    same = (seq == seq_idx[..., None]).to(x.dtype)[:, None]  # (b, 1, L, k)
    out = torch.einsum("bclk,ck->bcl", windows * same, weight)
    return out if bias is None else out + bias[:, None]


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int,
                   eps: float) -> torch.Tensor:
    """RMSNorm of ``y * silu(z)`` per group of channels (Mamba-2's norm before out_proj), fp32."""
    h = y.float() * F.silu(z.float())
    g = h.view(*h.shape[:-1], -1, group_size)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    return weight.float() * g.view_as(h)


def softplus_dt(dt: torch.Tensor, dt_bias: torch.Tensor, dims: MambaDims) -> torch.Tensor:
    dt = F.softplus(dt.float() + dt_bias.float())
    return dt.clamp(min=dims.dt_limit[0], max=dims.dt_limit[1])


def split_zxbcdt(zxbcdt: torch.Tensor, dims: MambaDims):
    return zxbcdt.split([dims.d_inner, dims.conv_dim, dims.nheads], dim=-1)


def _xBC_sizes(dims: MambaDims) -> list[int]:
    return [dims.d_inner, dims.ngroups * dims.dstate, dims.ngroups * dims.dstate]


def conv_silu_ref(xBC: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  conv_prev: torch.Tensor | None = None, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """silu(causal conv) of xBC (batch, seqlen, conv_dim) -> (batch, seqlen, conv_dim); weight
    (conv_dim, kernel); ``conv_prev`` (batch, kernel - 1, conv_dim): the inputs before t = 0."""
    L = xBC.shape[1]
    xBC = xBC.transpose(1, 2)  # (b, conv_dim, L)
    if conv_prev is not None:
        window = torch.cat([conv_prev.to(xBC.dtype).transpose(1, 2), xBC], dim=-1)
        conv = causal_conv1d(window, weight, bias)[..., -L:]
    else:
        conv = causal_conv1d(xBC, weight, bias, seq_idx)
    return F.silu(conv).transpose(1, 2)


def mamba_chunk_ref(
    zxbcdt: torch.Tensor,  # (batch, seqlen, d_inner + conv_dim + nheads)
    w: MambaWeights,
    dims: MambaDims,
    conv_prev: torch.Tensor | None = None,  # (batch, kernel - 1, conv_dim): inputs before t = 0
    initial_state: torch.Tensor | None = None,  # (batch, nheads, headdim, dstate)
    seq_idx: torch.Tensor | None = None,  # (batch, seqlen) document of each packed token
    lengths: torch.Tensor | None = None,  # (batch,) real tokens of each right-padded row
    conv_silu=conv_silu_ref,  # the stages a fused training path replaces with its own
    ssd=ssd_chunk_scan,
    gated_norm=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (gated, normed y (batch, seqlen, d_inner) fp32, final SSM state fp32). Padding after
    a row's length gets dt = 0, so it neither decays nor feeds the state: the final state is the
    one after each row's last real token."""
    b, L, _ = zxbcdt.shape
    z, xBC, dt = split_zxbcdt(zxbcdt, dims)
    x, B, C = conv_silu(xBC, w.conv_weight[:, 0], w.conv_bias, conv_prev, seq_idx).split(_xBC_sizes(dims), dim=-1)
    dt = softplus_dt(dt, w.dt_bias, dims)
    if lengths is not None:
        dt = dt * (torch.arange(L, device=dt.device) < lengths[:, None])[..., None]
    y, final_state = ssd(
        x.reshape(b, L, dims.nheads, dims.headdim), dt, -torch.exp(w.A_log.float()),
        B.reshape(b, L, dims.ngroups, dims.dstate), C.reshape(b, L, dims.ngroups, dims.dstate),
        w.D, dims.chunk_size, initial_state=initial_state, seq_idx=seq_idx,
    )
    return (gated_norm or gated_rms_norm)(y.reshape(b, L, dims.d_inner), z, w.norm_weight, dims.group_size,
                                          dims.eps), final_state


def mamba_step_ref(
    zxbcdt: torch.Tensor,  # (batch, d_inner + conv_dim + nheads): one token per row
    w: MambaWeights,
    dims: MambaDims,
    conv_state: torch.Tensor,  # (batch, kernel - 1, conv_dim) fp32, oldest input first
    ssm_state: torch.Tensor,  # (batch, nheads, headdim, dstate) fp32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode token: -> (y (batch, d_inner) fp32, new conv_state, new ssm_state)."""
    b = zxbcdt.shape[0]
    z, xBC, dt = split_zxbcdt(zxbcdt, dims)
    window = torch.cat([conv_state, xBC[:, None].float()], dim=1)  # (b, kernel, conv_dim)
    xBC = (window * w.conv_weight[:, 0].float().t()).sum(1)
    if w.conv_bias is not None:
        xBC = xBC + w.conv_bias.float()
    x, B, C = F.silu(xBC).split(_xBC_sizes(dims), dim=-1)
    y, ssm_state = ssd_step(
        ssm_state, x.reshape(b, dims.nheads, dims.headdim), softplus_dt(dt, w.dt_bias, dims),
        -torch.exp(w.A_log.float()), B.reshape(b, dims.ngroups, dims.dstate),
        C.reshape(b, dims.ngroups, dims.dstate), w.D,
    )
    y = gated_rms_norm(y.reshape(b, dims.d_inner), z, w.norm_weight, dims.group_size, dims.eps)
    return y, window[:, 1:].contiguous(), ssm_state
