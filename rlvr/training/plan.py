"""What a job needs in memory per device, before anything starts (``rlvr plan``).

Pure arithmetic over the composed config and the model's shape (its parameters counted on the
meta device, exactly): the learner rank's weights, gradients and optimizer state under its ZeRO
stage and precision, the activations of one micro-batch of ``learner.max_tokens_per_micro_batch``
tokens (with and without gradient checkpointing), the log-probability stage, and what loading
the model costs on today's path; a rollout engine's weights, its per-sequence SSM state and
per-token KV cache, and how many sequences of ``prompt + max_tokens`` fit at vLLM's
``gpu_memory_utilization``. Each figure says how it is reckoned (``how``); a verdict per device
size names the first figure that does not fit.

Activations are an estimate (per token and layer: the tensors autograd keeps for the backward,
by layer kind, in the compute dtype); the rest is exact arithmetic. What the learner measures
(``learner/load_peak_rss_gib``, ``learner/peak_rss_gib``) is the check of these figures.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3
# Fixed costs a device carries besides the figures (CUDA context, allocator slack, NCCL buffers).
OVERHEAD_BYTES = 3 * GiB
# The prompt length a rollout sequence is reckoned with (its response: rollout.sampling.max_tokens).
PROMPT_TOKENS = 1024


@dataclass(frozen=True)
class Figure:
    name: str
    bytes: float
    how: str

    def row(self) -> dict:
        return {"name": self.name, "gib": round(self.bytes / GiB, 2), "how": self.how}


def model_shape(cfg):
    """The model's ``HybridConfig``: ``model.path``'s config.json, else the preset with its
    overrides."""
    import json
    from pathlib import Path

    from rlvr.model.config import PRESETS, HybridConfig

    if cfg.model.path is not None:
        return HybridConfig.from_dict(json.loads((Path(cfg.model.path).expanduser() / "config.json").read_text()))
    return PRESETS[cfg.model.preset](**cfg.model.overrides)


def parameter_count(model_config) -> tuple[int, int]:
    """(all parameters, those of the routed experts), counted on the meta device."""
    import torch

    from rlvr.model import HybridLM

    with torch.device("meta"):
        model = HybridLM(model_config)
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    return total, experts


def activation_elements_per_token(c, checkpointing: bool) -> int:
    """Elements per token autograd keeps for the backward of one micro-batch (an estimate): with
    gradient checkpointing each layer's input plus one layer's inside (recomputed in its
    backward); without, every layer's inside."""
    di, gn, h = c.mamba_intermediate_size, c.n_groups * c.ssm_state_size, c.hidden_size
    inside = {
        "M": (2 * di + 2 * gn + c.mamba_num_heads) + (di + 2 * gn) + 3 * di,  # in_proj, conv, y, gate, norm
        "*": (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim + 2 * c.num_attention_heads * c.head_dim,
        "E": c.n_routed_experts + c.num_experts_per_tok * 3 * c.moe_intermediate_size
        + 3 * c.moe_shared_expert_intermediate_size,
        "-": 3 * c.intermediate_size,
    }
    per_layer = {k: v + 2 * h for k, v in inside.items()}  # (+ the norm's input and output)
    if checkpointing:
        return len(c.pattern) * h + max(per_layer[k] for k in set(c.pattern))
    return sum(per_layer[k] for k in c.pattern)


def learner_figures(cfg, c, params: int) -> list[Figure]:
    lc = cfg.learner
    n, stage = lc.num_ranks, lc.zero_stage
    pb = 2 if lc.bf16 else 4
    part = {True: n, False: 1}
    tokens = lc.max_tokens_per_micro_batch or 16384
    from rlvr.kernels import LOGITS_BUDGET_BYTES

    chunk = max(1, LOGITS_BUDGET_BYTES // (4 * c.vocab_size))
    act = activation_elements_per_token(c, cfg.model.gradient_checkpointing) * tokens * pb
    return [
        Figure("learner: load (today's path)", 4 * params,
               "each rank builds the whole model in fp32 before DeepSpeed partitions it"),
        Figure("learner: weights", pb * params / part[stage >= 3], f"{pb} B/param" + (f", / {n} ranks (ZeRO-3)" if stage >= 3 else "")),
        Figure("learner: gradients", pb * params / part[stage >= 2], f"{pb} B/param" + (f", / {n} ranks (ZeRO-{stage})" if stage >= 2 else "")),
        Figure("learner: optimizer", ((4 if lc.bf16 else 0) + 8) * params / part[stage >= 1],
               ("fp32 master + " if lc.bf16 else "") + "Adam m, v" + (f", / {n} ranks" if stage >= 1 else "")),
        Figure("learner: activations", act, f"{tokens} tokens a micro-batch, gradient checkpointing "
               f"{'on' if cfg.model.gradient_checkpointing else 'off'} (estimate)"),
        Figure("learner: log-probabilities", min(tokens, chunk) * c.vocab_size * 4 * 2,
               f"lm head by chunks of {min(tokens, chunk)} tokens (fp32 logits + their exp)"),
    ]


def rollout_figures(cfg, c, params: int, device_bytes: float) -> tuple[list[Figure], dict]:
    """The engine's weights and state, and the sequences that fit on ``device_bytes``."""
    rc = cfg.rollout
    wb = 2 if cfg.model.dtype in ("bfloat16", "float16") else 4
    util = float(rc.vllm_kwargs.get("gpu_memory_utilization", 0.9)) if rc.engine == "vllm" else 1.0
    # a sequence: a prompt of PROMPT_TOKENS and the sampling budget, within the engine's context
    length = min(rc.max_model_len or c.max_position_embeddings, PROMPT_TOKENS + rc.sampling.max_tokens)
    n_attn, n_mamba = c.pattern.count("*"), c.pattern.count("M")
    kv_per_token = n_attn * 2 * c.num_key_value_heads * c.head_dim * wb
    ssm_per_seq = n_mamba * (c.mamba_num_heads * c.mamba_head_dim * c.ssm_state_size * 4
                             + c.conv_dim * (c.conv_kernel - 1) * wb)
    per_seq = ssm_per_seq + kv_per_token * length
    room = util * device_bytes - wb * params - OVERHEAD_BYTES
    fits = max(0, int(room // per_seq)) if per_seq else 0
    figures = [Figure("rollout: weights", wb * params, f"{wb} B/param, the whole model per engine"),
               Figure("rollout: per sequence", per_seq,
                      f"SSM state (fp32) {ssm_per_seq / 2**20:.1f} MiB + KV {kv_per_token / 1024:.0f} KiB/token x "
                      f"{length} tokens")]
    return figures, {"gpu_memory_utilization": util, "sequences_that_fit": fits, "sequence_tokens": length,
                     "max_batch": rc.max_batch}


def verdict(figures: list[Figure], device_bytes: float, rollout: dict) -> dict:
    """Whether a learner rank and an engine each fit one device of ``device_bytes``."""
    steady = sum(f.bytes for f in figures if f.name.startswith("learner:") and "load" not in f.name)
    load = next(f.bytes for f in figures if "load" in f.name)
    problems = []
    if load + OVERHEAD_BYTES > device_bytes:
        problems.append(f"learner load: {load / GiB:.1f} GiB (the whole fp32 model on each rank) > "
                        f"{device_bytes / GiB:.0f} GiB")
    if steady + OVERHEAD_BYTES > device_bytes:
        problems.append(f"learner step: {steady / GiB:.1f} GiB > {device_bytes / GiB:.0f} GiB")
    if rollout["sequences_that_fit"] < 1:
        problems.append("rollout: the weights leave no room for one sequence")
    return {"fits": not problems, "first_problem": problems[0] if problems else None,
            "learner_step_gib": round((steady + OVERHEAD_BYTES) / GiB, 1),
            "learner_load_gib": round((load + OVERHEAD_BYTES) / GiB, 1),
            "rollout_sequences": rollout["sequences_that_fit"]}


def plan(cfg, model_config, devices_gib: list[float]) -> dict:
    """Every figure, and the verdict per device size (GiB)."""
    params, experts = parameter_count(model_config)
    learner = learner_figures(cfg, model_config, params)
    out = {"parameters": params, "expert_parameters": experts, "learner": [f.row() for f in learner],
           "overhead_gib": OVERHEAD_BYTES / GiB, "devices": {}}
    for gib in devices_gib:
        rollout, capacity = rollout_figures(cfg, model_config, params, gib * GiB)
        out.setdefault("rollout", [f.row() for f in rollout])
        out["devices"][f"{gib:g}GiB"] = verdict(learner, gib * GiB, capacity) | {"rollout": capacity}
    return out
