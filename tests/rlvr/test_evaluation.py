"""pass@k against hand-computed cases and the brute-force definition."""

import itertools
from math import comb

import pytest

from rlvr.evaluation import pass_at_k, summarize


@pytest.mark.parametrize("n, c, k, expected", [
    (1, 1, 1, 1.0), (1, 0, 1, 0.0),
    (4, 1, 1, 0.25),  # one of four passes: a single draw finds it a quarter of the time
    (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
    (8, 3, 8, 1.0), (8, 0, 8, 0.0),
    (10, 5, 3, 1 - comb(5, 3) / comb(10, 3)),
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_the_chance_over_all_draws():
    samples = [1, 0, 0, 1, 0, 1, 0]  # n = 7, c = 3
    for k in range(1, 8):
        draws = list(itertools.combinations(samples, k))
        assert pass_at_k(7, 3, k) == pytest.approx(sum(any(d) for d in draws) / len(draws), abs=1e-12)


def test_pass_at_k_is_stable_for_many_samples():
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert 0 < pass_at_k(100_000, 3, 10) < 1


def test_summary_and_bad_inputs():
    out = summarize([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], ks=[1, 2])
    assert out["pass@1"] == pytest.approx((0.25 + 1 + 0) / 3)
    assert out["pass@2"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert out["mean_reward"] == pytest.approx(5 / 12) and out["problems"] == 3
    assert summarize([[0.5, 1.0]], ks=[1], success=1.0)["pass@1"] == 0.5  # partial credit is not a pass
    with pytest.raises(ValueError, match="pass@8 needs at least 8 samples"):
        summarize([[1, 0]], ks=[1, 8])
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 1, 0)
