"""Parsing a judge's answer into a verdict, and the conversation it reads."""

import pytest

from reward_models.genrm.verdict import (NEUTRAL, Verdict, VerdictError, judge_messages, parse_verdict,
                                         ranking_from_scores)


@pytest.mark.parametrize("text, expected", [
    ('Both are fine but 1 is clearer. {"score_1": 4, "score_2": 2, "ranking": 2}', (4, 2, 2)),
    ('<think>{"score_1": 1, "score_2": 1, "ranking": 6} was my draft</think>\n{"score_1": 5, "score_2": 3, "ranking": 1}',
     (5, 3, 1)),  # the JSON after the reasoning counts
    ('Reasoning...\n```json\n{"score_1": 2, "score_2": 5, "ranking": 6}\n```\nThat is all.', (2, 5, 6)),
    ('draft {"score_1": 1, "score_2": 1, "ranking": 3} final {"score_1": 3, "score_2": 4, "ranking": 4} thanks', (3, 4, 4)),
    ('{"score_1": "4", "score_2": "4.5", "ranking": "4"}', (4, 4.5, 4)),  # numbers as strings
    ('I compare {braces} in text. {"score_1": 3, "score_2": 3, "ranking": 3}', (3, 3, 3)),
])
def test_well_formed_answers(text, expected):
    v = parse_verdict(text)
    assert (v.score_1, v.score_2, v.ranking) == expected and not v.fallback and v.derived == ()


def test_missing_or_out_of_range_fields_are_derived_from_the_others():
    v = parse_verdict('{"score_1": 5, "score_2": 2}')  # no ranking: from the scores (3 apart: much better)
    assert (v.ranking, v.derived) == (1.0, ("ranking",))
    v = parse_verdict('{"score_1": 2, "score_2": 3, "ranking": 9}')  # ranking out of range: from the scores
    assert (v.ranking, v.derived) == (5.0, ("ranking",))
    v = parse_verdict('{"ranking": 5}')  # the ranking alone: neutral scores, the ranking orders
    assert (v.score_1, v.score_2, v.ranking, v.derived) == (3.0, 3.0, 5.0, ("score_1", "score_2"))
    v = parse_verdict('{"score_1": 0, "score_2": 4, "ranking": 4}')  # a score out of 1-5
    assert (v.score_1, v.score_2, v.ranking) == (3.0, 3.0, 4.0) and "score_1" in v.derived


@pytest.mark.parametrize("text", ["no verdict here", '{"score_1": 4}', '{"verdict": "1 is better"}', '{"score_1": 4,',
                                  '{"score_1": true, "score_2": 2}', ""])
def test_unusable_answers_raise(text):
    with pytest.raises(VerdictError):
        parse_verdict(text)


@pytest.mark.parametrize("a, b, ranking", [(5, 1, 1), (4, 2, 1), (4, 3, 2), (3.5, 3, 3), (3, 3, 3.5), (3, 3.5, 4),
                                           (2, 3, 5), (1, 5, 6)])
def test_ranking_from_scores(a, b, ranking):
    assert ranking_from_scores(a, b) == ranking


def test_swapped_and_neutral():
    assert Verdict(4, 2, 2).swapped() == Verdict(2, 4, 5)
    assert NEUTRAL.fallback and NEUTRAL.as_dict() == {"score_1": 3.0, "score_2": 3.0, "ranking": 3.5, "fallback": True}


def test_the_conversation_with_and_without_the_genrm_roles():
    conv = [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Which size?"},
            {"role": "user", "content": "Small."}]
    native = judge_messages(conv, "2", "9", principle="be correct", native_roles=True)
    assert [m["role"] for m in native] == ["user", "assistant", "user", "principle", "response_1", "response_2"]
    assert native[-2]["content"] == "2" and native[-1]["content"] == "9"
    plain = judge_messages(conv, "2", "9", nonce="f00d")
    assert len(plain) == 1 and plain[0]["role"] == "user"
    text = plain[0]["content"]
    assert text.index("Name a prime.") < text.index("[response 1 begins f00d]\n2\n[response 1 ends f00d]") < text.index(
        "[response 2 begins f00d]\n9\n[response 2 ends f00d]")
    assert '"score_1"' in text and "ranking" in text
