"""The hybrid Mamba-2 / attention / MoE policy (Nemotron-H compatible).

    import rlvr.model
    model = rlvr.model.load("path/to/nemotron-h-checkpoint")   # a Hugging Face folder
    logits = model(input_ids)                                   # (batch, seq, vocab), fp32
    model.save("out/")                                          # loads in transformers and vLLM
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlvr.model.cache import HybridCache
from rlvr.model.checkpoint import CheckpointReader, keep_fp32, load_weights
from rlvr.model.config import PRESETS, HybridConfig
from rlvr.model.model import HybridLM


def load(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> HybridLM:
    """Load a Nemotron-H checkpoint folder (ours, or one written by transformers / the hub): the
    one way to load a model. Weights in ``dtype`` (default: as stored; the SSM parameters and the
    router bias stay fp32). Tensors stream from the files one at a time: the process never holds
    the checkpoint beside the model."""
    reader = CheckpointReader(path)
    model = build(reader.config, dtype or reader.dtype, device)
    load_weights(model, reader)
    return model


def build(config: HybridConfig, dtype: torch.dtype, device) -> HybridLM:
    """An uninitialised model of ``config`` on ``device``, every tensor allocated once in its
    final dtype (``dtype``; fp32 where ``keep_fp32`` says): built on the meta device first, so
    nothing is initialised only to be overwritten by the checkpoint."""
    with torch.device("meta"):
        model = HybridLM(config, init_weights=False).to(dtype)
    keep_fp32(model)
    return model.to_empty(device=device)


def from_preset(name: str, **overrides) -> HybridLM:
    """A freshly initialised model of a named shape (``tiny``, ``small-100m``, ...)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return HybridLM(PRESETS[name](**overrides))


__all__ = ["HybridCache", "HybridConfig", "HybridLM", "PRESETS", "build", "from_preset", "load"]
