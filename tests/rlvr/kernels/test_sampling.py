"""The counter-based random numbers that drive sampling: uniform, independent streams, the same
bits from the C kernel and the torch reference."""

import torch

from rlvr.kernels import cpu
from rlvr.kernels.sampling import counter_uniform_ref
from rlvr.rollout.builtin import request_keys


def test_counter_uniform_is_uniform_and_a_function_of_key_and_position():
    keys = request_keys([[5, 6, 7]], 64, seed=1)
    draws = torch.stack([counter_uniform_ref(keys, torch.full((64,), t)) for t in range(512)])  # (position, key)
    assert draws.min() >= 0 and draws.max() < 1
    counts = torch.histc(draws, bins=16, min=0, max=1)
    expected = draws.numel() / 16
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 40, chi2  # 15 degrees of freedom: p < 1e-3 above 37.7
    # Lag-1 correlation along positions and across keys: independent streams.
    assert abs(torch.corrcoef(torch.stack([draws[1:].flatten(), draws[:-1].flatten()]))[0, 1]) < 0.03
    assert abs(torch.corrcoef(torch.stack([draws[:, 1:].flatten(), draws[:, :-1].flatten()]))[0, 1]) < 0.03
    assert torch.equal(counter_uniform_ref(keys[3:5], torch.tensor([9, 2])),
                       torch.stack([counter_uniform_ref(keys, torch.full((64,), 9))[3],
                                    counter_uniform_ref(keys, torch.full((64,), 2))[4]]))


def test_c_kernel_gives_the_reference_bits():
    g = torch.Generator().manual_seed(0)
    keys = torch.randint(0, 2**32, (1000, 2), generator=g)
    positions = torch.randint(0, 2**31, (1000,), generator=g)
    assert torch.equal(cpu.counter_uniform_cpu(keys, positions), counter_uniform_ref(keys, positions))


def test_request_keys_depend_on_seed_prompt_copy_and_sample_only():
    keys = request_keys([[1, 2], [3], [1, 2]], 2, seed=5)
    assert keys.shape == (6, 2) and len({tuple(k) for k in keys.tolist()}) == 6
    assert torch.equal(request_keys([[9], [1, 2]], 2, seed=5)[2:], keys[:2])  # neighbours do not matter
    assert not torch.equal(request_keys([[1, 2]], 2, seed=6), keys[:2])
