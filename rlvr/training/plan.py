"""What a job needs in memory per device, before anything starts (``rlvr plan``).

Pure arithmetic over the composed config and the model's shape (its parameters counted on the
meta device, exactly): the learner rank's weights, gradients and optimizer state under its ZeRO
stage and precision, the activations of one micro-batch of ``learner.max_tokens_per_micro_batch``
tokens (with and without gradient checkpointing), the log-probability stage, DeepSpeed's ZeRO
buffers, and what loading the model costs; a rollout engine's weights, its per-sequence SSM state and
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
# A learner rank on CPU: the process itself (Python, torch, DeepSpeed, Ray: ~0.7 GiB resident,
# measured on the nano-slice job before its model exists).
CPU_PROCESS_BYTES = 0.7 * GiB
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


@dataclass(frozen=True)
class Shape:
    """A model's sizes in parameters, counted on the meta device."""

    total: int
    experts: int  # the routed experts'
    largest_tensor: int  # the largest parameter (Nano: one MoE layer's stacked up_proj)
    largest_module: int  # the most parameters one module holds itself (built whole under zero.Init)


def parameter_count(model_config) -> Shape:
    import torch

    from rlvr.model import HybridLM

    with torch.device("meta"):
        model = HybridLM(model_config, init_weights=False)
    named = list(model.named_parameters())
    return Shape(total=sum(p.numel() for _, p in named),
                 experts=sum(p.numel() for n, p in named if ".experts." in n),
                 largest_tensor=max(p.numel() for _, p in named),
                 largest_module=max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()))


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


def learner_figures(cfg, c, shape: Shape) -> list[Figure]:
    """What one learner rank holds: its model state by ZeRO stage (DeepSpeed's layout: the
    module's weights and gradients in the training dtype, the optimizer's fp32 master copy
    wherever DeepSpeed keeps one, Adam's two moments), DeepSpeed's buffers, the KL reference, one
    micro-batch's activations and the log-probability stage; and the peak of loading the model."""
    lc = cfg.learner
    n, stage, P, B = lc.num_ranks, lc.zero_stage, shape.total, lc.zero_bucket_elements
    pb = 2 if lc.bf16 else 4
    dtype = "bf16" if lc.bf16 else "fp32"
    part = {True: n, False: 1}
    tokens = lc.max_tokens_per_micro_batch or 16384
    from rlvr.kernels import LOGITS_BUDGET_BYTES

    chunk = max(1, LOGITS_BUDGET_BYTES // (4 * c.vocab_size))
    act = activation_elements_per_token(c, cfg.model.gradient_checkpointing) * tokens * pb
    master = 4 if lc.bf16 or stage >= 1 else 0  # (ZeRO's optimizers step an fp32 copy even of fp32 weights)
    if stage == 3:
        load = Figure("learner: load", pb * P / n + pb * shape.largest_module,
                      f"its partition ({dtype}, / {n} ranks) + the largest module, built whole before it is cut")
        buffers = Figure("learner: ZeRO buffers", pb * max(B, shape.largest_tensor) + pb * B + 4 * min(B, P / n),
                         f"gathered parameters (at least the largest), a reduce bucket, the fp32 gradients of "
                         f"one optimizer sub-group: learner.zero_bucket_elements={B:g}")
    else:
        load = Figure("learner: load", pb * P + 4 * shape.largest_tensor,
                      f"the whole model ({dtype}) + one tensor read from the checkpoint")
        buffers = Figure("learner: ZeRO buffers", 2 * pb * B if stage else 0,
                         f"reduce and all-gather buckets: learner.zero_bucket_elements={B:g}" if stage else "none (ZeRO-0)")
    figures = [
        load,
        Figure("learner: weights", pb * P / part[stage >= 3], f"{pb} B/param" + (f", / {n} ranks (ZeRO-3)" if stage >= 3 else "")),
        Figure("learner: gradients", pb * P / part[stage >= 2], f"{pb} B/param" + (f", / {n} ranks (ZeRO-{stage})" if stage >= 2 else "")),
        Figure("learner: optimizer", (master + 8) * P / part[stage >= 1],
               ("fp32 master + " if master else "") + "Adam m, v" + (f", / {n} ranks" if stage >= 1 else "")),
        buffers,
        Figure("learner: activations", act, f"{tokens} tokens a micro-batch, gradient checkpointing "
               f"{'on' if cfg.model.gradient_checkpointing else 'off'} (estimate)"),
        Figure("learner: log-probabilities", 3 * min(tokens, chunk) * c.vocab_size * 4,
               f"lm head by chunks of {min(tokens, chunk)} tokens (fp32 logits + their exp; the backward's "
               f"fp32 slice of the weight gradient)"),
        Figure("learner: vocabulary gradients", (1 if c.tie_word_embeddings else 2) * pb * c.vocab_size * c.hidden_size,
               "the lm head's and the embedding's gradients whole, before ZeRO reduces them"),
    ]
    if cfg.algorithm.kl_coef:
        figures.append(Figure("learner: KL reference", pb * P / n if stage == 3 else 4 * P,
                              f"{dtype}, / {n} ranks (ZeRO-3)" if stage == 3 else "a whole fp32 copy"))
    return figures


def overhead_bytes(cfg) -> float:
    """What a learner's device carries besides the figures: a GPU's CUDA context and allocator
    slack, or on CPU the process itself."""
    return OVERHEAD_BYTES if cfg.learner.gpus_per_rank else CPU_PROCESS_BYTES


def rollout_figures(cfg, c, params: int, device_bytes: float) -> tuple[list[Figure], dict]:
    """The engine's weights and state, and the sequences that fit on ``device_bytes``."""
    rc = cfg.rollout
    wb = 2 if cfg.rollout_dtype in ("bfloat16", "float16") else 4
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


def verdict(figures: list[Figure], device_bytes: float, rollout: dict, overhead: float) -> dict:
    """Whether a learner rank and an engine each fit one device of ``device_bytes``."""
    steady = sum(f.bytes for f in figures if f.name.startswith("learner:") and "load" not in f.name)
    load = next(f.bytes for f in figures if "load" in f.name)
    problems = []
    if load + overhead > device_bytes:
        problems.append(f"learner load: {load / GiB:.1f} GiB > {device_bytes / GiB:.0f} GiB")
    if steady + overhead > device_bytes:
        problems.append(f"learner step: {steady / GiB:.1f} GiB > {device_bytes / GiB:.0f} GiB")
    if rollout["sequences_that_fit"] < 1:
        problems.append("rollout: the weights leave no room for one sequence")
    return {"fits": not problems, "first_problem": problems[0] if problems else None,
            "learner_step_gib": round((steady + overhead) / GiB, 1),
            "learner_load_gib": round((load + overhead) / GiB, 1),
            "rollout_sequences": rollout["sequences_that_fit"]}


def plan(cfg, model_config, devices_gib: list[float]) -> dict:
    """Every figure, and the verdict per device size (GiB)."""
    shape = parameter_count(model_config)
    learner = learner_figures(cfg, model_config, shape)
    overhead = overhead_bytes(cfg)
    out = {"parameters": shape.total, "expert_parameters": shape.experts, "learner": [f.row() for f in learner],
           "overhead_gib": round(overhead / GiB, 2), "devices": {},
           "overhead": "CUDA context, allocator, communication buffers" if cfg.learner.gpus_per_rank
           else "the process: Python, torch, DeepSpeed, Ray (a CPU rank)"}
    for gib in devices_gib:
        rollout, capacity = rollout_figures(cfg, model_config, shape.total, gib * GiB)
        out.setdefault("rollout", [f.row() for f in rollout])
        out["devices"][f"{gib:g}GiB"] = verdict(learner, gib * GiB, capacity, overhead) | {"rollout": capacity}
    return out
