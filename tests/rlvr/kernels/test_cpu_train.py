"""The CPU training kernels (conv + SiLU, SSD scan, gated norm, the mixer built from them): forward
and gradients against the torch reference, max abs difference printed (run with -s), <= 1e-4
(relative to the value's scale where it exceeds 1: dA sums over every token of a batch)."""

import dataclasses

import pytest
import torch

import rlvr.kernels as K
import rlvr.model as M
from rlvr.kernels import cpu
from rlvr.kernels.cpu_train import gated_norm_cpu, mamba_chunk_train, rms_norm_train, ssd_scan_cpu
from rlvr.kernels.mamba import MambaDims, MambaWeights, gated_rms_norm, mamba_chunk_ref
from rlvr.kernels.norm import rms_norm_ref
from rlvr.kernels.ssd import ssd_chunk_scan

pytestmark = pytest.mark.skipif(not cpu.available(), reason="no C compiler on this machine: no CPU kernels")
TOL = 1e-4


def _grads(fn, inputs, grad_out):
    out = fn(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    wanted = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return out, torch.autograd.grad(out, wanted, grad_out)


def _check(name, ref, fused):
    (r, gr), (f, gf) = ref, fused
    pairs = [(r.detach(), f.detach()), *zip(gr, gf)]
    diffs = [float((a - b).abs().max()) for a, b in pairs]
    print(f"{name}: forward {diffs[0]:.2e}, gradients " + ", ".join(f"{d:.2e}" for d in diffs[1:]))
    for (a, _), d in zip(pairs, diffs):
        assert d <= TOL * max(1.0, float(a.abs().max())), diffs


def _packed(b, L, docs, generator):
    cuts = sorted(torch.randperm(L - 1, generator=generator)[:docs - 1].add(1).tolist())
    row = torch.zeros(L, dtype=torch.long)
    for c in cuts:
        row[c:] += 1
    return row.expand(b, L).contiguous()


@pytest.mark.parametrize("shape, group", [((4, 9, 32), 8), ((2, 33, 48), 48), ((1, 1, 16), 4)])
def test_gated_norm(shape, group):
    g = torch.Generator().manual_seed(group)
    y, z = (torch.randn(*shape, generator=g, requires_grad=True) for _ in range(2))
    w = torch.randn(shape[-1], generator=g, requires_grad=True)
    go = torch.randn(*shape, generator=g)
    inputs = (y, z, w, group, 1e-5)
    _check(f"gated_norm {shape} group {group}", _grads(gated_rms_norm, inputs, go), _grads(gated_norm_cpu, inputs, go))


@pytest.mark.parametrize("shape", [(4, 9, 32), (2, 33, 768), (1, 1, 16)])
def test_rms_norm(shape):
    g = torch.Generator().manual_seed(shape[-1])
    x = torch.randn(*shape, generator=g, requires_grad=True)
    w = torch.randn(shape[-1], generator=g, requires_grad=True)
    go = torch.randn(*shape, generator=g)
    inputs = (x, w, 1e-5)
    _check(f"rms_norm {shape}", _grads(rms_norm_ref, inputs, go), _grads(rms_norm_train, inputs, go))


@pytest.mark.parametrize("b, L, h, p, g, n, docs, initial", [(2, 37, 4, 8, 2, 16, 1, False), (2, 150, 4, 8, 1, 16, 1, True),
                                                              (1, 130, 2, 4, 2, 8, 3, True), (3, 64, 6, 4, 3, 4, 2, False),
                                                              (1, 1, 2, 4, 1, 4, 1, True),
                                                              # the vector forms (headdim % 8 == 0, dstate 16 or 32)
                                                              (2, 150, 4, 16, 2, 16, 3, True), (1, 70, 2, 8, 1, 32, 2, False)])
def test_ssd_scan(b, L, h, p, g, n, docs, initial):
    gen = torch.Generator().manual_seed(L + h)
    x = torch.randn(b, L, h, p, generator=gen, requires_grad=True)
    dt = torch.rand(b, L, h, generator=gen).mul(0.5).requires_grad_()
    A = (-torch.rand(h, generator=gen) - 0.1).requires_grad_()
    B, C = (torch.randn(b, L, g, n, generator=gen, requires_grad=True) for _ in range(2))
    D = torch.randn(h, generator=gen, requires_grad=True)
    state = torch.randn(b, h, p, n, generator=gen, requires_grad=True) if initial else None
    seq_idx = _packed(b, L, docs, gen) if docs > 1 else None
    gy, gfinal = torch.randn(b, L, h, p, generator=gen), torch.randn(b, h, p, n, generator=gen)
    wanted = [x, dt, A, B, C, D] + ([state] if initial else [])

    def run(fn):
        y, final = fn(x, dt, A, B, C, D, 16, initial_state=state, seq_idx=seq_idx)
        return torch.cat([y.flatten(), final.flatten()]), torch.autograd.grad((y, final), wanted, (gy, gfinal))

    _check(f"ssd_scan b={b} L={L} h={h} g={g} docs={docs} initial={initial}", run(ssd_chunk_scan), run(ssd_scan_cpu))


def _mixer(g, b, L, initial, headdim=8, dstate=8):
    dims = MambaDims(d_inner=4 * headdim, nheads=4, headdim=headdim, ngroups=2, dstate=dstate, kernel=4, chunk_size=16,
                     eps=1e-5, dt_limit=(0.0, float("inf")))
    w = MambaWeights(*(torch.randn(*s, generator=g).mul_(0.5).requires_grad_() for s in
                       ((dims.conv_dim, 1, dims.kernel), (dims.conv_dim,), (dims.nheads,), (dims.nheads,),
                        (dims.nheads,), (dims.d_inner,))))
    zxbcdt = torch.randn(b, L, dims.d_inner + dims.conv_dim + dims.nheads, generator=g, requires_grad=True)
    state = torch.randn(b, dims.nheads, dims.headdim, dims.dstate, generator=g) if initial else None
    return zxbcdt, w, dims, state


INF = (0.0, float("inf"))


@pytest.mark.parametrize("b, L, docs, initial, padded, limits, sizes", [
    (2, 40, 1, False, False, INF, (8, 8)), (2, 47, 3, False, False, INF, (8, 8)), (3, 33, 1, True, True, INF, (8, 8)),
    (1, 16, 2, False, False, INF, (8, 8)),
    (2, 70, 2, True, True, (0.3, 1.2), (8, 8)),  # dt clamped at both ends: those tokens pass no gradient to dt
    (1, 1, 1, True, False, INF, (8, 8)),
    (2, 150, 4, True, True, INF, (16, 16)),  # the scan's vector form; conv tiles of 64 tokens, documents across them
])
def test_the_mixer_with_packed_rows_states_and_padding(b, L, docs, initial, padded, limits, sizes):
    """The fused mixer (``mamba_chunk_train``: conv, dt, scan and norm in one Function) against the
    reference: its output and final state, and the gradients of every input it takes."""
    g = torch.Generator().manual_seed(L + docs)
    zxbcdt, w, dims, state = _mixer(g, b, L, initial, *sizes)
    dims = dataclasses.replace(dims, dt_limit=limits)
    if state is not None:
        state.requires_grad_()
    seq_idx = _packed(b, L, docs, g) if docs > 1 else None
    lengths = torch.tensor([L - 3 * i for i in range(b)]) if padded else None
    go, gf = torch.randn(b, L, dims.d_inner, generator=g), torch.randn(b, dims.nheads, dims.headdim, dims.dstate, generator=g)
    wanted = [zxbcdt, *w] + ([state] if initial else [])

    def run(fn):
        y, final = fn(zxbcdt, w, dims, None, state, seq_idx, lengths)
        out = torch.cat([y.flatten(), final.flatten()])
        return out, torch.autograd.grad(out, wanted, torch.cat([go.flatten(), gf.flatten()]))

    _check(f"mamba mixer b={b} L={L} docs={docs} initial={initial} padded={padded} limits={limits} (p, n)={sizes}",
           run(mamba_chunk_ref), run(mamba_chunk_train))


def test_finite_differences_agree_with_the_backward():
    # fp32 kernels (no double path): central differences of the fused mixer on a small case,
    # with respect to in_proj's output (conv, dt, scan and norm all on the way), loose tolerance
    zxbcdt, w, dims, _ = _mixer(torch.Generator().manual_seed(1), 1, 5, False)
    w = MambaWeights(*(t.detach() for t in w))
    go = torch.randn(1, 5, dims.d_inner, generator=torch.Generator().manual_seed(2))
    (analytic,) = torch.autograd.grad(mamba_chunk_train(zxbcdt, w, dims)[0], zxbcdt, go)
    x, numeric, eps = zxbcdt.detach(), torch.zeros_like(zxbcdt), 1e-2
    with torch.no_grad():
        for i in range(x.numel()):
            d = torch.zeros(x.numel())
            d[i] = eps
            d = d.view_as(x)
            numeric.view(-1)[i] = ((mamba_chunk_train(x + d, w, dims)[0] - mamba_chunk_train(x - d, w, dims)[0]) * go
                                   ).sum() / (2 * eps)
    print(f"finite differences vs backward: max |diff| {float((analytic - numeric).abs().max()):.2e}")
    assert torch.allclose(analytic, numeric, atol=1e-2, rtol=1e-2), (analytic - numeric).abs().max()


def test_a_model_trains_alike_on_both_paths_and_under_checkpointing():
    torch.manual_seed(0)
    model = M.from_preset("tiny", pattern="MEM*EM", hidden_size=64, initializer_range=0.1)
    ids, seq_idx = torch.randint(0, 256, (3, 30)), torch.tensor([[0] * 12 + [1] * 18] * 3)
    got = {}
    for backend in ("torch", "auto"):
        K.set_backend(backend)
        model.zero_grad()
        logits = model(ids, seq_idx=seq_idx)
        logits.float().log_softmax(-1).mean().backward()
        got[backend] = logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]
    K.set_backend("auto")
    diff = max([float((got["torch"][0] - got["auto"][0]).abs().max())] +
               [float((a - b).abs().max()) for a, b in zip(got["torch"][1], got["auto"][1])])
    print(f"model logits and gradients, torch vs fused: {diff:.2e}")
    assert diff <= TOL
    # a recompute (gradient checkpointing) gives the very same values
    zxbcdt, w, dims, _ = _mixer(torch.Generator().manual_seed(3), 2, 24, False)
    y1 = torch.utils.checkpoint.checkpoint(mamba_chunk_train, zxbcdt, w, dims, use_reentrant=False)[0]
    (g1,) = torch.autograd.grad(y1.sum(), zxbcdt)
    (g2,) = torch.autograd.grad(mamba_chunk_train(zxbcdt, w, dims)[0].sum(), zxbcdt)
    assert torch.equal(g1, g2)
    # ... and so does the whole model's (attention, the experts' slot moves, norms) under its own
    # gradient checkpointing
    grads = []
    for enabled in (False, True):
        model.gradient_checkpointing_enable(enabled)
        model.zero_grad()
        model(ids, seq_idx=seq_idx).float().log_softmax(-1).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert model.training and len(grads[0]) == len(grads[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("shape, vocab", [((3, 7), 256), ((2, 5), 1000), ((1, 1), 3)])
def test_token_logprobs(shape, vocab):
    from rlvr.kernels.cpu_train import target_logprobs_cpu
    from rlvr.kernels.logprob import token_logprobs_ref

    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(*shape, vocab, generator=g).mul_(4).requires_grad_()
    ids = torch.randint(0, vocab, (shape[0], shape[1] + 1), generator=g)
    go = torch.randn(*shape, generator=g)
    (rl, re), (fl, fe) = token_logprobs_ref(logits, ids), target_logprobs_cpu(logits, ids[:, 1:])
    print(f"entropy {vocab}: {float((re - fe).detach().abs().max()):.2e}")
    assert torch.allclose(re.detach(), fe, atol=TOL) and not fe.requires_grad
    _check(f"token_logprobs {shape} vocab {vocab}", (rl, torch.autograd.grad(rl, logits, go)),
           (fl, torch.autograd.grad(fl, logits, go)))


def test_token_logprobs_consuming_the_logits_gives_the_same_gradients():
    """The learner's call: the gradient is written over the logits (a projection's output)."""
    from rlvr.kernels.cpu_train import target_logprobs_cpu

    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 7, 16, generator=g, requires_grad=True)
    head = torch.randn(300, 16, generator=g, requires_grad=True)
    ids = torch.randint(0, 300, (2, 8), generator=g)
    go = torch.randn(2, 7, generator=g)
    grads = []
    for consume in (False, True):
        logits = hidden @ head.t()
        logp, _ = target_logprobs_cpu(logits, ids[:, 1:], consume_logits=consume)
        grads.append(torch.autograd.grad(logp, (hidden, head), go))
        assert torch.equal(logits, hidden @ head.t()) != consume  # consumed: now holds the gradient
    for want, got in zip(*grads):
        assert torch.equal(want, got)


@pytest.mark.parametrize("shape", [(5, 7), (3, 1023, 64), (1,)])
def test_relu2(shape):
    from rlvr.kernels.cpu_train import relu2_train
    from rlvr.kernels.moe import relu2

    g = torch.Generator().manual_seed(len(shape))
    x = torch.randn(*shape, generator=g, requires_grad=True)
    go = torch.randn(*shape, generator=g)
    _check(f"relu2 {shape}", _grads(relu2, (x,), go), _grads(relu2_train, (x,), go))


@pytest.mark.parametrize("tokens, hidden, dim, experts, top_k, latent",
                         [(37, 24, 24, 6, 2, False), (5, 16, 16, 4, 3, False), (64, 32, 12, 8, 1, True)])
def test_routed_experts(tokens, hidden, dim, experts, top_k, latent):
    """Router, gather into expert slots, relu² experts, weighted combine: every input's gradient."""
    from rlvr.kernels.cpu_train import moe_routed_train
    from rlvr.kernels.moe import MoEDims, MoEWeights, moe_routed_ref

    g = torch.Generator().manual_seed(tokens)
    dims = MoEDims(n_experts=experts, top_k=top_k, n_group=1, topk_group=1, norm_topk_prob=True, scale=2.5)
    w = MoEWeights(*(t.requires_grad_() for t in (torch.randn(experts, hidden, generator=g),
                                                  torch.randn(experts, generator=g).mul_(0.1),
                                                  torch.randn(experts, 20, dim, generator=g) * 0.3,
                                                  torch.randn(experts, dim, 20, generator=g) * 0.3)))
    x_router = torch.randn(tokens, hidden, generator=g, requires_grad=True)
    # the Latent-MoE case: experts transform a projection of what the router reads
    x = torch.randn(tokens, dim, generator=g, requires_grad=True) if latent else x_router
    inputs = (x_router, x, w, dims)
    go = torch.randn(tokens, dim, generator=g)
    wanted = (x_router, w.router, w.up, w.down) + ((x,) if latent else ())  # the bias only picks experts
    ref = moe_routed_ref(*inputs), torch.autograd.grad(moe_routed_ref(*inputs), wanted, go)
    fused = moe_routed_train(*inputs), torch.autograd.grad(moe_routed_train(*inputs), wanted, go)
    _check(f"routed experts {tokens} tokens, {experts} experts, top {top_k}", ref, fused)


@pytest.mark.parametrize("b, L, nh, kvh, hd, docs", [(2, 21, 4, 2, 16, 1), (3, 37, 4, 4, 8, 3), (1, 130, 6, 2, 32, 2),
                                                     (2, 5, 2, 1, 12, 2), (1, 1, 2, 2, 16, 1), (1, 70, 4, 1, 64, 1),
                                                     (1, 257, 4, 2, 40, 5)])
def test_attention(b, L, nh, kvh, hd, docs):
    from rlvr.kernels.attention import attention_ref
    from rlvr.kernels.cpu_train import attention_train

    g = torch.Generator().manual_seed(L)
    # as the model makes them: projections (b, L, heads, hd) seen head-major
    q = torch.randn(b, L, nh, hd, generator=g).mul_(2).transpose(1, 2).requires_grad_()
    k, v = (torch.randn(b, L, kvh, hd, generator=g).transpose(1, 2).requires_grad_() for _ in range(2))
    seq_idx = _packed(b, L, docs, g) if docs > 1 else None
    go = torch.randn(b, L, nh, hd, generator=g)
    inputs = (q, k, v, None, seq_idx)
    ref = attention_ref(*inputs), torch.autograd.grad(attention_ref(*inputs), (q, k, v), go)
    fused = attention_train(*inputs), torch.autograd.grad(attention_train(*inputs), (q, k, v), go)
    _check(f"attention b{b} L{L} heads {nh}/{kvh} hd {hd} docs {docs}", ref, fused)
    assert all(gf.stride() == t.stride() for gf, t in zip(fused[1], (q, k, v)))  # the projections' layout


def test_attention_finite_differences_agree_with_the_backward():
    from rlvr.kernels.cpu_train import attention_train

    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=g, requires_grad=True) for _ in range(3))
    seq_idx, go = torch.tensor([[0, 0, 0, 1, 1, 1]]), torch.randn(1, 6, 2, 8, generator=g)
    analytic = torch.autograd.grad(attention_train(q, k, v, None, seq_idx), (q, k, v), go)
    eps = 1e-2
    for x, grad in zip((q, k, v), analytic):
        numeric = torch.zeros_like(x)
        with torch.no_grad():
            for i in range(x.numel()):
                x.view(-1)[i] += eps
                plus = (attention_train(q, k, v, None, seq_idx) * go).sum()
                x.view(-1)[i] -= 2 * eps
                minus = (attention_train(q, k, v, None, seq_idx) * go).sum()
                x.view(-1)[i] += eps
                numeric.view(-1)[i] = (plus - minus) / (2 * eps)
        print(f"attention finite differences vs backward: {float((grad - numeric).abs().max()):.2e}")
        assert torch.allclose(grad, numeric, atol=1e-2, rtol=1e-2)
