"""The Triton kernels against their torch references, on this CPU under TRITON_INTERPRET=1 (fp32:
the interpreter computes bf16 wrongly); max abs difference printed (-s). Skipped without triton."""

import importlib.util
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (pip install -e '.[triton]')")
TOL = 1e-4  # as the CPU kernels: fp32 sums in another order


@pytest.fixture(scope="module")
def kernels():
    assert os.environ.get("TRITON_INTERPRET") == "1"  # (conftest.py sets it before triton loads)
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
    w = MambaWeights(torch.randn(dims.conv_dim, 1, dims.kernel, generator=g),
                     torch.randn(dims.conv_dim, generator=g) if bias else None, torch.randn(dims.nheads, generator=g),
                     torch.randn(dims.nheads, generator=g), torch.randn(dims.nheads, generator=g),
                     torch.randn(dims.d_inner, generator=g))
    b = 3
    conv_state = torch.randn(b, dims.kernel - 1, dims.conv_dim, generator=g)
    ssm_state = torch.randn(b, dims.nheads, dims.headdim, dims.dstate, generator=g)
    for step in range(3):  # the states carry over
        zxbcdt = torch.randn(b, dims.d_inner + dims.conv_dim + dims.nheads, generator=g)
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
    ref = conv_silu_ref(x, w, bias_t, None, seq_idx)
    got = kernels.conv_silu_triton(x, w, bias_t, None, seq_idx)
    diff = float((ref - got).abs().max())
    print(f"sequence conv b={b} L={L} ch={ch} docs={docs} bias={bias}: {diff:.2e}")
    assert diff <= TOL
