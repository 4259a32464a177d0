"""Packed rows through a variable-length kernel (``attention_packed``) equal the dense-mask
reference: the documents found from ``seq_idx``, causal within each, none across. On CPU the
kernel is its torch twin (``attention_varlen_ref``); on CUDA torch's flash ``varlen_attn``."""

import pytest
import torch

from rlvr.kernels.attention import attention_packed, attention_ref, attention_varlen_ref, documents


def test_documents_are_runs_of_seq_idx_within_each_row():
    seq_idx = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1]])
    cu, longest = documents(seq_idx)
    assert cu.tolist() == [0, 2, 5, 6, 7, 12] and cu.dtype == torch.int32 and longest == 5
    # rows never share a document, even with the same index
    assert documents(torch.zeros(3, 4, dtype=torch.long))[0].tolist() == [0, 4, 8, 12]


def _packed(b, heads, kv_heads, L, d, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(b, h, L, d, generator=g).to(device, dtype) for h in (heads, kv_heads, kv_heads))
    lengths = torch.randint(1, L, (b, 4), generator=g)
    seq_idx = torch.stack([torch.repeat_interleave(torch.arange(4), r)[:L] for r in lengths])
    seq_idx = torch.cat([seq_idx, torch.full((b, max(0, L - seq_idx.shape[1])), 4)], dim=1)[:, :L]
    return q, k, v, seq_idx.to(device)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_the_varlen_path_equals_the_dense_mask(heads, kv_heads):
    q, k, v, seq_idx = _packed(3, heads, kv_heads, 29, 8)
    want = attention_ref(q, k, v, seq_idx=seq_idx)
    got = attention_packed(q, k, v, seq_idx, varlen=attention_varlen_ref)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's flash varlen_attn needs a CUDA GPU")
def test_flash_varlen_equals_the_dense_mask_on_cuda():
    from rlvr.kernels import attention

    q, k, v, seq_idx = _packed(2, 32, 2, 1024, 128, torch.bfloat16, "cuda")
    want = attention_ref(q.float(), k.float(), v.float(), seq_idx=seq_idx)
    got = attention(q, k, v, seq_idx=seq_idx)  # (dispatches to attention_packed)
    assert (got.float() - want).abs().max() < 2e-2
