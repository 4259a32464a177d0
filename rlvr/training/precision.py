"""Parameters kept in fp32 while DeepSpeed trains the rest in bf16.

DeepSpeed's bf16 mode casts every parameter of the module to bf16 (``_cast_module_mixed_precision``;
its ``keep_in_fp32_modules`` spares buffers only), and its optimizers keep fp32 master copies of
bf16 module parameters: the forward then reads the SSM decay ``A = -exp(A_log)``, the skip ``D``
and the step bias ``dt_bias`` in bf16 (8 mantissa bits: ~0.8 % error on A at A_log ~ 3, compounded
over every step of the recurrence), and the weight sync ships them so. Mamba's reference and the
anchors (NeMo RL, Megatron) keep them fp32.

``Fp32Params`` takes these tensors out of DeepSpeed's hands before ``deepspeed.initialize``: each
becomes a persistent buffer of its module (the same name, so checkpoints, ``state_dict``, the
weight sync and the Hugging Face export see it where they did) that requires a gradient. Autograd
fills their gradients in the same backward; after DeepSpeed's step they are averaged over the
data-parallel ranks (DeepSpeed averages its own the same way), clipped with the norm of all
gradients, and stepped by an fp32 AdamW of the same settings and learning rate. Checkpoints
carry their values and optimizer state (``state_dict``). They are a few numbers per Mamba head
(3 x 64 x 23 layers for Nano), so the extra all-reduce is ~17 KB.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from rlvr.training.sharded import is_partitioned

# The Mamba-2 mixer's parameters whose maths needs fp32 (the router's correction bias is an fp32
# buffer already, and DeepSpeed leaves buffers alone).
KEEP_FP32 = ("A_log", "D", "dt_bias")


class Fp32Params:
    """The fp32 tensors of a bf16 DeepSpeed run (see the module's docstring)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...] = KEEP_FP32):
        """Turn ``model``'s trainable parameters called ``names`` into fp32 buffers that require
        a gradient; call before ``deepspeed.initialize`` (and, on a model built in bf16, before
        its weights are loaded: the buffers then take the checkpoint's values in fp32)."""
        self.owners: list[tuple[str, nn.Module, str]] = []
        for prefix, module in model.named_modules():
            for name in names:
                param = module._parameters.get(name)
                if param is None or not param.requires_grad:
                    continue
                value = _whole(param).float()
                del module._parameters[name]
                module.register_buffer(name, value.requires_grad_(True))
                self.owners.append((f"{prefix}.{name}" if prefix else name, module, name))
        self.optimizer: torch.optim.Optimizer | None = None

    @property
    def tensors(self) -> list[torch.Tensor]:
        """Read from their modules each time (DeepSpeed may move buffers while it initializes)."""
        return [getattr(module, name) for _, module, name in self.owners]

    def start(self, make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer]) -> None:
        """The optimizer, over the tensors as ``deepspeed.initialize`` left them."""
        if self.owners:
            self.optimizer = make_optimizer(self.tensors)

    def grad_norm_sq(self) -> float:
        """The squared norm of their (already averaged) gradients."""
        return sum(float(t.grad.float().pow(2).sum()) for t in self.tensors if t.grad is not None)

    def average_grads(self, world_size: int) -> None:
        """Sum over the data-parallel ranks, divided by their number (DeepSpeed's rule)."""
        grads = [t.grad for t in self.tensors if t.grad is not None]
        if world_size > 1 and grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= world_size
            for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(part.view_as(g))

    def step(self, lr: float, clip_coef: float) -> None:
        """One update at ``lr``, the gradients scaled by ``clip_coef`` first (1: no clipping)."""
        if self.optimizer is None:
            return
        for t in self.tensors:
            if t.grad is not None and clip_coef < 1:
                t.grad.mul_(clip_coef)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"values": {n: t.detach().clone() for (n, _, _), t in zip(self.owners, self.tensors)},
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for (n, _, _), t in zip(self.owners, self.tensors):
                t.copy_(state["values"][n])
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])


def _whole(param: torch.Tensor) -> torch.Tensor:
    """A copy of the whole parameter, gathered if ZeRO-3 partitioned it (a collective: every rank
    converts the same parameters in the same order)."""
    if not is_partitioned(param):
        return param.detach().clone()
    from deepspeed import zero

    with zero.GatheredParameters([param], modifier_rank=None):
        return param.detach().clone()


def clip_coefficient(max_norm: float | None, *norms_sq: float) -> tuple[float, float]:
    """(the global gradient norm over every part, the factor that clips it to ``max_norm``)."""
    total = sum(norms_sq) ** 0.5
    if max_norm is None or total <= max_norm:
        return total, 1.0
    return total, max_norm / (total + 1e-6)
