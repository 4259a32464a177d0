import pytest
import torch
import torch.nn.functional as F

from rlvr.kernels.ssd import segsum, ssd_chunk_scan, ssd_scan_ref


def _inputs(b=2, L=37, h=4, p=8, g=2, n=6, seed=0):
    torch.manual_seed(seed)
    return dict(x=torch.randn(b, L, h, p), dt=F.softplus(torch.randn(b, L, h)), A=-torch.rand(h) - 0.1,
                B=torch.randn(b, L, g, n), C=torch.randn(b, L, g, n), D=torch.randn(h))


@pytest.mark.parametrize("chunk_size", [1, 8, 16, 64])
def test_chunked_equals_recurrence(chunk_size):
    args = _inputs()
    init = torch.randn(2, 4, 8, 6)
    y, s = ssd_chunk_scan(**args, chunk_size=chunk_size, initial_state=init)
    y_ref, s_ref = ssd_scan_ref(**args, initial_state=init)
    print(f"chunk {chunk_size}: max |y - y_ref| {(y - y_ref).abs().max():.2e}, mean {(y - y_ref).abs().mean():.2e}")
    assert torch.allclose(y, y_ref, atol=1e-4) and torch.allclose(s, s_ref, atol=1e-4)


def test_seq_idx_resets_state_at_document_boundaries():
    args = _inputs()
    seq_idx = torch.tensor([[0] * 5 + [1] * 12 + [2] * 20, [0] * 30 + [1] * 7])
    y, _ = ssd_chunk_scan(**args, chunk_size=8, seq_idx=seq_idx)
    y_ref, _ = ssd_scan_ref(**args, seq_idx=seq_idx)
    assert torch.allclose(y, y_ref, atol=1e-4)
    alone, _ = ssd_chunk_scan(**{k: (v[:1, 5:17] if v.dim() > 1 else v) for k, v in args.items()}, chunk_size=8)
    assert torch.allclose(y[:1, 5:17], alone, atol=1e-5)


def test_segsum_matches_definition():
    x = torch.randn(6)
    out = segsum(x)
    for i in range(6):
        for j in range(6):
            want = x[j + 1:i + 1].sum() if i >= j else -torch.inf
            assert torch.isclose(out[i, j], torch.as_tensor(want), atol=1e-6) or (want == -torch.inf and out[i, j] == -torch.inf)
