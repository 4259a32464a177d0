"""Dropping finished rows from a decode cache: the in-place form (only moved rows copied) keeps
exactly the rows a plain gather keeps."""

import torch

import rlvr.model as M
from rlvr.model.cache import drop_rows


def _filled_cache(model, rows: int, length: int):
    cache = model.new_cache()
    ids = torch.randint(0, model.config.vocab_size, (rows, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids, cache=cache)
    return cache


def _states(cache) -> list[torch.Tensor]:
    out = []
    for layer in cache.layers:
        if layer is None:
            continue
        out += [layer.conv_state, layer.ssm_state] if hasattr(layer, "ssm_state") else [layer.k, layer.v, layer.lengths]
    return out


def test_drop_rows_keeps_the_kept_rows_and_moves_only_from_the_tail():
    keep = torch.tensor([True, False, True, True, False, False, True, True, False, True])
    rows = drop_rows(keep)
    assert sorted(rows.tolist()) == keep.nonzero()[:, 0].tolist()
    n = len(rows)
    assert all(r == i or r >= n for i, r in enumerate(rows.tolist()))  # stays, or comes from past the cut
    assert drop_rows(torch.ones(4, dtype=torch.bool)).tolist() == [0, 1, 2, 3]
    assert drop_rows(torch.zeros(3, dtype=torch.bool)).tolist() == []


def test_dropping_in_place_equals_a_gather():
    model = M.HybridLM(M.config.tiny(initializer_range=0.1)).eval()
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        keep = torch.rand(12, generator=g) < 0.6
        fast, slow = _filled_cache(model, 12, 7), _filled_cache(model, 12, 7)
        rows = fast.drop(keep)
        assert torch.equal(rows, drop_rows(keep))
        slow.select(rows)  # the plain gather
        for a, b in zip(_states(fast), _states(slow)):
            assert a.shape == b.shape and torch.equal(a, b)
        # a decode step on what is left reads the same states
        last = torch.randint(0, 200, (len(rows),), generator=g)
        with torch.no_grad():
            assert torch.equal(model.step(last, fast), model.step(last, slow))
