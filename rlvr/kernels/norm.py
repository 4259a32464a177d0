"""RMSNorm in plain torch: the reference for ``csrc/norm_cpu.c`` and the path autograd uses."""

from __future__ import annotations

import torch


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., dim) -> weight * x / rms(x), computed in fp32, returned in x's dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * h).to(x.dtype)
