"""The fused CPU Mamba kernel against the torch reference, on the same inputs."""

import pytest
import torch

from rlvr.kernels import cpu
from rlvr.kernels.attention import attention_ref
from rlvr.kernels.mamba import MambaDims, MambaWeights, mamba_chunk_ref, mamba_step_ref
from rlvr.kernels.moe import MoEDims, MoEWeights, moe_routed_ref
from rlvr.kernels.norm import rms_norm_ref
from rlvr.kernels.sampling import sample_ref

pytestmark = pytest.mark.skipif(cpu.find_compiler() is None, reason="no C compiler on this machine (the kernels are built with it)")

DIMS = MambaDims(d_inner=32, nheads=4, headdim=8, ngroups=2, dstate=6, kernel=4, chunk_size=8, eps=1e-5,
                 dt_limit=(0.0, float("inf")))


def _weights(dims=DIMS, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return MambaWeights(r(dims.conv_dim, 1, dims.kernel) * 0.5, r(dims.conv_dim) if bias else None,
                        r(dims.nheads), torch.rand(dims.nheads, generator=g), r(dims.nheads), 1 + 0.1 * r(dims.d_inner))


def _zxbcdt(b, L, dims=DIMS, seed=1):
    return torch.randn(b, L, dims.d_inner + dims.conv_dim + dims.nheads, generator=torch.Generator().manual_seed(seed))


def _report(name, got, want):
    diff = (got - want).abs()
    print(f"{name}: max |cpu - ref| {diff.max():.2e}, mean {diff.mean():.2e}")
    assert diff.max() <= 1e-4


@pytest.mark.parametrize("bias", [True, False])
def test_sequence_matches_reference(bias):
    w, zxbcdt = _weights(bias=bias), _zxbcdt(3, 45)
    y, state = cpu.mamba_chunk_cpu(zxbcdt, w, DIMS)
    y_ref, state_ref = mamba_chunk_ref(zxbcdt, w, DIMS)
    _report("sequence y", y, y_ref)
    _report("sequence final state", state, state_ref)


def test_continuation_packing_and_padding_match_reference():
    w, zxbcdt = _weights(), _zxbcdt(2, 30)
    conv_prev, init = torch.randn(2, DIMS.kernel - 1, DIMS.conv_dim), torch.randn(2, 4, 8, 6)
    for name, kwargs in {
        "continuing": dict(conv_prev=conv_prev, initial_state=init),
        "packed": dict(seq_idx=torch.tensor([[0] * 7 + [1] * 13 + [2] * 10, [0] * 29 + [1]])),
        "right-padded": dict(lengths=torch.tensor([30, 17])),
    }.items():
        y, state = cpu.mamba_chunk_cpu(zxbcdt, w, DIMS, **kwargs)
        y_ref, state_ref = mamba_chunk_ref(zxbcdt, w, DIMS, **kwargs)
        _report(f"{name} y", y, y_ref)
        _report(f"{name} state", state, state_ref)


def test_time_step_limit_is_applied():
    dims = MambaDims(**{**DIMS.__dict__, "dt_limit": (0.05, 0.3)})
    w, zxbcdt = _weights(dims), _zxbcdt(1, 20, dims)
    _report("clamped dt", cpu.mamba_chunk_cpu(zxbcdt, w, dims)[0], mamba_chunk_ref(zxbcdt, w, dims)[0])


def test_decode_steps_match_reference_and_update_states_in_place():
    w, zxbcdt = _weights(), _zxbcdt(3, 6)
    conv, ssm = torch.randn(3, DIMS.kernel - 1, DIMS.conv_dim), torch.randn(3, 4, 8, 6)
    conv_ref, ssm_ref = conv.clone(), ssm.clone()
    for t in range(6):
        y, conv_out, ssm_out = cpu.mamba_step_cpu(zxbcdt[:, t], w, DIMS, conv, ssm)
        assert conv_out is conv and ssm_out is ssm  # the cache's own tensors, no copy
        y_ref, conv_ref, ssm_ref = mamba_step_ref(zxbcdt[:, t], w, DIMS, conv_ref, ssm_ref)
        _report(f"step {t} y", y, y_ref)
    _report("conv state", conv, conv_ref)
    _report("ssm state", ssm, ssm_ref)


def test_weight_change_is_seen_by_the_next_call():
    w, zxbcdt = _weights(), _zxbcdt(1, 10)
    before = cpu.mamba_chunk_cpu(zxbcdt, w, DIMS)[0]
    with torch.no_grad():
        w.conv_weight.mul_(2)  # in place, as a weight sync does
    after = cpu.mamba_chunk_cpu(zxbcdt, w, DIMS)[0]
    assert not torch.allclose(before, after)
    _report("after an in-place update", after, mamba_chunk_ref(zxbcdt, w, DIMS)[0])


@pytest.mark.parametrize("shape", [dict(E=8, k=2, d=64, I=32, norm=True), dict(E=6, k=3, d=20, I=13, norm=False),
                                   dict(E=16, k=4, d=40, I=72, norm=True)])
def test_moe_matches_reference(shape):
    g = torch.Generator().manual_seed(0)
    E, k, d, I = shape["E"], shape["k"], shape["d"], shape["I"]
    dims = MoEDims(n_experts=E, top_k=k, n_group=1, topk_group=1, norm_topk_prob=shape["norm"], scale=2.5)
    w = MoEWeights(torch.randn(E, d, generator=g), torch.randn(E, generator=g) * 0.1,
                   torch.randn(E, I, d, generator=g) * 0.2, torch.randn(E, d, I, generator=g) * 0.2)
    x = torch.randn(300, d, generator=g)
    chosen, want = torch.empty(300, k, dtype=torch.long), torch.empty(300, k, dtype=torch.long)
    _report(f"moe {shape}", cpu.moe_routed_cpu(x, x, w, dims, chosen), moe_routed_ref(x, x, w, dims, chosen_out=want))
    # the experts it records (an engine's, for routing replay) are the reference's choice
    assert torch.equal(chosen.sort(-1).values, want.sort(-1).values)


def test_moe_latent_input_differs_from_router_input():
    g = torch.Generator().manual_seed(1)
    dims = MoEDims(n_experts=8, top_k=2, n_group=1, topk_group=1, norm_topk_prob=True, scale=1.0)
    w = MoEWeights(torch.randn(8, 48, generator=g), torch.zeros(8), torch.randn(8, 16, 24, generator=g) * 0.2,
                   torch.randn(8, 24, 16, generator=g) * 0.2)
    xr, x = torch.randn(50, 48, generator=g), torch.randn(50, 24, generator=g)
    _report("latent moe", cpu.moe_routed_cpu(xr, x, w, dims), moe_routed_ref(xr, x, w, dims))


def _qkv(b, nh, nkv, Lq, keys, hd, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, nh, Lq, hd, generator=g), torch.randn(b, nkv, keys, hd, generator=g),
            torch.randn(b, nkv, keys, hd, generator=g))


@pytest.mark.parametrize("nh,nkv,hd", [(4, 2, 16), (4, 4, 64), (6, 1, 20)])
def test_attention_causal_prefill_matches_reference(nh, nkv, hd):
    q, k, v = _qkv(2, nh, nkv, 150, 150, hd)  # 150 keys: more than one block of 64
    _report(f"attention {nh}/{nkv}x{hd}", cpu.attention_cpu(q, k, v), attention_ref(q, k, v))


def test_attention_over_a_cache_with_rows_of_different_lengths():
    q, k, v = _qkv(3, 4, 2, 1, 200, 16, seed=1)  # one decode token, a cache of capacity 200
    past = torch.tensor([0, 57, 130])
    _report("decode attention", cpu.attention_cpu(q, k, v, past), attention_ref(q, k, v, past))
    q, k, v = _qkv(2, 4, 2, 9, 40, 16, seed=2)  # a prefill continuing after 31 cached keys
    past = torch.tensor([31, 31])
    _report("continued prefill attention", cpu.attention_cpu(q, k, v, past), attention_ref(q, k, v, past))


def test_attention_keeps_packed_documents_apart():
    q, k, v = _qkv(2, 4, 2, 30, 30, 16, seed=3)
    seq_idx = torch.tensor([[0] * 7 + [1] * 13 + [2] * 10, [0] * 30])
    _report("packed attention", cpu.attention_cpu(q, k, v, seq_idx=seq_idx), attention_ref(q, k, v, seq_idx=seq_idx))
    alone = attention_ref(q[:1, :, 7:20], k[:1, :, 7:20], v[:1, :, 7:20])
    _report("packed document vs alone", cpu.attention_cpu(q, k, v, seq_idx=seq_idx)[:1, 7:20], alone)


def test_attention_reads_strided_projections():
    q, k, v = _qkv(2, 4, 2, 33, 33, 16, seed=4)
    # as the model hands them over: (b, L, heads, hd) memory viewed as (b, heads, L, hd)
    qs, ks, vs = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    _report("strided attention", cpu.attention_cpu(qs, ks, vs), attention_ref(q, k, v))


def test_rms_norm_matches_reference():
    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(7, 33, 70, generator=g) * 3, torch.rand(70, generator=g) + 0.5
    _report("rms norm", cpu.rms_norm_cpu(x, w, 1e-5), rms_norm_ref(x, w, 1e-5))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_matches_reference(temperature):
    g = torch.Generator().manual_seed(6)
    logits, uniform = torch.randn(2000, 300, generator=g) * 3, torch.rand(2000, generator=g)
    tokens, logprobs = cpu.sample_cpu(logits, temperature, uniform)
    want_tokens, want_logprobs = sample_ref(logits, temperature, uniform)
    same = tokens == want_tokens
    # A uniform number within float rounding of a CDF step may pick the neighbour: rare.
    print(f"T={temperature}: same token in {same.float().mean():.2%} of rows")
    assert same.float().mean() > 0.995
    _report("sampled log-probs", logprobs[same], want_logprobs[same])


def _route(model, other, route):
    """Change ``model``'s weights the way a user or a library might."""
    params = dict(model.named_parameters())
    new = dict(other.named_parameters())
    with torch.no_grad():
        if route == "to_bfloat16":
            model.to(torch.bfloat16)
        elif route == "double":
            model.double()
        elif route == "data_assign":  # p.data = ... (DeepSpeed ZeRO-1/2 write steps this way)
            for n, p in params.items():
                p.data = new[n].data.clone()
        elif route == "data_copy":  # p.data.copy_(...): leaves p's version counter alone
            for n, p in params.items():
                p.data.copy_(new[n].data)
        elif route == "load_state_dict":
            model.load_state_dict(other.state_dict())
        elif route == "copy_no_grad":
            for n, p in params.items():
                p.copy_(new[n])


@pytest.mark.parametrize("route", ["to_bfloat16", "double", "data_assign", "data_copy", "load_state_dict", "copy_no_grad"])
def test_the_c_path_follows_weights_changed_by_any_route(route):
    """A cached kernel layout went stale under p.data / .to(dtype) (NaN logits, 0.41 off)."""
    import rlvr.kernels as K
    import rlvr.model as M
    from rlvr.model.config import tiny

    torch.manual_seed(0)
    model = M.HybridLM(tiny(initializer_range=0.1)).eval()
    torch.manual_seed(1)
    other = M.HybridLM(tiny(initializer_range=0.1))
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        model(ids)  # the first forward, as before any change
        with K.frozen_weights():
            model(ids)
        _route(model, other, route)
        fast = model(ids)
        K.set_backend("torch")
        try:
            ref = model(ids)
        finally:
            K.set_backend("auto")
    diff = (fast - ref).abs().max().item()
    print(f"{route}: C path vs torch path after the change {diff:.2e}")
    assert torch.isfinite(fast).all() and diff < (0.1 if route == "to_bfloat16" else 1e-4)


def test_huge_vocabulary_and_huge_moe_batches_do_not_overflow_the_stack():
    """Per-row and per-block arrays lived on the stack: SIGSEGV above ~2.1M vocabulary entries
    or ~2.1M token x top-k slots (350k tokens at Nemotron 3 Nano's top-6)."""
    g = torch.Generator().manual_seed(0)
    logits, uniform = torch.randn(2, 3_000_000, generator=g), torch.rand(2, generator=g)
    tokens, logprobs = cpu.sample_cpu(logits, 1.0, uniform)
    # Over 3M terms fp32 sums differ by rounding, so the draw is checked in float64: the token's
    # place in the CDF is the uniform number (to 1e-3: fp32 running sums), and its log-prob is its own.
    probs = torch.softmax(logits.double(), -1)
    cdf = probs.cumsum(-1)
    for r in range(2):
        t = int(tokens[r])
        assert cdf[r, t] - probs[r, t] - 1e-3 <= uniform[r] <= cdf[r, t] + 1e-3
        assert abs(float(logprobs[r]) - float(torch.log(probs[r, t]))) < 1e-4
    dims = MoEDims(n_experts=8, top_k=6, n_group=1, topk_group=1, norm_topk_prob=True, scale=2.5)
    w = MoEWeights(torch.randn(8, 4, generator=g), torch.zeros(8), torch.randn(8, 4, 4, generator=g) * 0.2,
                   torch.randn(8, 4, 4, generator=g) * 0.2)
    x = torch.randn(400_000, 4, generator=g)  # 2.4M slots
    _report("moe, 400k tokens x top-6", cpu.moe_routed_cpu(x, x, w, dims), moe_routed_ref(x, x, w, dims))


def test_huge_empty_asks_for_huge_pages_for_its_own_pages_only():
    from rlvr.kernels.cpu import HUGE_PAGE, _madvise, huge_empty

    t = huge_empty(3, 4 << 20)  # 48 MiB: glibc maps it apart from the heap
    assert t.shape == (3, 4 << 20) and t.dtype == torch.float32
    t.fill_(2.0)
    assert float(t.sum()) == 2.0 * t.numel()
    if _madvise() is None:  # (transparent huge pages off or always on: nothing to ask)
        return
    start = -(-t.data_ptr() // HUGE_PAGE) * HUGE_PAGE
    flags = {}  # mapping start -> VmFlags, from /proc/self/smaps
    lo = None
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo = int(head.split("-")[0], 16)
        elif head == "VmFlags:":
            flags[lo] = line.split()[1:]
    region = max(k for k in flags if k <= start)
    assert "hg" in flags[region], flags[region]  # MADV_HUGEPAGE took
