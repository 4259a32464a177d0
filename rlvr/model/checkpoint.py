"""Save and load Hugging Face Nemotron-H checkpoints: ``config.json`` + safetensors.

What we write loads in transformers (``AutoModelForCausalLM``) and vLLM; what they write (or a
hub snapshot folder, sharded or not) loads here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rlvr.model.config import HybridConfig
from rlvr.model.names import checkpoint_items, to_internal

SHARD_BYTES = 4 * 1024**3


def save_checkpoint(model, path: str | Path, dtype: torch.dtype | None = None) -> None:
    """``config.json`` + ``model.safetensors`` (sharded with an index past 4 GiB)."""
    save_state(model.config, model.state_dict(), path, dtype)


def save_state(hybrid_config, state: dict[str, torch.Tensor], path: str | Path, dtype: torch.dtype | None = None) -> None:
    """``save_checkpoint`` of a model's ``state_dict`` (module names): where the state exists
    without its module, as a ZeRO-3 learner's consolidated state on rank 0, whose own module
    holds only its partition."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = hybrid_config.to_dict()
    tensors = {}
    for name, tensor in checkpoint_items(state):
        if hybrid_config.tie_word_embeddings and name == "lm_head.weight":
            continue
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point() and "e_score_correction_bias" not in name:
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous().cpu()
    first = next(t for t in state.values() if t.is_floating_point())
    config["torch_dtype"] = str(dtype or first.dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shards = _shard(tensors)
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _shard(tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    shards, current, size = [], {}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += nbytes
    return shards + [current]


def read_safetensors(path: Path):
    """(name, tensor) pairs of every safetensors file of a checkpoint folder."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors files")
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


def read_checkpoint(path: str | Path) -> tuple[HybridConfig, dict[str, torch.Tensor]]:
    """A checkpoint folder -> (its config, its weights under our internal names)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json (not a Nemotron-H checkpoint folder)")
    return HybridConfig.from_file(path / "config.json"), to_internal(read_safetensors(path))


def load_into(model, state: dict[str, torch.Tensor], dtype: torch.dtype | None, where: str) -> None:
    """Weights ``state`` into a freshly built ``model``, in ``dtype`` (default: as stored, but
    fp32 for the router bias and the Mamba A_log/D/dt_bias, which we always keep in fp32)."""
    model.to(dtype or next(iter(state.values())).dtype)
    keep_fp32(model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if model.config.tie_word_embeddings:
        missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"{where}: checkpoint does not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def keep_fp32(model) -> None:
    """Parameters whose precision the SSM/router maths relies on stay fp32 in bf16 models."""
    for name, p in model.named_parameters():
        if name.endswith(("A_log", "D", "dt_bias")):
            p.data = p.data.float()
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.data = b.data.float()
