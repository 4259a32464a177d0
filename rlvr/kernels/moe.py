"""The routed experts of a Nemotron-H MoE layer, in plain torch: the reference for the fused CPU
kernel (``csrc/moe_cpu.c``) and the path autograd uses.

    scores = sigmoid(x_router @ W_router^T)                      # fp32
    chosen = topk(scores + e_score_correction_bias, k)           # the bias only picks experts
    weight = scores[chosen] / sum(scores[chosen]) * routed_scaling_factor   (norm_topk_prob)
    out    = sum_j weight_j * down_j(relu²(up_j(x)))

Dispatch sorts token slots by expert so each expert is one contiguous block of a grouped GEMM:
no Python loop over experts and no host sync.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class MoEDims:
    n_experts: int
    top_k: int
    n_group: int
    topk_group: int
    norm_topk_prob: bool
    scale: float  # routed_scaling_factor


class MoEWeights(NamedTuple):
    router: torch.Tensor  # (E, hidden)
    correction_bias: torch.Tensor  # (E,)
    up: torch.Tensor  # (E, I, dim)
    down: torch.Tensor  # (E, dim, I)


def relu2(x: torch.Tensor) -> torch.Tensor:
    """relu(x)². Without autograd it works in place on x (callers pass a fresh projection): two
    passes over memory fewer, which shows on CPU."""
    if torch.is_grad_enabled() and x.requires_grad:
        return torch.square(F.relu(x))
    return F.relu_(x).square_()


def route_ref(x: torch.Tensor, router: torch.Tensor, correction_bias: torch.Tensor, dims: MoEDims,
              chosen: torch.Tensor | None = None, chosen_out: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (tokens, hidden) -> (expert index, weight), each (tokens, top_k). ``chosen`` (tokens,
    top_k): routing replay, the experts another forward chose (a rollout engine's), -1 where
    there is no record (this router chooses); their weights still come from this router's
    scores, so the router keeps learning. ``chosen_out`` (tokens, top_k), when given, receives
    this router's own choice, replayed or not (what routing-agreement metrics compare)."""
    scores = torch.sigmoid(F.linear(x.float(), router.float()))
    # (computed under replay too: a top-k is cheap beside the experts, and asking whether any
    # token lacks a record would cost a device sync per layer)
    own = _top_k(scores + correction_bias.float(), dims)
    if chosen_out is not None:
        chosen_out.copy_(own)
    if chosen is None:
        return _weights(scores, own, dims)
    chosen = chosen.long()
    return _weights(scores, torch.where(chosen >= 0, chosen, own), dims)


def _top_k(choice: torch.Tensor, dims: MoEDims) -> torch.Tensor:
    """The experts of the top_k largest ``choice`` values (scores + correction bias), in the
    top groups first when the experts are grouped."""
    if dims.n_group > 1:
        per_group = dims.n_experts // dims.n_group
        grouped = choice.view(-1, dims.n_group, per_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)
        keep = torch.zeros_like(group_scores).scatter_(1, group_scores.topk(dims.topk_group, dim=-1).indices, 1)
        choice = choice.masked_fill(~keep.bool().repeat_interleave(per_group, 1), -torch.inf)
    return choice.topk(dims.top_k, dim=-1).indices


def _weights(scores: torch.Tensor, index: torch.Tensor, dims: MoEDims) -> tuple[torch.Tensor, torch.Tensor]:
    weight = scores.gather(1, index)
    if dims.norm_topk_prob:
        weight = weight / (weight.sum(-1, keepdim=True) + 1e-20)
    return index, weight * dims.scale


def expert_slots(index: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """index (tokens, top_k) -> (order, offsets): the (token, k) choices sorted by expert (slot s
    holds choice order[s], token order[s] // top_k), and where each expert's slots end (int32,
    the grouped GEMM's offsets)."""
    flat_expert = index.reshape(-1)
    order = torch.argsort(flat_expert, stable=True)
    # scatter_add rather than bincount: a fixed output shape, so torch.compile needs no break.
    counts = torch.zeros(n_experts, dtype=torch.long, device=index.device).scatter_add_(
        0, flat_expert, torch.ones_like(flat_expert))
    return order, torch.cumsum(counts, 0).to(torch.int32)


def moe_routed_ref(x_router: torch.Tensor, x: torch.Tensor, w: MoEWeights, dims: MoEDims,
                   chosen: torch.Tensor | None = None, chosen_out: torch.Tensor | None = None) -> torch.Tensor:
    """x_router (tokens, hidden) chooses the experts (or ``chosen`` are replayed; ``chosen_out``
    receives the router's own choice: ``route_ref``); x (tokens, dim) is what they transform
    (the same tensor, or its Latent-MoE projection). -> (tokens, dim) in x's dtype."""
    index, weight = route_ref(x_router, w.router, w.correction_bias, dims, chosen, chosen_out)
    n_tokens = index.shape[0]
    order, offsets = expert_slots(index, dims.n_experts)
    token_of_slot = order // dims.top_k
    # index_select rather than x[token_of_slot]: the same gather, and its backward is index_add_
    # (5x faster on CPU than the indexing backward's accumulating index_put_)
    h = relu2(grouped_mm(x.index_select(0, token_of_slot), w.up.transpose(1, 2), offsets))
    out = grouped_mm(h, w.down.transpose(1, 2), offsets)  # (slots, dim)
    out = out.float() * weight.reshape(-1)[order, None]
    return torch.zeros(n_tokens, x.shape[1], dtype=torch.float32, device=x.device).index_add_(
        0, token_of_slot, out).to(x.dtype)


@torch.library.custom_op("rlvr::grouped_mm", mutates_args=())
def grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Rows x[offsets[e-1]:offsets[e]] times w[e], for every expert e, in one call.
    torch._grouped_mm does this on CPU and Hopper GPUs; where a device/dtype lacks it, the
    fallback multiplies each row by its expert's weights (same maths, more memory). Wrapped as
    a custom op so torch.compile treats it as one opaque call (the built-in op's compile-time
    shape function accepts bf16 only)."""
    return _grouped_mm_eager(x, w, offsets)


def _grouped_mm_eager(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    try:
        return torch._grouped_mm(x, w, offs=offsets)
    except (RuntimeError, NotImplementedError):
        expert = torch.searchsorted(offsets, torch.arange(x.shape[0], device=x.device, dtype=offsets.dtype),
                                    right=True)
        return torch.bmm(x[:, None, :], w[expert])[:, 0]


@grouped_mm.register_fake
def _(x, w, offsets):
    return x.new_empty(x.shape[0], w.shape[-1])


def _grouped_mm_backward(ctx, grad):
    """grad_x = grad_e w_eᵀ and grad_w_e = x_eᵀ grad_e, as two grouped products (the second
    groups along the token dimension). Where the built-in op is missing, the fallback's own
    autograd (recomputing its forward) gives the same."""
    x, w, offsets = ctx.saved_tensors
    try:
        grad_x = torch._grouped_mm(grad, w.transpose(-2, -1), offs=offsets)
        if w.transpose(-2, -1).is_contiguous():
            # w is the transpose of a parameter (the model passes up/down that way): its gradient
            # made in the parameter's own layout, (grad_eᵀ x_e)ᵀ, reaches it without a copy
            # (otherwise autograd copies each expert's gradient into the parameter's layout)
            return grad_x, torch._grouped_mm(grad.t(), x, offs=offsets).transpose(-2, -1), None
        return grad_x, torch._grouped_mm(x.t(), grad, offs=offsets), None
    except (RuntimeError, NotImplementedError):
        with torch.enable_grad():
            x_, w_ = x.detach().requires_grad_(), w.detach().requires_grad_()
            grad_x, grad_w = torch.autograd.grad(_grouped_mm_eager(x_, w_, offsets), (x_, w_), grad)
        return grad_x, grad_w, None


def _grouped_mm_setup(ctx, inputs, output):
    x, w, offsets = inputs
    ctx.save_for_backward(x, w, offsets)


grouped_mm.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_setup)
