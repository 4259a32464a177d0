"""The four Nemotron-H mixers (Mamba-2, GQA attention, relu² MLP, MoE) and the norms.

Parameter names and shapes follow the Hugging Face ``nemotron_h`` checkpoints (see
``checkpoint.py``), so loading is a rename at most. Every mixer takes
``(hidden, cache, seq_idx)``: ``cache`` is the layer's entry of a ``HybridCache`` (or None for a
training forward) and ``seq_idx`` (batch, seqlen) numbers packed documents.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rlvr.kernels.ssd import ssd_chunk_scan, ssd_step
from rlvr.model.cache import AttentionCache, MambaCache
from rlvr.model.config import HybridConfig


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * h).to(x.dtype)


class GatedRMSNorm(nn.Module):
    """RMSNorm of ``y * silu(z)`` per group of channels (Mamba-2's norm before out_proj), in fp32."""

    def __init__(self, size: int, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = y.float() * F.silu(z.float())
        g = h.view(*h.shape[:-1], -1, self.group_size)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.float() * g.view_as(h)


def relu2(x: torch.Tensor) -> torch.Tensor:
    return torch.square(F.relu(x))


# ---------------------------------------------------------------- Mamba-2

def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise causal convolution. x (batch, channels, seqlen); weight (channels, kernel).
    With ``seq_idx``, inputs from another document are masked out of each window."""
    k = weight.shape[-1]
    if seq_idx is None:
        return F.conv1d(F.pad(x, (k - 1, 0)), weight[:, None, :], bias, groups=x.shape[1])
    windows = F.pad(x, (k - 1, 0)).unfold(-1, k, 1)  # (b, ch, L, k): inputs t-k+1 .. t
    seq = F.pad(seq_idx, (k - 1, 0), value=-1).unfold(-1, k, 1)  # (b, L, k)
    same = (seq == seq_idx[..., None]).to(x.dtype)[:, None]  # (b, 1, L, k)
    out = torch.einsum("bclk,ck->bcl", windows * same, weight)
    return out if bias is None else out + bias[:, None]


class Mamba2Mixer(nn.Module):
    def __init__(self, config: HybridConfig):
        super().__init__()
        self.nheads, self.headdim = config.mamba_num_heads, config.mamba_head_dim
        self.ngroups, self.dstate = config.n_groups, config.ssm_state_size
        self.d_inner = config.mamba_intermediate_size
        self.conv_dim = config.conv_dim
        self.chunk_size = config.chunk_size
        self.dt_limit = config.time_step_limit
        self.in_proj = nn.Linear(config.hidden_size, self.d_inner + self.conv_dim + self.nheads, bias=config.use_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, config.conv_kernel, groups=self.conv_dim,
                                padding=config.conv_kernel - 1, bias=config.use_conv_bias)
        self.dt_bias = nn.Parameter(torch.ones(self.nheads))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, self.nheads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // self.ngroups, config.layer_norm_epsilon)
        self.out_proj = nn.Linear(self.d_inner, config.hidden_size, bias=config.use_bias)

    def forward(self, hidden: torch.Tensor, cache: MambaCache | None = None,
                seq_idx: torch.Tensor | None = None, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``lengths`` (batch,): real tokens per right-padded row. Padding gets dt = 0, so it
        neither decays nor feeds the state: each row's final state is that of its last real token."""
        b, L, _ = hidden.shape
        z, xBC, dt = self.in_proj(hidden).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if cache is not None and cache.filled and L == 1:
            return self._step(z, xBC, dt, cache)
        xBC = xBC.transpose(1, 2)  # (b, conv_dim, L)
        weight = self.conv1d.weight[:, 0, :]
        if cache is not None and cache.filled:
            # Continuing a prefill: the cached window precedes this piece.
            conv_in = torch.cat([cache.conv_state.to(xBC.dtype), xBC], dim=-1)
            xBC_conv = causal_conv1d(conv_in, weight, self.conv1d.bias)[..., -L:]
        else:
            conv_in = xBC
            xBC_conv = causal_conv1d(xBC, weight, self.conv1d.bias, seq_idx)
        xBC_conv = F.silu(xBC_conv).transpose(1, 2)
        x, B, C = xBC_conv.split([self.d_inner, self.ngroups * self.dstate, self.ngroups * self.dstate], dim=-1)
        dt = self._dt(dt)
        if lengths is not None:
            dt = dt * (torch.arange(L, device=dt.device) < lengths[:, None])[..., None]
        y, final_state = ssd_chunk_scan(
            x.reshape(b, L, self.nheads, self.headdim), dt, self._A(),
            B.reshape(b, L, self.ngroups, self.dstate), C.reshape(b, L, self.ngroups, self.dstate),
            self.D, self.chunk_size,
            initial_state=cache.ssm_state if cache is not None and cache.filled else None, seq_idx=seq_idx,
        )
        if cache is not None:
            cache.store(conv_in, final_state, lengths)
        return self.out_proj(self.norm(y.reshape(b, L, self.d_inner), z).to(hidden.dtype))

    def _dt(self, dt: torch.Tensor) -> torch.Tensor:
        dt = F.softplus(dt.float() + self.dt_bias.float())
        return dt.clamp(min=self.dt_limit[0], max=self.dt_limit[1])

    def _A(self) -> torch.Tensor:
        return -torch.exp(self.A_log.float())

    def _step(self, z, xBC, dt, cache: MambaCache) -> torch.Tensor:
        b = z.shape[0]
        window = torch.cat([cache.conv_state, xBC.transpose(1, 2).to(cache.conv_state.dtype)], dim=-1)
        cache.conv_state = window[..., 1:]
        xBC = (window * self.conv1d.weight[:, 0, :].to(window.dtype)).sum(-1)
        if self.conv1d.bias is not None:
            xBC = xBC + self.conv1d.bias
        x, B, C = F.silu(xBC).split([self.d_inner, self.ngroups * self.dstate, self.ngroups * self.dstate], dim=-1)
        y, cache.ssm_state = ssd_step(
            cache.ssm_state, x.reshape(b, self.nheads, self.headdim), self._dt(dt[:, 0]), self._A(),
            B.reshape(b, self.ngroups, self.dstate), C.reshape(b, self.ngroups, self.dstate), self.D,
        )
        return self.out_proj(self.norm(y.reshape(b, 1, self.d_inner), z).to(z.dtype))


# ---------------------------------------------------------------- attention

class Attention(nn.Module):
    """Grouped-query attention without positional embedding (Nemotron-H puts none on its few
    attention layers: the Mamba layers carry position)."""

    def __init__(self, config: HybridConfig):
        super().__init__()
        self.nheads, self.nkv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.nheads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.nkv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.nkv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.nheads * self.head_dim, config.hidden_size, bias=bias)

    def forward(self, hidden: torch.Tensor, cache: AttentionCache | None = None,
                seq_idx: torch.Tensor | None = None, lengths: torch.Tensor | None = None) -> torch.Tensor:
        b, L, _ = hidden.shape
        q = self.q_proj(hidden).view(b, L, self.nheads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden).view(b, L, self.nkv, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden).view(b, L, self.nkv, self.head_dim).transpose(1, 2)
        past, valid = 0, None
        if cache is not None:
            past = cache.length
            k, v, valid = cache.append(k, v, lengths)
        mask = None
        if seq_idx is not None:
            same_doc = seq_idx[:, :, None] == seq_idx[:, None, :]
            mask = (same_doc & torch.ones(L, L, dtype=torch.bool, device=hidden.device).tril())[:, None]
        elif past and L > 1:
            mask = torch.ones(L, k.shape[2], dtype=torch.bool, device=hidden.device).tril(diagonal=past)
        elif valid is not None:
            mask = valid  # decode over rows of different lengths
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and L > 1, enable_gqa=self.nkv != self.nheads,
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, L, -1))


# ---------------------------------------------------------------- MLP and MoE

class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool):
        super().__init__()
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, cache=None, seq_idx=None, lengths=None) -> torch.Tensor:
        return self.down_proj(relu2(self.up_proj(x)))


class Router(nn.Module):
    """Sigmoid router in fp32. ``e_score_correction_bias`` only influences which experts are
    chosen (load balancing without an auxiliary loss); the weights are the raw sigmoid scores,
    normalised over the chosen ones and scaled by ``routed_scaling_factor``."""

    def __init__(self, config: HybridConfig):
        super().__init__()
        self.top_k, self.n_experts = config.num_experts_per_tok, config.n_routed_experts
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.norm_topk_prob, self.scale = config.norm_topk_prob, config.routed_scaling_factor
        self.weight = nn.Parameter(torch.zeros(self.n_experts, config.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(self.n_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (tokens, hidden) -> (expert index, weight), each (tokens, top_k)."""
        scores = torch.sigmoid(F.linear(x.float(), self.weight.float()))
        choice = scores + self.e_score_correction_bias.float()
        if self.n_group > 1:
            grouped = choice.view(-1, self.n_group, self.n_experts // self.n_group)
            group_scores = grouped.topk(2, dim=-1).values.sum(-1)
            keep = torch.zeros_like(group_scores).scatter_(1, group_scores.topk(self.topk_group, dim=-1).indices, 1)
            choice = choice.masked_fill(~keep.bool().repeat_interleave(self.n_experts // self.n_group, 1), -torch.inf)
        index = choice.topk(self.top_k, dim=-1).indices
        weight = scores.gather(1, index)
        if self.norm_topk_prob:
            weight = weight / (weight.sum(-1, keepdim=True) + 1e-20)
        return index, weight * self.scale


class Experts(nn.Module):
    """Routed relu² experts, stored stacked: up_proj (E, I, d), down_proj (E, d, I)."""

    def __init__(self, n_experts: int, dim: int, intermediate: int):
        super().__init__()
        self.up_proj = nn.Parameter(torch.empty(n_experts, intermediate, dim))
        self.down_proj = nn.Parameter(torch.empty(n_experts, dim, intermediate))

    def forward(self, x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Tokens are sorted by expert so each expert is one contiguous block of a grouped GEMM:
        no Python loop over experts and no host sync."""
        n_tokens, top_k = index.shape
        flat_expert = index.reshape(-1)
        order = torch.argsort(flat_expert, stable=True)
        token_of_slot = order // top_k
        counts = torch.bincount(flat_expert, minlength=self.up_proj.shape[0])
        offsets = torch.cumsum(counts, 0).to(torch.int32)
        xs = x[token_of_slot]
        h = relu2(grouped_mm(xs, self.up_proj.transpose(1, 2), offsets))
        out = grouped_mm(h, self.down_proj.transpose(1, 2), offsets)  # (slots, d)
        out = out.float() * weight.reshape(-1)[order, None]
        return torch.zeros(n_tokens, x.shape[1], dtype=torch.float32, device=x.device).index_add_(
            0, token_of_slot, out).to(x.dtype)


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Rows x[offsets[e-1]:offsets[e]] times w[e], for every expert e, in one call.
    torch._grouped_mm does this on CPU and Hopper GPUs; where a device/dtype lacks it, the
    fallback multiplies each row by its expert's weights (same maths, more memory)."""
    try:
        return torch._grouped_mm(x, w, offs=offsets)
    except (RuntimeError, NotImplementedError):
        expert = torch.searchsorted(offsets, torch.arange(x.shape[0], device=x.device, dtype=offsets.dtype),
                                    right=True)
        return torch.bmm(x[:, None, :], w[expert])[:, 0]


class MoE(nn.Module):
    def __init__(self, config: HybridConfig):
        super().__init__()
        dim = config.moe_latent_size or config.hidden_size
        self.gate = Router(config)
        self.experts = Experts(config.n_routed_experts, dim, config.moe_intermediate_size)
        self.shared_experts = MLP(config.hidden_size, config.moe_shared_expert_intermediate_size, config.mlp_bias)
        if config.moe_latent_size is not None:
            # Latent MoE: experts work in a smaller space, projected into and out of once.
            self.fc1_latent_proj = nn.Linear(config.hidden_size, dim, bias=config.mlp_bias)
            self.fc2_latent_proj = nn.Linear(dim, config.hidden_size, bias=config.mlp_bias)
        else:
            self.fc1_latent_proj = self.fc2_latent_proj = None

    def forward(self, hidden: torch.Tensor, cache=None, seq_idx=None, lengths=None) -> torch.Tensor:
        shape = hidden.shape
        x = hidden.reshape(-1, shape[-1])
        index, weight = self.gate(x)
        routed = x if self.fc1_latent_proj is None else self.fc1_latent_proj(x)
        routed = self.experts(routed, index, weight)
        if self.fc2_latent_proj is not None:
            routed = self.fc2_latent_proj(routed)
        return routed.view(shape) + self.shared_experts(hidden)
