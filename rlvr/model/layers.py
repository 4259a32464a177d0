"""The four Nemotron-H mixers (Mamba-2, GQA attention, relu² MLP, MoE) and the norms.

Parameter names and shapes follow the Hugging Face ``nemotron_h`` checkpoints (see
``checkpoint.py``), so loading is a rename at most. Every mixer takes
``(hidden, cache, seq_idx)``: ``cache`` is the layer's entry of a ``HybridCache`` (or None for a
training forward) and ``seq_idx`` (batch, seqlen) numbers packed documents.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rlvr.kernels import (MambaDims, MambaWeights, MoEDims, MoEWeights, attention, mamba_chunk, mamba_step,
                          moe_routed, relu2, rms_norm)
from rlvr.model.cache import AttentionCache, MambaCache
from rlvr.model.config import HybridConfig


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class GatedRMSNorm(nn.Module):
    """The weight of Mamba-2's gated RMSNorm (``mixer.norm.weight`` in Nemotron-H checkpoints).
    The norm itself runs inside the mixer's kernels (``rlvr.kernels.mamba.gated_rms_norm`` and
    its fused twins), with the group size and eps of ``MambaDims``."""

    def __init__(self, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))


# ---------------------------------------------------------------- Mamba-2

class Mamba2Mixer(nn.Module):
    """in_proj -> (conv, SSD scan, gated norm: ``rlvr.kernels``, which picks the fused CPU kernel
    or the torch reference) -> out_proj."""

    def __init__(self, config: HybridConfig):
        super().__init__()
        self.nheads, self.headdim = config.mamba_num_heads, config.mamba_head_dim
        self.ngroups, self.dstate = config.n_groups, config.ssm_state_size
        self.d_inner = config.mamba_intermediate_size
        self.conv_dim = config.conv_dim
        self.dims = MambaDims(
            d_inner=self.d_inner, nheads=self.nheads, headdim=self.headdim, ngroups=self.ngroups,
            dstate=self.dstate, kernel=config.conv_kernel, chunk_size=config.chunk_size,
            eps=config.layer_norm_epsilon, dt_limit=tuple(config.time_step_limit),
        )
        self.in_proj = nn.Linear(config.hidden_size, self.d_inner + self.conv_dim + self.nheads, bias=config.use_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, config.conv_kernel, groups=self.conv_dim,
                                padding=config.conv_kernel - 1, bias=config.use_conv_bias)
        self.dt_bias = nn.Parameter(torch.ones(self.nheads))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, self.nheads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GatedRMSNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, config.hidden_size, bias=config.use_bias)

    def weights(self) -> MambaWeights:
        return MambaWeights(self.conv1d.weight, self.conv1d.bias, self.dt_bias, self.A_log, self.D, self.norm.weight)

    def forward(self, hidden: torch.Tensor, cache: MambaCache | None = None,
                seq_idx: torch.Tensor | None = None, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``lengths`` (batch,): real tokens per right-padded row (see ``mamba_chunk_ref``)."""
        L = hidden.shape[1]
        zxbcdt = self.in_proj(hidden)
        continuing = cache is not None and cache.filled
        if continuing and L == 1:
            y, cache.conv_state, cache.ssm_state = mamba_step(
                zxbcdt[:, 0], self.weights(), self.dims, cache.conv_state, cache.ssm_state)
            return self.out_proj(y[:, None].to(hidden.dtype))
        y, final_state = mamba_chunk(
            zxbcdt, self.weights(), self.dims, conv_prev=cache.conv_state if continuing else None,
            initial_state=cache.ssm_state if continuing else None, seq_idx=seq_idx, lengths=lengths,
        )
        if cache is not None:
            xBC = zxbcdt[..., self.d_inner:self.d_inner + self.conv_dim]
            conv_in = torch.cat([cache.conv_state.to(xBC.dtype), xBC], dim=1) if continuing else xBC
            cache.store(conv_in, final_state, lengths)
        return self.out_proj(y.to(hidden.dtype))


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
        past = None
        if cache is not None:
            past = cache.lengths  # keys each row held before this chunk (None: empty cache)
            k, v = cache.append(k, v, lengths)
        out = attention(q, k, v, past, seq_idx)  # (b, L, heads, head_dim)
        return self.o_proj(out.reshape(b, L, -1))


# ---------------------------------------------------------------- MLP and MoE

class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool):
        super().__init__()
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, cache=None, seq_idx=None, lengths=None) -> torch.Tensor:
        return self.down_proj(relu2(self.up_proj(x)))


class Router(nn.Module):
    """Sigmoid router (see ``rlvr/kernels/moe.py``). ``e_score_correction_bias`` only influences
    which experts are chosen (load balancing without an auxiliary loss): a buffer, not trained."""

    def __init__(self, config: HybridConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(config.n_routed_experts, config.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(config.n_routed_experts, dtype=torch.float32))


class Experts(nn.Module):
    """Routed relu² experts, stored stacked: up_proj (E, I, d), down_proj (E, d, I)."""

    def __init__(self, n_experts: int, dim: int, intermediate: int):
        super().__init__()
        self.up_proj = nn.Parameter(torch.empty(n_experts, intermediate, dim))
        self.down_proj = nn.Parameter(torch.empty(n_experts, dim, intermediate))


class MoE(nn.Module):
    def __init__(self, config: HybridConfig):
        super().__init__()
        dim = config.moe_latent_size or config.hidden_size
        self.gate = Router(config)
        self.experts = Experts(config.n_routed_experts, dim, config.moe_intermediate_size)
        self.dims = MoEDims(
            n_experts=config.n_routed_experts, top_k=config.num_experts_per_tok, n_group=config.n_group,
            topk_group=config.topk_group, norm_topk_prob=config.norm_topk_prob, scale=config.routed_scaling_factor,
        )
        self.shared_experts = MLP(config.hidden_size, config.moe_shared_expert_intermediate_size, config.mlp_bias)
        if config.moe_latent_size is not None:
            # Latent MoE: experts work in a smaller space, projected into and out of once.
            self.fc1_latent_proj = nn.Linear(config.hidden_size, dim, bias=config.mlp_bias)
            self.fc2_latent_proj = nn.Linear(dim, config.hidden_size, bias=config.mlp_bias)
        else:
            self.fc1_latent_proj = self.fc2_latent_proj = None

    def forward(self, hidden: torch.Tensor, cache=None, seq_idx=None, lengths=None,
                experts: torch.Tensor | None = None, record: list | None = None) -> torch.Tensor:
        """``experts`` (..., top_k) of hidden's leading shape: routing replay (``route_ref``).
        ``record``: a list that gets this router's own choice, (..., top_k) int64."""
        shape = hidden.shape
        x = hidden.reshape(-1, shape[-1])
        routed = x if self.fc1_latent_proj is None else self.fc1_latent_proj(x)
        weights = MoEWeights(self.gate.weight, self.gate.e_score_correction_bias, self.experts.up_proj,
                             self.experts.down_proj)
        chosen = None if experts is None else experts.reshape(-1, self.dims.top_k)
        own = None if record is None else torch.empty(x.shape[0], self.dims.top_k, dtype=torch.long, device=x.device)
        routed = moe_routed(x, routed, weights, self.dims, chosen, own)
        if record is not None:
            record.append(own.view(*shape[:-1], self.dims.top_k))
        if self.fc2_latent_proj is not None:
            routed = self.fc2_latent_proj(routed)
        return routed.view(shape) + self.shared_experts(hidden)
