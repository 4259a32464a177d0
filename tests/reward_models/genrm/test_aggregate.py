"""Pairs to judge and the group formula, against hand-computed values."""

import pytest

from reward_models.genrm.aggregate import comparison_pairs, group_rewards, preference, reference_reward
from reward_models.genrm.verdict import NEUTRAL, Verdict


def test_comparison_pairs():
    assert comparison_pairs(1) == []
    assert comparison_pairs(2) == [(0, 1)]
    assert comparison_pairs(4) == [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert comparison_pairs(3, "all") == [(0, 1), (0, 2), (1, 2)]
    assert comparison_pairs(3, both_orders=True) == [(0, 1), (1, 2), (2, 0), (1, 0), (2, 1), (0, 2)]
    with pytest.raises(ValueError, match="circular, all"):
        comparison_pairs(3, "round-robin")


def test_preference_from_each_side():
    assert preference(Verdict(4, 2, 1), 1) == 1.0 and preference(Verdict(4, 2, 1), 2) == -1.0
    assert preference(Verdict(3, 3, 3.5), 1) == 0.0
    assert preference(Verdict(2, 4, 4), 1) == pytest.approx(-0.2)


def test_group_rewards_hand_computed():
    # three responses, circular: (0,1) 0 better, (1,2) 2 much better, (2,0) 2 slightly better
    judged = [((0, 1), Verdict(4, 2, 2)), ((1, 2), Verdict(2, 5, 6)), ((2, 0), Verdict(4, 4, 3))]
    # response 0: scores 4, 4 -> 0.75; prefs +0.6 (rank 2 as response 1), -0.2 (rank 3 as response 2) -> 0.2
    # response 1: scores 2, 2 -> 0.25; prefs -0.6 (rank 2 as response 2), -1.0 (rank 6 as response 1) -> -0.8
    # response 2: scores 5, 4 -> 0.875; prefs +1.0, +0.2 -> 0.6
    r = group_rewards(3, judged, ranking_weight=0.1)
    assert r == pytest.approx([0.75 + 0.1 * 0.2, 0.25 + 0.1 * -0.8, 0.875 + 0.1 * 0.6])


def test_ties_in_score_are_broken_by_the_ranking():
    # both rated 4, but the ranking says response 1 is slightly better
    r = group_rewards(2, [((0, 1), Verdict(4, 4, 3))])
    assert r[0] > r[1] and r[0] - r[1] == pytest.approx(2 * 0.1 * 0.2)
    # a fallback is neutral: equal rewards, 0.5 each
    assert group_rewards(2, [((0, 1), NEUTRAL)]) == [0.5, 0.5]


def test_both_orders_cancel_a_position_bias():
    # a judge that always rates the first position one point higher, on two equal responses
    biased = [((0, 1), Verdict(4, 3, 3)), ((1, 0), Verdict(4, 3, 3))]
    r = group_rewards(2, biased)
    assert r[0] == pytest.approx(r[1])


def test_length_penalty():
    judged = [((0, 1), Verdict(4, 4, 3.5))]
    assert group_rewards(2, judged, length_penalty=0.2, lengths=[10, 30]) == pytest.approx([0.75, 0.55])
    assert group_rewards(2, judged, length_penalty=0.2, lengths=[20, 20]) == pytest.approx([0.75, 0.75])


def test_every_response_must_be_compared():
    with pytest.raises(ValueError, match=r"responses \[2\]"):
        group_rewards(3, [((0, 1), Verdict(4, 2, 2))])


def test_reference_reward():
    # the response as response 1 against the reference: 5 vs 3, ranking 2
    assert reference_reward([(1, Verdict(5, 3, 2))]) == pytest.approx(1.0 + 0.1 * 0.6)
    # both orders: as response 2 it got 4, ranking 4 (slightly better)
    assert reference_reward([(1, Verdict(5, 3, 2)), (2, Verdict(3, 4, 4))]) == pytest.approx(
        (4.5 - 1) / 4 + 0.1 * (0.6 + 0.2) / 2)
