"""The Triton kernels against their torch references, forward and backward, max difference printed
(-s). Skipped without triton. Without a GPU: on this CPU under TRITON_INTERPRET=1 (fp32: the
interpreter computes bf16 wrongly). On a CUDA machine every test runs on the GPU, compiled, the
reference on the same GPU (benchmarks/gpu_check.sh); the ``gpu`` ones only there."""

import importlib.util
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (pip install -e '.[triton]')")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-4  # as the CPU kernels: fp32 sums in another order
# Kernels with tl.dot: on a GPU an fp32 dot runs on tensor cores in tf32 (10-bit mantissa)
DOT_TOL = 5e-3 if DEVICE == "cuda" else TOL


def _on(*tensors):
    """The tensors (None kept) on the device the kernels run on."""
    moved = [t.to(DEVICE) if t is not None else None for t in tensors]
    return moved if len(moved) > 1 else moved[0]


@pytest.fixture(scope="module")
def kernels():
    # (conftest.py sets it before triton loads, on a machine without CUDA)
    assert torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
    from rlvr.kernels import triton_ssd

    return triton_ssd


def _dims(ngroups=2, headdim=8, dstate=16):
    from rlvr.kernels.mamba import MambaDims

    return MambaDims(d_inner=4 * headdim, nheads=4, headdim=headdim, ngroups=ngroups, dstate=dstate, kernel=4,
                     chunk_size=16, eps=1e-5, dt_limit=(0.0, float("inf")))


@pytest.mark.parametrize("b, ngroups, headdim, dstate", [(2, 2, 8, 16), (3, 1, 4, 12), (1, 4, 16, 8)])
def test_the_state_update_is_ssd_step(kernels, b, ngroups, headdim, dstate):
    from rlvr.kernels.ssd import ssd_step

    g = torch.Generator().manual_seed(b * dstate)
    h = 4
    state = torch.randn(b, h, headdim, dstate, generator=g)
    x, dt = torch.randn(b, h, headdim, generator=g), torch.rand(b, h, generator=g)
    A, D = -torch.rand(h, generator=g), torch.randn(h, generator=g)
    B, C = (torch.randn(b, ngroups, dstate, generator=g) for _ in range(2))
    state, x, dt, A, B, C, D = _on(state, x, dt, A, B, C, D)
    y_ref, state_ref = ssd_step(state, x, dt, A, B, C, D)
    got = state.clone()
    y = kernels.state_update_triton(got, x, dt, A, B, C, D)
    diff = max(float((y - y_ref).abs().max()), float((got - state_ref).abs().max()))
    print(f"state update b={b} groups={ngroups} headdim={headdim} dstate={dstate}: {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("bias", [True, False])
def test_a_decode_step_is_mamba_step_ref(kernels, bias):
    from rlvr.kernels.mamba import MambaWeights, mamba_step_ref

    g = torch.Generator().manual_seed(int(bias))
    dims = _dims()
    w = MambaWeights(*_on(torch.randn(dims.conv_dim, 1, dims.kernel, generator=g),
                          torch.randn(dims.conv_dim, generator=g) if bias else None,
                          torch.randn(dims.nheads, generator=g), torch.randn(dims.nheads, generator=g),
                          torch.randn(dims.nheads, generator=g), torch.randn(dims.d_inner, generator=g)))
    b = 3
    conv_state = torch.randn(b, dims.kernel - 1, dims.conv_dim, generator=g)
    ssm_state = torch.randn(b, dims.nheads, dims.headdim, dims.dstate, generator=g)
    conv_state, ssm_state = _on(conv_state, ssm_state)
    for step in range(3):  # the states carry over
        zxbcdt = _on(torch.randn(b, dims.d_inner + dims.conv_dim + dims.nheads, generator=g))
        y_ref, conv_ref, ssm_ref = mamba_step_ref(zxbcdt, w, dims, conv_state, ssm_state)
        y, conv_state, ssm_state = kernels.mamba_step_triton(zxbcdt, w, dims, conv_state.clone(), ssm_state.clone())
        diff = max(float((y - y_ref).abs().max()), float((conv_state - conv_ref).abs().max()),
                   float((ssm_state - ssm_ref).abs().max()))
        print(f"decode step {step} (bias={bias}): {diff:.2e}")
        assert diff <= TOL


@pytest.mark.parametrize("b, L, ch, docs, bias", [(2, 37, 40, 1, True), (1, 50, 24, 3, False), (3, 5, 8, 2, True)])
def test_the_sequence_conv_is_conv_silu_ref(kernels, b, L, ch, docs, bias):
    from rlvr.kernels.mamba import conv_silu_ref

    g = torch.Generator().manual_seed(L)
    wide = torch.randn(b, L, ch + 7, generator=g)  # a strided slice, as the mixer passes it
    x = wide[..., 3:3 + ch]
    w = torch.randn(ch, 4, generator=g)
    bias_t = torch.randn(ch, generator=g) if bias else None
    seq_idx = None
    if docs > 1:
        row = torch.zeros(L, dtype=torch.long)
        for cut in sorted(torch.randperm(L - 1, generator=g)[:docs - 1].add(1).tolist()):
            row[cut:] += 1
        seq_idx = row.expand(b, L).contiguous()
    x, w, bias_t, seq_idx = _on(x, w, bias_t, seq_idx)
    ref = conv_silu_ref(x, w, bias_t, None, seq_idx)
    got = kernels.conv_silu_triton(x, w, bias_t, None, seq_idx)
    diff = float((ref - got).abs().max())
    print(f"sequence conv b={b} L={L} ch={ch} docs={docs} bias={bias}: {diff:.2e}")
    assert diff <= TOL


def _max_diffs(ref: list, got: list) -> float:
    return max(float((r - g).abs().max()) for r, g in zip(ref, got) if r is not None)


def _grads(fn, inputs: list, seed: int):
    """fn's outputs and the gradients of a random projection of them w.r.t. every input."""
    leaves = [t.detach().to(DEVICE).clone().requires_grad_() if t is not None else None for t in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator().manual_seed(seed)
    sum((o * torch.randn(o.shape, generator=g).to(o.device)).sum() for o in outs).backward()
    return [o.detach() for o in outs], [t.grad if t is not None else None for t in leaves]


def _packed(b: int, L: int, docs: int, g: torch.Generator) -> torch.Tensor | None:
    if docs == 1:
        return None
    cuts = torch.sort(torch.randint(1, L, (b, docs - 1), generator=g), dim=1).values
    return _on((torch.arange(L)[None, :, None] >= cuts[:, None, :]).sum(-1))


@pytest.mark.parametrize("b, L, ch, docs, bias", [(2, 37, 40, 1, True), (1, 50, 24, 3, False), (3, 5, 8, 2, True)])
def test_the_sequence_conv_backward_is_the_references(kernels, b, L, ch, docs, bias):
    from rlvr.kernels.mamba import conv_silu_ref

    g = torch.Generator().manual_seed(L + 1)
    x, w = torch.randn(b, L, ch, generator=g), torch.randn(ch, 4, generator=g)
    bias_t = torch.randn(ch, generator=g) if bias else None
    seq_idx = _packed(b, L, docs, g)
    ref = _grads(lambda x, w, bias: conv_silu_ref(x, w, bias, None, seq_idx), [x, w, bias_t], seed=L)
    got = _grads(lambda x, w, bias: kernels.conv_silu_triton(x, w, bias, None, seq_idx), [x, w, bias_t], seed=L)
    fwd, bwd = _max_diffs(ref[0], got[0]), _max_diffs(ref[1], got[1])
    print(f"sequence conv b={b} L={L} ch={ch} docs={docs} bias={bias}: forward {fwd:.2e}, gradients {bwd:.2e}")
    assert fwd <= TOL and bwd <= TOL


@pytest.mark.parametrize("rows, dim, group_size", [(5, 32, 16), (3, 48, 48), (1, 40, 10)])
def test_the_gated_norm_and_its_backward_are_the_references(kernels, rows, dim, group_size):
    from rlvr.kernels.mamba import gated_rms_norm

    g = torch.Generator().manual_seed(dim)
    y, z, w = torch.randn(2, rows, dim, generator=g), torch.randn(2, rows, dim, generator=g), torch.randn(dim, generator=g)
    ref = _grads(lambda y, z, w: gated_rms_norm(y, z, w, group_size, 1e-5), [y, z, w], seed=rows)
    got = _grads(lambda y, z, w: kernels.gated_norm_triton(y, z, w, group_size, 1e-5), [y, z, w], seed=rows)
    fwd, bwd = _max_diffs(ref[0], got[0]), _max_diffs(ref[1], got[1])
    print(f"gated norm rows={rows} dim={dim} group={group_size}: forward {fwd:.2e}, gradients {bwd:.2e}")
    assert fwd <= TOL and bwd <= TOL


SCAN_CASES = [  # (b, L, heads, groups, headdim, dstate, initial state, documents per row)
    (2, 150, 4, 2, 8, 16, True, 3),  # three chunks of 64, the last one padded; packed rows
    (1, 64, 2, 1, 16, 8, False, 1),  # exactly one chunk
    (2, 129, 2, 2, 4, 4, True, 1),  # a token past two whole chunks; one head per group
    (1, 7, 3, 1, 8, 8, False, 2),  # shorter than a chunk
]


@pytest.mark.parametrize("b, L, h, ngroups, p, n, init, docs", SCAN_CASES)
def test_the_chunked_scan_and_its_backward_are_the_references(kernels, b, L, h, ngroups, p, n, init, docs):
    from rlvr.kernels.ssd import ssd_chunk_scan
    from rlvr.kernels.triton_scan import ssd_chunk_scan_triton

    g = torch.Generator().manual_seed(L * h)
    inputs = [torch.randn(b, L, h, p, generator=g), torch.rand(b, L, h, generator=g) * 0.5,
              -torch.rand(h, generator=g) - 0.1, torch.randn(b, L, ngroups, n, generator=g),
              torch.randn(b, L, ngroups, n, generator=g), torch.randn(h, generator=g),
              torch.randn(b, h, p, n, generator=g) if init else None]
    seq_idx = _packed(b, L, docs, g)
    ref = _grads(lambda *t: ssd_chunk_scan(*t[:6], 16, initial_state=t[6], seq_idx=seq_idx), inputs, seed=b)
    got = _grads(lambda *t: ssd_chunk_scan_triton(*t[:6], 16, initial_state=t[6], seq_idx=seq_idx), inputs, seed=b)
    fwd = _max_diffs(ref[0], got[0])
    names = ["dx", "ddt", "dA", "dB", "dC", "dD", "d initial state"]
    rel = {nm: float((r - t).abs().max() / r.abs().max().clamp(min=1)) for nm, r, t in zip(names, ref[1], got[1])
           if r is not None}
    print(f"chunked scan b={b} L={L} h={h} groups={ngroups} p={p} n={n} init={init} docs={docs}: "
          f"forward {fwd:.2e}; gradients (relative to max(1, |grad|)) " + ", ".join(f"{k} {v:.1e}" for k, v in rel.items()))
    assert fwd <= DOT_TOL and max(rel.values()) <= DOT_TOL  # (dA sums every token's term: absolute error grows with L)


def test_the_triton_mixer_trains_as_the_reference(kernels):
    """The whole mixer (conv, scan, gated norm), right-padded rows, gradients of every weight."""
    from rlvr.kernels.mamba import MambaWeights, mamba_chunk_ref

    g = torch.Generator().manual_seed(5)
    dims = _dims()
    w = MambaWeights(torch.randn(dims.conv_dim, 1, dims.kernel, generator=g), torch.randn(dims.conv_dim, generator=g),
                     torch.randn(dims.nheads, generator=g), torch.randn(dims.nheads, generator=g) * 0.5,
                     torch.randn(dims.nheads, generator=g), torch.randn(dims.d_inner, generator=g))
    b, L = 2, 70
    zxbcdt = torch.randn(b, L, dims.d_inner + dims.conv_dim + dims.nheads, generator=g)
    lengths = _on(torch.tensor([70, 41]))

    def run(fn):
        def call(zxbcdt, *weights):
            return fn(zxbcdt, MambaWeights(*weights), dims, lengths=lengths)
        return _grads(call, [zxbcdt, *w], seed=3)

    ref, got = run(mamba_chunk_ref), run(kernels.mamba_chunk_triton)
    fwd = _max_diffs(ref[0], got[0])
    bwd = max(float((r - t).abs().max() / r.abs().max().clamp(min=1)) for r, t in zip(ref[1], got[1]) if r is not None)
    print(f"mixer (triton stages) forward {fwd:.2e}, gradients (relative to max(1, |grad|)) {bwd:.2e}")
    assert fwd <= DOT_TOL and bwd <= DOT_TOL  # (dA_log and dt_bias sum over every token: relative)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernels)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_cuda_the_mixer_trains_as_the_fp32_reference_at_8k_tokens(kernels, dtype):
    """Compiled kernels (tf32/bf16 tensor-core dots): bounded relative to the fp32 reference."""
    from rlvr.kernels.mamba import MambaDims, MambaWeights, mamba_chunk_ref

    g = torch.Generator().manual_seed(8)
    dims = MambaDims(d_inner=1024, nheads=16, headdim=64, ngroups=2, dstate=128, kernel=4, chunk_size=128,
                     eps=1e-5, dt_limit=(0.0, float("inf")))
    w = [torch.randn(dims.conv_dim, 1, dims.kernel, generator=g) * 0.3, torch.randn(dims.conv_dim, generator=g) * 0.1,
         torch.rand(dims.nheads, generator=g) - 4, torch.rand(dims.nheads, generator=g), torch.randn(dims.nheads, generator=g),
         1 + 0.1 * torch.randn(dims.d_inner, generator=g)]
    zxbcdt = torch.randn(1, 8192, dims.d_inner + dims.conv_dim + dims.nheads, generator=g)
    seq_idx = (torch.arange(8192) >= 5000).long()[None]  # two packed documents

    def run(fn, device, dt):
        leaves = [t.to(device, dt).requires_grad_() for t in [zxbcdt, *w]]
        y, state = fn(leaves[0], MambaWeights(*leaves[1:]), dims, seq_idx=seq_idx.to(device))
        (y * torch.linspace(-1, 1, y.shape[-1], device=device)).sum().backward()
        return [y.float().cpu(), state.float().cpu()] + [t.grad.float().cpu() for t in leaves]

    ref, got = run(mamba_chunk_ref, "cpu", torch.float32), run(kernels.mamba_chunk_triton, "cuda", dtype)
    rel = [float((r - t).norm() / r.norm()) for r, t in zip(ref, got)]
    print(f"cuda mixer at 8K tokens ({dtype}): relative L2 errors " + ", ".join(f"{e:.1e}" for e in rel))
    assert max(rel) <= (2e-2 if dtype == torch.bfloat16 else 5e-3)


def test_the_model_runs_on_the_triton_backend_as_on_the_reference(kernels):
    """Every Mamba call of the model through the dispatch, on the Triton kernels (named backend;
    here CPU tensors under the interpreter): a packed training forward + backward, then a
    right-padded prefill into the cache and decode steps (the decode step's Triton updates)."""
    import rlvr.kernels as K
    import rlvr.model as M

    torch.manual_seed(0)
    model = M.from_preset("tiny", pattern="MEM*EM", initializer_range=0.1).to(DEVICE)
    ids, seq_idx = torch.randint(0, 256, (2, 70)), torch.tensor([[0] * 30 + [1] * 40] * 2)
    lengths, follow = torch.tensor([9, 13]), torch.randint(0, 256, (2, 3))
    ids, seq_idx, lengths, follow = _on(ids, seq_idx, lengths, follow)
    got = {}
    try:
        for backend in ("torch", "triton"):
            K.set_backend(backend)
            model.zero_grad()
            logits = model(ids, seq_idx=seq_idx)
            logits.float().log_softmax(-1).mean().backward()
            with torch.no_grad():
                cache = model.new_cache()
                prefill = model(ids[:, :13], cache=cache, lengths=lengths)
                steps = torch.stack([model.step(follow[:, t], cache) for t in range(3)], dim=1)
            got[backend] = [logits.detach(), prefill, steps] + [p.grad for p in model.parameters() if p.grad is not None]
    finally:
        K.set_backend("auto")
    diff = max(float((a - b).abs().max() / a.abs().max().clamp(min=1)) for a, b in zip(got["torch"], got["triton"]))
    print(f"model on the triton backend vs the reference: logits, cached decode, gradients within {diff:.2e}")
    assert diff <= DOT_TOL


def test_a_scan_too_large_for_32_bit_offsets_is_refused(kernels):
    from rlvr.kernels.triton_scan import ssd_chunk_scan_triton

    x = torch.empty(1, 64, 1, 1).expand(2 ** 16, 64, 512, 64)  # (no memory: a broadcast view)
    B = torch.empty(1, 64, 1, 1).expand(2 ** 16, 64, 1, 64)
    with pytest.raises(ValueError, match="32-bit offsets: split the batch"):
        ssd_chunk_scan_triton(x, torch.empty(1, 1, 1).expand(2 ** 16, 64, 512), torch.empty(512), B, B, torch.empty(512), 64)


def test_prefill_and_decode_agree_on_the_triton_path(kernels):
    """The builtin engine on the Triton kernels: its samples' log-probs from decode steps (the
    Triton state update) against one prefill over each sequence (the Triton chunked scan), the
    gap a learner on the prefill path sees (printed, bounded)."""
    import rlvr.kernels as K
    import rlvr.model as M
    from rlvr.rollout.builtin import BuiltinEngine
    from rlvr.rollout.engine import SamplingParams
    from rlvr.tokenizer import ByteTokenizer

    torch.manual_seed(0)
    engine = BuiltinEngine(M.from_preset("tiny", initializer_range=0.1).to(DEVICE), ByteTokenizer())
    K.set_backend("triton")
    try:
        completions = engine.generate(["1+1=", "The quick brown fox"],
                                      SamplingParams(max_tokens=6, n=2, seed=3, prefill_logprobs=True))
    finally:
        K.set_backend("auto")
    gap = torch.tensor([abs(p - d) for c in completions for p, d in zip(c.prefill_logprobs, c.logprobs)])
    print(f"triton path: |prefill - decode| mean {gap.mean():.2e}, max {gap.max():.2e} over {len(gap)} tokens")
    assert len(gap) == sum(len(c.token_ids) for c in completions) and gap.max() <= DOT_TOL
