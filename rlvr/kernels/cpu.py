"""The CPU fast path: ``csrc/*.c`` compiled on first use and called through ctypes.

Why C through ctypes rather than a torch C++ extension: the source needs no torch headers, so it
builds in about a second with the system C compiler (a torch extension takes ~1 min and ninja),
and the library it yields does not depend on the torch version. It links libgomp, the OpenMP
runtime torch itself loads, so both share one thread pool; ``torch.get_num_threads()`` decides
the kernel's threads.

The library is cached under ``$RLVR_KERNEL_CACHE`` (default ``~/.cache/rlvr/kernels``), keyed by
the source, the flags, the compiler and the CPU (it is built with ``-march=native``). Several
processes building at once (Ray workers) each write a private file and rename it into place.
Without a C compiler ``available()`` is False and the dispatcher keeps the torch path.

Each ``X_cpu`` function takes exactly the arguments of its torch reference ``X_ref``
(``mamba.py``, ``moe.py``, ``attention.py``, ``norm.py``, ``sampling.py``) and returns the same values.

Weights are converted into the layout the kernels read (fp32, transposed). The converted copy is
kept only inside ``frozen_weights()`` (the builtin engine's ``generate``: hundreds of decode
steps over weights nothing changes meanwhile); anywhere else it is made again for every call.
A cache keyed on the tensors cannot see every route by which weights change: ``p.data = ...``,
``p.data.copy_(...)`` (how DeepSpeed writes an optimiser step), ``model.to(torch.bfloat16)``
leave a parameter's identity and version counter as they were, and a stale copy gave wrong
logits silently (1.94 off after one ZeRO-2 step).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings

from pathlib import Path

import torch
from torch.utils.weak import WeakIdKeyDictionary

from rlvr.kernels.mamba import MambaDims, MambaWeights
from rlvr.kernels.moe import MoEDims, MoEWeights

SOURCES = [Path(__file__).parent / "csrc" / name for name in ("mamba_cpu.c", "moe_cpu.c", "attention_cpu.c", "norm_cpu.c",
                                                               "sample_cpu.c", "train_cpu.c")]
HEADERS = [Path(__file__).parent / "csrc" / "simd.h"]
# Not -ffast-math: with -shared, gcc < 13 links crtfastmath.o, which would switch the whole
# process to flush-denormals-to-zero on load. These flags allow the same vectorised reductions,
# reciprocals by one Newton step (silu's division was a third of the Mamba kernel's time) and
# comparisons without NaN checks; the kernels compute no infinities (dt_max is capped).
FLAGS = ["-O3", "-march=native", "-std=gnu11", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno",
         "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math", "-freciprocal-math",
         "-ffinite-math-only"] + (["-mrecip=all"] if platform.machine() in ("x86_64", "AMD64") else [])


class _Dims(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in
                ("d_inner", "conv_dim", "nheads", "headdim", "ngroups", "dstate", "kernel", "group_size")] + \
               [(name, ctypes.c_float) for name in ("dt_min", "dt_max", "eps")]


class _MoEDims(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in
                ("hidden", "dim", "n_experts", "intermediate", "top_k", "norm_topk_prob")] + [("scale", ctypes.c_float)]


class _AttnDims(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in
                ("nheads", "kv_heads", "head_dim", "q_sb", "q_sh", "q_st", "k_sb", "k_sh", "k_st",
                 "v_sb", "v_sh", "v_st")] + [("scale", ctypes.c_float)]


def find_compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")


def _cache_key(compiler: str) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    cpu = ""
    if Path("/proc/cpuinfo").exists():
        cpu = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    texts = [p.read_text() for p in SOURCES + HEADERS]
    blob = "\0".join([*texts, " ".join(FLAGS), version, platform.machine(), cpu])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _build() -> Path:
    compiler = find_compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    cache = Path(os.environ.get("RLVR_KERNEL_CACHE", Path.home() / ".cache" / "rlvr" / "kernels"))
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"rlvr_cpu-{_cache_key(compiler)}.so"
    if not target.exists():
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        done = subprocess.run([compiler, *FLAGS, *map(str, SOURCES), "-o", tmp, "-lm"], capture_output=True, text=True)
        if done.returncode:
            os.unlink(tmp)
            raise RuntimeError(f"compiling the CPU kernels failed:\n{done.stderr}")
        os.replace(tmp, target)  # atomic: a concurrent builder's file is identical
    return target


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(_build()))
    except (OSError, RuntimeError) as err:
        warnings.warn(f"rlvr: the CPU kernels are unavailable, using the torch path ({err})", stacklevel=3)
        return None
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.mamba_prefill_f32.argtypes = [ctypes.POINTER(_Dims), i64, i64] + [p] * 11 + [i32, p, p, i32]
    lib.mamba_step_f32.argtypes = [ctypes.POINTER(_Dims), i64] + [p] * 11 + [i32]
    lib.moe_routed_f32.argtypes = [ctypes.POINTER(_MoEDims), i64] + [p] * 8 + [i32]
    lib.attention_f32.argtypes = [ctypes.POINTER(_AttnDims), i64, i64] + [p] * 6 + [i32]
    lib.attention_train_fwd_f32.argtypes = [ctypes.POINTER(_AttnDims), i64, i64] + [p] * 6 + [i32]
    lib.attention_train_bwd_f32.argtypes = [ctypes.POINTER(_AttnDims), i64, i64] + [p] * 10 + [i32]
    lib.rms_norm_f32.argtypes = [i64, i64, p, p, ctypes.c_float, p, i32]
    lib.rms_norm_bwd_f32.argtypes = [i64, i64, p, p, ctypes.c_float, p, p, p, i32]
    lib.sample_f32.argtypes = [i64, i64, p, ctypes.c_float, p, p, p, i32]
    lib.counter_uniform_f32.argtypes = [i64, p, p, p]
    lib.conv_silu_fwd_f32.argtypes = [i64] * 5 + [p] * 5 + [i32]
    lib.conv_silu_bwd_f32.argtypes = [i64] * 5 + [p] * 8 + [i32]
    f32 = ctypes.c_float
    lib.dt_fwd_f32.argtypes = [i64] * 4 + [p, p, f32, f32, p, p, i32]
    lib.dt_bwd_f32.argtypes = [i64] * 4 + [p, p, f32, f32, p, p, p, p, i32]
    lib.gated_norm_fwd_f32.argtypes = [i64] * 4 + [p, p, p, ctypes.c_float, p, i32]
    lib.gated_norm_bwd_f32.argtypes = [i64] * 4 + [p, p, p, ctypes.c_float, p, p, p, p, i32]
    lib.ssd_scan_fwd_f32.argtypes = [i64] * 8 + [p] * 11 + [i32]
    lib.ssd_scan_bwd_f32.argtypes = [i64] * 10 + [p] * 17 + [i32]
    lib.relu2_fwd_f32.argtypes = [i64, p, p, i32]
    lib.relu2_bwd_f32.argtypes = [i64, p, p, p, i32]
    lib.logprob_fwd_f32.argtypes = [i64, i64] + [p] * 5 + [i32]
    lib.logprob_bwd_f32.argtypes = [i64, i64] + [p] * 5 + [i32]
    lib.moe_combine_f32.argtypes = [i64] * 3 + [p] * 4 + [i32]
    lib.moe_combine_bwd_f32.argtypes = [i64] * 3 + [p] * 6 + [i32]
    return lib


def available() -> bool:
    return _library() is not None


def _lib() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError("the CPU kernels could not be built (see the warning above); RLVR_KERNELS=torch avoids them")
    return lib


# The wrappers below run once per layer per decode step, where microseconds of Python add up:
# they convert nothing that is already fp32 and contiguous.


@functools.lru_cache(maxsize=256)
def _dims(dims: MambaDims) -> _Dims:
    # The kernel is built without infinities in mind (finite-math reductions): cap at float max.
    big = torch.finfo(torch.float32).max
    lo, hi = (min(max(v, -big), big) for v in dims.dt_limit)
    return _Dims(dims.d_inner, dims.conv_dim, dims.nheads, dims.headdim, dims.ngroups, dims.dstate,
                 dims.kernel, dims.group_size, lo, hi, dims.eps)


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
        return t
    return t.detach().float().contiguous()


def _i64(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None or (t.dtype == torch.int64 and t.is_contiguous()):
        return t
    return t.to(torch.int64).contiguous()


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14


@functools.lru_cache(maxsize=1)
def _madvise():
    """libc's madvise where transparent huge pages are on request (``[madvise]``), else None
    (``[always]`` needs no request; ``[never]``, or not Linux, cannot use them)."""
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    if "[madvise]" not in mode:
        return None
    fn = ctypes.CDLL(None, use_errno=True).madvise
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


def huge_empty(*shape: int) -> torch.Tensor:
    """torch.empty(shape) fp32 whose 2 MiB-aligned interior is marked for transparent huge pages.
    The training kernels' outputs and gradients are fresh buffers of tens of MB per layer; glibc
    maps each from the kernel anew and the first write faults it in page by page (4 KiB). On huge
    pages filling 60 MB takes 3-6 ms instead of 16 ms here, a tenth of a ``small-100m`` step.
    The marking only affects this buffer's own pages (the aligned interior)."""
    t = torch.empty(*shape, dtype=torch.float32)
    madvise = _madvise()
    if madvise is not None and t.nbytes >= 2 * HUGE_PAGE:
        start = -(-t.data_ptr() // HUGE_PAGE) * HUGE_PAGE
        end = (t.data_ptr() + t.nbytes) // HUGE_PAGE * HUGE_PAGE
        if end > start:
            madvise(start, end - start, MADV_HUGEPAGE)  # (a refusal only costs the speed-up)
    return t


_FROZEN = threading.local()  # per thread: conversions made inside frozen_weights(), by first weight


@contextlib.contextmanager
def frozen_weights():
    """Within this block the weights do not change, so their kernel layouts are made once and
    reused (nested blocks share the outer one's); the copies are dropped at the end."""
    if getattr(_FROZEN, "cache", None) is not None:
        yield
        return
    _FROZEN.cache = WeakIdKeyDictionary()
    try:
        yield
    finally:
        _FROZEN.cache = None


def _prepared(weights: tuple, convert) -> tuple[torch.Tensor, ...]:
    """``convert(weights)``: made once per ``frozen_weights()`` block, else on every call."""
    cache = getattr(_FROZEN, "cache", None)
    if cache is None:
        with torch.no_grad():
            return convert(weights)
    cached = cache.get(weights[0])
    if cached is None or any(a is not b for a, b in zip(cached[0], weights)):
        with torch.no_grad():
            cached = weights, convert(weights)
        cache[weights[0]] = cached
    return cached[1]


def _mamba_params(w: MambaWeights) -> tuple[torch.Tensor, ...]:
    """conv weight transposed to (kernel, conv_dim) so the innermost loop runs over contiguous
    channels; A = -exp(A_log)."""
    return _prepared(w, lambda w: (w.conv_weight[:, 0].float().t().contiguous(), _f32(w.conv_bias), _f32(w.dt_bias),
                                   -torch.exp(w.A_log.float()), _f32(w.D), _f32(w.norm_weight)))


def _moe_params(w: MoEWeights) -> tuple[torch.Tensor, ...]:
    """router (hidden, E), up (E, dim, I), down (E, I, dim): each product a sum of contiguous
    rows. A transposed copy of the experts: the CPU path is for models that fit a CPU."""
    return _prepared(w, lambda w: (w.router.float().t().contiguous(), _f32(w.correction_bias),
                                   w.up.float().transpose(1, 2).contiguous(),
                                   w.down.float().transpose(1, 2).contiguous()))


def mamba_chunk_cpu(zxbcdt, w: MambaWeights, dims: MambaDims, conv_prev=None, initial_state=None,
                    seq_idx=None, lengths=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same arguments and results as ``mamba_chunk_ref``; inference only (no autograd)."""
    b, L, _ = zxbcdt.shape
    zxbcdt, conv_prev = _f32(zxbcdt), _f32(conv_prev)
    seq_idx, lengths = _i64(seq_idx), _i64(lengths)
    state = (torch.empty(b, dims.nheads, dims.headdim, dims.dstate) if initial_state is None
             else initial_state.detach().float().clone(memory_format=torch.contiguous_format))
    xbc = torch.empty(b, L, dims.conv_dim)
    y = torch.empty(b, L, dims.d_inner)
    params = _mamba_params(w)
    _lib().mamba_prefill_f32(
        ctypes.byref(_dims(dims)), b, L, _ptr(zxbcdt), _ptr(conv_prev), *map(_ptr, params[:2]),
        _ptr(seq_idx), _ptr(lengths), *map(_ptr, params[2:]), _ptr(state), int(initial_state is not None),
        _ptr(xbc), _ptr(y), torch.get_num_threads(),
    )
    return y, state


def mamba_step_cpu(zxbcdt, w: MambaWeights, dims: MambaDims, conv_state, ssm_state
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same arguments and results as ``mamba_step_ref``. The states are updated in place when
    they are contiguous fp32 (a cache's own tensors), else copied first."""
    b = zxbcdt.shape[0]
    zxbcdt = _f32(zxbcdt)
    if conv_state.dtype != torch.float32 or not conv_state.is_contiguous():
        conv_state = conv_state.float().contiguous()
    if ssm_state.dtype != torch.float32 or not ssm_state.is_contiguous():
        ssm_state = ssm_state.float().contiguous()
    xbc = torch.empty(b, dims.conv_dim)
    y = torch.empty(b, dims.d_inner)
    conv_wT, conv_b, dt_bias, A, D, norm_w = _mamba_params(w)
    _lib().mamba_step_f32(
        ctypes.byref(_dims(dims)), b, _ptr(zxbcdt), _ptr(conv_state), _ptr(conv_wT), _ptr(conv_b),
        _ptr(dt_bias), _ptr(A), _ptr(D), _ptr(norm_w), _ptr(ssm_state), _ptr(xbc), _ptr(y),
        torch.get_num_threads(),
    )
    return y, conv_state, ssm_state


def moe_routed_cpu(x_router, x, w: MoEWeights, dims: MoEDims, chosen_out: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Same arguments and result as ``moe_routed_ref`` (n_group == 1 only, no replay); inference
    only."""
    if dims.n_group > 1:
        raise ValueError("the CPU MoE kernel implements n_group == 1 routing only")
    T, dim = x.shape
    xr, xe = _f32(x_router), _f32(x)
    routerT, bias, upT, downT = _moe_params(w)
    out = torch.empty(T, dim)
    c = _MoEDims(xr.shape[1], dim, dims.n_experts, upT.shape[2], dims.top_k, int(dims.norm_topk_prob), dims.scale)
    record = None if chosen_out is None else torch.empty(T, dims.top_k, dtype=torch.long)
    _lib().moe_routed_f32(ctypes.byref(c), T, _ptr(xr), _ptr(xe), _ptr(routerT), _ptr(bias), _ptr(upT),
                          _ptr(downT), _ptr(out), _ptr(record), torch.get_num_threads())
    if chosen_out is not None:
        chosen_out.copy_(record)
    return _as(out, x.dtype)


def _head_major(t: torch.Tensor) -> torch.Tensor:
    """fp32 with a contiguous last dimension (other strides are passed to the kernel)."""
    t = _as(t, torch.float32)
    return t if t.stride(-1) == 1 else t.contiguous()


def _attn_dims(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> _AttnDims:
    hd = q.shape[-1]
    return _AttnDims(q.shape[1], k.shape[1], hd, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], hd ** -0.5)


def attention_cpu(q, k, v, past=None, seq_idx=None) -> torch.Tensor:
    """Same arguments and result as ``attention_ref``; inference only."""
    b, nh, Lq, hd = q.shape
    dtype = q.dtype
    q, k, v = _head_major(q), _head_major(k), _head_major(v)
    past = torch.zeros(b, dtype=torch.int64) if past is None else _i64(past)
    seq_idx = _i64(seq_idx)
    out = torch.empty(b, Lq, nh, hd)
    _lib().attention_f32(ctypes.byref(_attn_dims(q, k, v)), b, Lq, _ptr(q), _ptr(k), _ptr(v), _ptr(past), _ptr(seq_idx),
                         _ptr(out), torch.get_num_threads())
    return _as(out, dtype)


def rms_norm_cpu(x, weight, eps: float) -> torch.Tensor:
    """Same arguments and result as ``rms_norm_ref``; inference only."""
    xf = _f32(x)
    w = _f32(weight) if weight.dtype == torch.float32 else _prepared((weight,), lambda w: (_f32(w[0]),))[0]
    out = torch.empty_like(xf)
    _lib().rms_norm_f32(xf.numel() // xf.shape[-1], xf.shape[-1], _ptr(xf), _ptr(w), eps, _ptr(out),
                        torch.get_num_threads())
    return _as(out, x.dtype)


def sample_cpu(logits, temperature: float, uniform) -> tuple[torch.Tensor, torch.Tensor]:
    """Same arguments and results as ``sample_ref``."""
    logits, uniform = _f32(logits), _f32(uniform)
    rows, vocab = logits.shape
    tokens, logprobs = torch.empty(rows, dtype=torch.long), torch.empty(rows)
    _lib().sample_f32(rows, vocab, _ptr(logits), 1.0 / temperature, _ptr(uniform), _ptr(tokens), _ptr(logprobs),
                      torch.get_num_threads())
    return tokens, logprobs


def counter_uniform_cpu(keys, positions) -> torch.Tensor:
    """Same arguments and results as ``counter_uniform_ref``."""
    keys, positions = keys.to(torch.long).contiguous(), positions.to(torch.long).contiguous()
    out = torch.empty(len(positions))
    _lib().counter_uniform_f32(len(positions), _ptr(keys), _ptr(positions), _ptr(out))
    return out
