"""From pairwise verdicts to one reward per response of a GRPO group. Pure functions.

Which pairs are judged (``comparison_pairs``), for G responses to one prompt:
* ``circular``: each response against the next, (0, 1), (1, 2), ..., (G-1, 0): G comparisons,
  each response in two of them (G = 2: the one pair);
* ``all``: every pair i < j, G(G-1)/2 comparisons;
* ``both_orders``: every pair is also judged with the responses' places exchanged, which cancels
  a judge's preference for the first (or second) position.

The reward of response i (``group_rewards``), over the comparisons c it appears in::

    reward_i = (mean_c score_i(c) - 1) / 4  +  ranking_weight * mean_c preference_i(c)
               - length_penalty * (len_i - min_len) / (max_len - min_len)

``score_i(c)`` is the helpfulness the judge gave response i in comparison c (1-5), so the first
term lies in [0, 1]. ``preference_i(c)`` is the ranking seen from i's side, in [-1, 1]:
(3.5 - ranking) / 2.5 when i was response 1, (ranking - 3.5) / 2.5 when it was response 2 (1 for
"much better", 0 for a tie). With the default ``ranking_weight`` 0.1 the scores decide and the
ranking breaks ties between responses the scores rate alike. The optional length penalty
(default 0) takes up to ``length_penalty`` from the longest response of the group and nothing
from the shortest. A fallback verdict (an unparsable answer) is neutral: 3 and 3, ranking 3.5.

A lone response (an evaluation with n = 1) has no group to be compared within: it is judged
against the row's reference answer (``reference_reward``: its side of that comparison, by the
same formula), or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence

from reward_models.genrm.verdict import Verdict

MODES = ("circular", "all")


def comparison_pairs(group_size: int, mode: str = "circular", both_orders: bool = False) -> list[tuple[int, int]]:
    """The (response_1, response_2) index pairs to judge for a group of ``group_size``."""
    if mode not in MODES:
        raise ValueError(f"comparison mode must be one of {', '.join(MODES)}, not {mode!r}")
    if group_size < 2:
        return []
    if mode == "all" or group_size == 2:
        pairs = [(i, j) for i in range(group_size) for j in range(i + 1, group_size)]
    else:
        pairs = [(i, (i + 1) % group_size) for i in range(group_size)]
    return pairs + [(j, i) for i, j in pairs] if both_orders else pairs


def preference(verdict: Verdict, side: int) -> float:
    """The verdict's ranking seen from response ``side`` (1 or 2): 1 much better ... -1 much worse."""
    toward_1 = (3.5 - verdict.ranking) / 2.5
    return toward_1 if side == 1 else -toward_1


def group_rewards(group_size: int, judged: Sequence[tuple[tuple[int, int], Verdict]], ranking_weight: float = 0.1,
                  length_penalty: float = 0.0, lengths: Sequence[int] | None = None) -> list[float]:
    """One reward per response from the verdicts of its comparisons (see the module docstring).
    Every response must appear in at least one comparison."""
    scores: list[list[float]] = [[] for _ in range(group_size)]
    prefs: list[list[float]] = [[] for _ in range(group_size)]
    for (i, j), verdict in judged:
        scores[i].append(verdict.score_1)
        scores[j].append(verdict.score_2)
        prefs[i].append(preference(verdict, 1))
        prefs[j].append(preference(verdict, 2))
    missing = [i for i in range(group_size) if not scores[i]]
    if missing:
        raise ValueError(f"responses {missing} were in no comparison")
    rewards = [(sum(s) / len(s) - 1) / 4 + ranking_weight * sum(p) / len(p) for s, p in zip(scores, prefs)]
    if length_penalty and lengths is not None:
        low, high = min(lengths), max(lengths)
        if high > low:
            rewards = [r - length_penalty * (n - low) / (high - low) for r, n in zip(rewards, lengths)]
    return rewards


def reference_reward(verdicts: Sequence[tuple[int, Verdict]], ranking_weight: float = 0.1) -> float:
    """A lone response judged against a reference: ``verdicts`` are (the response's side, 1 or
    2, verdict) pairs; its side's score and preference, by the group formula."""
    score = sum(v.score_1 if side == 1 else v.score_2 for side, v in verdicts) / len(verdicts)
    pref = sum(preference(v, side) for side, v in verdicts) / len(verdicts)
    return (score - 1) / 4 + ranking_weight * pref
