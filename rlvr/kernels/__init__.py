"""Mamba-2 kernels and the one place that chooses between them.

    torch  plain torch (``mamba.py`` + ``ssd.py``): the reference
    cpu    fused C loops (``cpu.py``, ``csrc/``) for CPU inference: prefill, decode, logprob
           forwards without gradients; Mamba mixer, routed MoE experts, causal GQA attention,
           RMSNorm, sampling and its counter-based random numbers; and for CPU training
           (``cpu_train.py``): the Mamba mixer (conv + SiLU, SSD scan, gated norm), attention,
           RMSNorm, relu², and the learner's target log-probabilities, forward and backward

    triton Triton kernels for CUDA tensors, with and without gradients: the Mamba mixer's
           conv + SiLU, gated norm and decode step (``triton_ssd.py``) and the chunked SSD scan
           (``triton_scan.py``), forward and backward; with ``auto``, chosen on CUDA when installed
           (named, also on CPU tensors under ``TRITON_INTERPRET=1``: tests)

``RLVR_KERNELS=torch`` (read at import) or ``set_backend("torch")`` forces the reference
everywhere (debugging, A/B timing); the default ``auto`` takes the fastest path that supports the
call.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from rlvr.kernels import cpu, cpu_train
from rlvr.kernels.cpu import frozen_weights
from rlvr.kernels.attention import attention_packed, attention_ref
from rlvr.kernels.mamba import MambaDims, MambaWeights, mamba_chunk_ref, mamba_step_ref
from rlvr.kernels.moe import MoEDims, MoEWeights, moe_routed_ref, relu2 as relu2_ref
from rlvr.kernels.logprob import linear_target_logprobs_chunked, target_logprobs_ref
from rlvr.kernels.norm import rms_norm_ref
from rlvr.kernels.sampling import counter_uniform_ref, sample_ref

BACKENDS = ("auto", "torch", "cpu", "triton")

_backend = os.environ.get("RLVR_KERNELS", "auto")
if _backend not in BACKENDS:
    raise ValueError(f"RLVR_KERNELS={_backend!r}: expected one of {', '.join(BACKENDS)}")


def backend() -> str:
    return _backend


def set_backend(choice: str) -> None:
    global _backend
    if choice not in BACKENDS:
        raise ValueError(f"kernel backend {choice!r}: expected one of {', '.join(BACKENDS)}")
    _backend = choice


def _use_varlen(q: torch.Tensor) -> bool:
    """torch's flash varlen kernel: CUDA, half precision, head dims it supports."""
    return (_backend != "torch" and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256
            and importlib.util.find_spec("torch.nn.attention.varlen") is not None)


def _use_cpu(*tensors: torch.Tensor | None) -> bool:
    """The C kernels have no backward: they serve calls on CPU tensors that need no gradient."""
    if _backend == "torch" or tensors[0].device.type != "cpu":
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return False  # (checked only with grad mode on: decode steps skip the scan)
    return cpu.available()


def _train_on_cpu(*tensors: torch.Tensor | None) -> bool:
    """A call that needs gradients, on CPU tensors: the C training kernels (``cpu_train.py``)."""
    if _backend == "torch" or tensors[0].device.type != "cpu" or not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in tensors) and cpu.available()


def mamba_chunk(zxbcdt, w: MambaWeights, dims: MambaDims, conv_prev=None, initial_state=None,
                seq_idx=None, lengths=None):
    """The mixer over a sequence (see ``mamba_chunk_ref``), on the fastest path available."""
    if _use_triton(zxbcdt):
        from rlvr.kernels.triton_ssd import mamba_chunk_triton  # (imported on a GPU only: see its tests)

        return mamba_chunk_triton(zxbcdt, w, dims, conv_prev, initial_state, seq_idx, lengths)
    if _use_cpu(zxbcdt, *w):
        fn = cpu.mamba_chunk_cpu
    else:
        fn = cpu_train.mamba_chunk_train if _train_on_cpu(zxbcdt, *w) else mamba_chunk_ref
    return fn(zxbcdt, w, dims, conv_prev, initial_state, seq_idx, lengths)


@functools.lru_cache(maxsize=1)
def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _use_triton(*tensors: torch.Tensor | None) -> bool:
    """The Triton kernels serve CUDA tensors when triton is installed; and CPU tensors when asked
    for by name under Triton's interpreter (``TRITON_INTERPRET=1``: the tests run the model's
    every call through them on a machine without a GPU)."""
    if _backend not in ("auto", "triton") or not _triton_available():
        return False
    return tensors[0].device.type == "cuda" or (_backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1")


def mamba_step(zxbcdt, w: MambaWeights, dims: MambaDims, conv_state, ssm_state):
    """One decode token (see ``mamba_step_ref``), on the fastest path available."""
    if _use_triton(zxbcdt):
        from rlvr.kernels.triton_ssd import mamba_step_triton  # (imported on a GPU only: see its tests)

        return mamba_step_triton(zxbcdt, w, dims, conv_state, ssm_state)
    fn = cpu.mamba_step_cpu if _use_cpu(zxbcdt, *w) else mamba_step_ref
    return fn(zxbcdt, w, dims, conv_state, ssm_state)


def target_logprobs(logits, targets, consume_logits: bool = False):
    """Log-probabilities of the targets and entropies from logits (..., V) (see
    ``target_logprobs_ref``), on the fastest path available (the C kernel needs the logits on the
    CPU; with or without gradients). ``consume_logits``: the caller will not read the logits
    again, so the C backward may write their gradient over them (the learner's case; the torch
    path ignores it)."""
    if _backend != "torch" and logits.device.type == "cpu" and cpu.available():
        return cpu_train.target_logprobs_cpu(logits, targets, consume_logits)
    return target_logprobs_ref(logits, targets)


# The fp32 logits one learner micro-batch may hold at once: beyond this, the lm-head projection and
# the log-probabilities run a chunk of tokens at a time (``LinearLogprob``; its backward's slices
# of the weight gradient hold as many fp32 numbers). Nano's vocabulary and 8,192 tokens would be
# 4.3 GB per copy; 128 MiB is 256 tokens of it, a tiny model's whole batch. (256 MiB: 8 % faster
# on the CPU at Nano's shape, 0.128 of the whole stage's memory instead of 0.116.)
LOGITS_BUDGET_BYTES = 128 * 1024**2


def linear_target_logprobs(hidden, weight, targets):
    """Log-probabilities of the targets and entropies of the logits ``hidden (n, d) @ weight.T``
    (the lm head), on the fastest path that fits: the whole logits through ``target_logprobs``
    while they fit ``LOGITS_BUDGET_BYTES``, else ``LinearLogprob`` chunk by chunk (the same
    numbers, see its test)."""
    chunk = LOGITS_BUDGET_BYTES // (4 * weight.shape[0])
    if hidden.shape[0] > chunk:
        return linear_target_logprobs_chunked(hidden, weight, targets, chunk)
    logits = torch.nn.functional.linear(hidden, weight).float()
    return target_logprobs(logits, targets, consume_logits=True)  # (nothing else reads these logits)


def token_logprobs(logits, input_ids, consume_logits: bool = False):
    """``target_logprobs`` of every next token: logits (B, L - 1, V) of input_ids (B, L)."""
    return target_logprobs(logits, input_ids[:, 1:], consume_logits)


def moe_routed(x_router, x, w: MoEWeights, dims: MoEDims, chosen=None, chosen_out=None):
    """Router + routed experts (see ``moe_routed_ref``; ``chosen``: routing replay;
    ``chosen_out``: receives the router's own choice), on the fastest path available (the
    inference kernel routes by itself: replay takes the others)."""
    if dims.n_group == 1 and chosen is None and _use_cpu(x, x_router, *w):
        return cpu.moe_routed_cpu(x_router, x, w, dims, chosen_out)
    if _train_on_cpu(x, x_router, *w):
        return cpu_train.moe_routed_train(x_router, x, w, dims, chosen, chosen_out)
    return moe_routed_ref(x_router, x, w, dims, chosen, chosen_out)


def relu2(x):
    """relu(x)², the MLP's and the experts' activation (see ``moe.relu2``), on the fastest path
    available."""
    return cpu_train.relu2_train(x) if _train_on_cpu(x) else relu2_ref(x)


def attention(q, k, v, past=None, seq_idx=None):
    """Causal GQA attention (see ``attention_ref``), on the fastest path available: packed rows
    on CUDA through flash attention's variable-length kernel (``attention_packed``)."""
    if seq_idx is not None and past is None and _use_varlen(q):
        return attention_packed(q, k, v, seq_idx)
    if _use_cpu(q, k, v):
        fn = cpu.attention_cpu
    elif past is None and _train_on_cpu(q, k, v):
        fn = cpu_train.attention_train
    else:
        fn = attention_ref
    return fn(q, k, v, past, seq_idx)


def rms_norm(x, weight, eps: float):
    """RMSNorm (see ``rms_norm_ref``), on the fastest path available."""
    if _use_cpu(x, weight):
        return cpu.rms_norm_cpu(x, weight, eps)
    return (cpu_train.rms_norm_train if _train_on_cpu(x, weight) else rms_norm_ref)(x, weight, eps)


def sample(logits, temperature: float, uniform, top_k: int = 0, top_p: float = 1.0):
    """Inverse-CDF draw of one token per row (see ``sample_ref``), on the fastest path available
    (the C kernel draws from the whole distribution: top-k / top-p take the reference)."""
    if top_k or top_p < 1 or not _use_cpu(logits):
        return sample_ref(logits, temperature, uniform, top_k, top_p)
    return cpu.sample_cpu(logits, temperature, uniform)


def counter_uniform(keys, positions):
    """One uniform number per row from (key, position) (see ``counter_uniform_ref``), on the
    fastest path available: both paths give the same bits."""
    fn = cpu.counter_uniform_cpu if _use_cpu(positions) else counter_uniform_ref
    return fn(keys, positions)


__all__ = ["BACKENDS", "counter_uniform", "MambaDims", "MambaWeights", "MoEDims", "MoEWeights", "attention",
           "backend", "frozen_weights", "mamba_chunk", "mamba_step", "moe_routed", "relu2", "rms_norm",
           "sample", "set_backend", "linear_target_logprobs", "target_logprobs", "token_logprobs"]
