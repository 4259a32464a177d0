"""Inference caches: per Mamba layer a conv window and an SSM state (constant size: decoding is
O(1) per token there), per attention layer a KV cache that grows with the sequence."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlvr.model.config import HybridConfig


class MambaCache:
    def __init__(self, config: HybridConfig):
        self.kernel = config.conv_kernel
        self.conv_state: torch.Tensor | None = None  # (batch, conv_dim, kernel - 1)
        self.ssm_state: torch.Tensor | None = None  # (batch, nheads, headdim, dstate), fp32

    @property
    def filled(self) -> bool:
        return self.ssm_state is not None

    def store(self, conv_input: torch.Tensor, ssm_state: torch.Tensor) -> None:
        """Keep the last kernel-1 conv inputs (zero-padded on the left for short prompts)."""
        window = conv_input[..., -(self.kernel - 1):]
        self.conv_state = F.pad(window, (self.kernel - 1 - window.shape[-1], 0))
        self.ssm_state = ssm_state.float()

    def select(self, rows: torch.Tensor) -> None:
        self.conv_state, self.ssm_state = self.conv_state[rows], self.ssm_state[rows]


class AttentionCache:
    def __init__(self):
        self.k: torch.Tensor | None = None  # (batch, kv_heads, length, head_dim)
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def select(self, rows: torch.Tensor) -> None:
        self.k, self.v = self.k[rows], self.v[rows]


class HybridCache:
    """One entry per layer: MambaCache for ``M``, AttentionCache for ``*``, None for MLP/MoE."""

    def __init__(self, config: HybridConfig):
        factories = {"M": lambda: MambaCache(config), "*": AttentionCache}
        self.layers = [factories[c]() if c in factories else None for c in config.pattern]
        self.seen_tokens = 0

    def __getitem__(self, i: int):
        return self.layers[i]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (finished sequences leave the batch)."""
        for layer in self.layers:
            if layer is not None:
                layer.select(rows)
