"""Nemotron-H configuration: the fields of a Hugging Face ``config.json`` for ``nemotron_h``.

The layer pattern is data: one character per layer, ``M`` Mamba-2, ``*`` attention, ``-`` MLP,
``E`` MoE. Older configs carry it as ``hybrid_override_pattern``; transformers >= 5 writes
``layers_block_type`` (``linear_attention``/``full_attention``/``mlp``/``moe``, some exports
``mamba``/``attention``). Both are read; ``to_dict`` writes both so every loader finds one.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

PATTERN_TO_BLOCK = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
BLOCK_TO_PATTERN = {v: k for k, v in PATTERN_TO_BLOCK.items()} | {"mamba": "M", "attention": "*"}

# Older field names that Nemotron-H configs still carry.
_LEGACY_NAMES = {
    "mamba_n_groups": "n_groups", "mamba_d_conv": "conv_kernel", "mamba_expand": "expand",
    "mamba_dt_min": "time_step_min", "mamba_dt_max": "time_step_max",
    "mamba_dt_limit": "time_step_limit", "mamba_dt_init_floor": "time_step_floor",
    "mamba_conv_bias": "use_conv_bias", "mamba_chunk_size": "chunk_size", "norm_eps": "layer_norm_epsilon",
}


@dataclasses.dataclass
class HybridConfig:
    pattern: str = "M*-E"
    vocab_size: int = 131072
    hidden_size: int = 4096
    # attention (GQA, no positional embedding: Nemotron-H attention layers use none)
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    attention_bias: bool = False
    max_position_embeddings: int = 4096
    # dense MLP
    intermediate_size: int = 21504
    mlp_bias: bool = False
    mlp_hidden_act: str = "relu2"
    # Mamba-2
    mamba_num_heads: int = 128
    mamba_head_dim: int = 64
    ssm_state_size: int = 128
    n_groups: int = 8
    conv_kernel: int = 4
    expand: int = 2
    chunk_size: int = 128
    use_conv_bias: bool = True
    use_bias: bool = False  # in_proj / out_proj bias
    mamba_hidden_act: str = "silu"
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_limit: tuple = (0.0, float("inf"))
    mamba_ssm_cache_dtype: str = "float32"
    # MoE
    n_routed_experts: int = 8
    num_experts_per_tok: int = 2
    n_shared_experts: int = 1
    moe_intermediate_size: int = 7688
    moe_shared_expert_intermediate_size: int = 7688
    moe_latent_size: int | None = None
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    n_group: int = 1
    topk_group: int = 1
    # the rest
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list | None = 2

    def __post_init__(self):
        self.pattern = self.pattern.replace("|", "")
        bad = sorted(set(self.pattern) - set(PATTERN_TO_BLOCK))
        if bad:
            raise ValueError(f"pattern: unknown layer characters {bad} (use M, *, -, E)")
        # transformers writes infinity as {"__float__": "Infinity"}.
        self.time_step_limit = tuple(float(x["__float__"]) if isinstance(x, dict) else float(x)
                                     for x in self.time_step_limit)
        if "*" in self.pattern and self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if "M" in self.pattern and self.mamba_num_heads % self.n_groups:
            raise ValueError("mamba_num_heads must be a multiple of n_groups")
        if "E" in self.pattern and self.num_experts_per_tok > self.n_routed_experts:
            raise ValueError("num_experts_per_tok must be <= n_routed_experts")

    # -- derived sizes
    @property
    def num_hidden_layers(self) -> int:
        return len(self.pattern)

    @property
    def layers_block_type(self) -> list[str]:
        return [PATTERN_TO_BLOCK[c] for c in self.pattern]

    @property
    def mamba_intermediate_size(self) -> int:
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def conv_dim(self) -> int:
        return self.mamba_intermediate_size + 2 * self.n_groups * self.ssm_state_size

    # -- (de)serialisation
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HybridConfig:
        data = {_LEGACY_NAMES.get(k, k): v for k, v in data.items()}
        if "layers_block_type" in data and data["layers_block_type"]:
            blocks = data["layers_block_type"]
            unknown = [b for b in blocks if b not in BLOCK_TO_PATTERN]
            if unknown:
                raise ValueError(f"layers_block_type: unknown block types {sorted(set(unknown))}")
            data["pattern"] = "".join(BLOCK_TO_PATTERN[b] for b in blocks)
        elif "hybrid_override_pattern" in data:
            data["pattern"] = data["hybrid_override_pattern"]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        pattern = out.pop("pattern")
        out["time_step_limit"] = list(self.time_step_limit)
        out.update(
            architectures=["NemotronHForCausalLM"], model_type="nemotron_h",
            layers_block_type=self.layers_block_type, hybrid_override_pattern=pattern,
            num_hidden_layers=len(pattern),
        )
        return out

    @classmethod
    def from_file(cls, path: str | Path) -> HybridConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n")


# ---------------------------------------------------------------- presets

def tiny(**overrides) -> HybridConfig:
    """A few-layer model covering every layer kind, for tests and the CPU demo."""
    base = dict(
        pattern="M*-EM", vocab_size=264, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=128, mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16,
        n_groups=2, chunk_size=16, n_routed_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=32, moe_shared_expert_intermediate_size=64, routed_scaling_factor=2.5,
        max_position_embeddings=2048,
    )
    return HybridConfig(**(base | overrides))


def small_100m(**overrides) -> HybridConfig:
    """About 100M parameters: the size used to time weight sync."""
    base = dict(
        pattern="MEM*EMEM-MEM*", vocab_size=16384, hidden_size=768, num_attention_heads=12,
        num_key_value_heads=4, head_dim=64, intermediate_size=2048, mamba_num_heads=24,
        mamba_head_dim=64, ssm_state_size=64, n_groups=4, chunk_size=64, n_routed_experts=12,
        num_experts_per_tok=2, moe_intermediate_size=512, moe_shared_expert_intermediate_size=1024,
        routed_scaling_factor=2.5,
    )
    return HybridConfig(**(base | overrides))


def nemotron3_nano_30b_a3b(**overrides) -> HybridConfig:
    """The published NVIDIA-Nemotron-3-Nano-30B-A3B shape (52 layers, 128 experts, top-6)."""
    base = dict(
        pattern="MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME", vocab_size=131072,
        hidden_size=2688, num_attention_heads=32, num_key_value_heads=2, head_dim=128,
        intermediate_size=1856, mamba_num_heads=64, mamba_head_dim=64, ssm_state_size=128,
        n_groups=8, chunk_size=128, n_routed_experts=128, num_experts_per_tok=6,
        moe_intermediate_size=1856, moe_shared_expert_intermediate_size=3712,
        routed_scaling_factor=2.5, max_position_embeddings=262144,
    )
    return HybridConfig(**(base | overrides))


def nano_slice(**overrides) -> HybridConfig:
    """Nemotron 3 Nano's widths (hidden 2688, vocabulary 131,072, its head, state and group
    sizes, its expert widths) with one layer of each kind (Mamba-2, MoE, attention) and 8 routed
    experts: 0.87B parameters (3.5 GB in fp32, 0.7 GB of it each for the embeddings and the lm
    head), so that Nano's memory behaviour (the vocabulary, the layer widths) can be measured on
    a CPU machine."""
    return nemotron3_nano_30b_a3b(**({"pattern": "ME*", "n_routed_experts": 8, "max_position_embeddings": 4096}
                                     | overrides))


def nemotron3_super_120b_a12b(**overrides) -> HybridConfig:
    """Nemotron 3 Super 120B-A12B sizes as published in its config.json: 88 layers of which 40
    Mamba-2, 40 Latent MoE and 8 attention, hidden 4096, 512 experts, top-22, latent 1024,
    routed_scaling_factor 5.0. The layer order here spreads them evenly (the release's exact order
    is in its config.json: load that for the real model), which keeps the parameter count:
    120.7B total, 12.8B active (tests/rlvr/model/test_model.py). The release's one MTP layer is
    not modelled."""
    base = dict(
        pattern="MEMEMEMEME*" * 8, vocab_size=131072, hidden_size=4096, num_attention_heads=32,
        num_key_value_heads=2, head_dim=128, intermediate_size=2688, mamba_num_heads=128,
        mamba_head_dim=64, ssm_state_size=128, n_groups=8, chunk_size=128, n_routed_experts=512,
        num_experts_per_tok=22, moe_intermediate_size=2688, moe_shared_expert_intermediate_size=5376,
        moe_latent_size=1024, routed_scaling_factor=5.0, max_position_embeddings=262144,
    )
    return HybridConfig(**(base | overrides))


PRESETS = {
    "tiny": tiny, "small-100m": small_100m, "nano-slice": nano_slice,
    "nemotron3-nano-30b-a3b": nemotron3_nano_30b_a3b, "nemotron3-super-120b-a12b": nemotron3_super_120b_a12b,
}
