"""The HTTP judge against a real local server with scripted answers: parsing, retries, timeouts,
the concurrency limit, fallbacks; and a local judge checkpoint on the builtin engine."""

import time

import pytest
import torch

import rlvr.model as M
from rlvr.model.config import tiny
from rlvr.tokenizer import ByteTokenizer

from reward_models.genrm.judge import Comparison, HttpJudge, JudgeError, LocalJudge
from reward_models.genrm.scripted_server import ScriptedJudgeServer
from reward_models.genrm.verdict import NEUTRAL, Verdict

CONV = ({"role": "user", "content": "Say hello."},)


def _judge(server, **kw):
    return HttpJudge(server.base_url, "genrm", **({"timeout": 2.0, "backoff": 0.01} | kw))


def test_answers_are_parsed_in_order(endpoint):
    judge = _judge(endpoint)
    items = [Comparison(CONV, "[score 5 1 1]", "b"), Comparison(CONV, "[fenced]", "b"), Comparison(CONV, "a", "longer b")]
    assert judge.compare_many(items) == [Verdict(5, 1, 1), Verdict(4, 2, 2), Verdict(2, 4, 5)]
    assert judge.stats.fallbacks == 0 and judge.stats.requests == 3
    judge.close()


def test_garbled_answers_are_asked_again_then_fall_back_counted(endpoint):
    judge = _judge(endpoint, parse_retries=2)
    assert judge.compare(CONV, "[garbled-once]", "b") == Verdict(4, 2, 2)
    assert (judge.stats.parse_retries, judge.stats.fallbacks) == (1, 0)
    assert judge.compare(CONV, "[garbled]", "b") == NEUTRAL
    assert (judge.stats.parse_retries, judge.stats.fallbacks, judge.stats.requests) == (3, 1, 5)
    judge.close()


def test_failed_requests_are_retried_with_backoff(endpoint):
    judge = _judge(endpoint, retries=2)
    assert judge.compare(CONV, "[500-once]", "b") == Verdict(4, 2, 2)
    assert judge.compare(CONV, "[drop-once]", "b") == Verdict(4, 2, 2)
    assert judge.stats.http_retries == 2
    with pytest.raises(JudgeError, match="no answer after 3 attempts .*HTTP 500"):
        judge.compare(CONV, "[500]", "b")
    with pytest.raises(JudgeError, match="HTTP 400"):  # refused: not retried
        judge.compare(CONV, "[400]", "b")
    assert judge.stats.http_retries == 4
    judge.close()


def test_a_slow_answer_times_out_and_is_retried(endpoint):
    judge = _judge(endpoint, timeout=0.3, retries=1)
    start = time.monotonic()
    with pytest.raises(JudgeError, match="TimeoutError"):
        judge.compare(CONV, "[slow]", "b")
    assert time.monotonic() - start < 2.5  # two attempts of 0.3 s, not the server's 3 s
    judge.close()


def test_the_concurrency_limit_is_used_and_never_passed():
    with ScriptedJudgeServer(latency=0.2) as server:
        judge = _judge(server, max_concurrency=4)
        start = time.monotonic()
        verdicts = judge.compare_many([Comparison(CONV, f"answer {i}", "b") for i in range(12)])
        seconds = time.monotonic() - start
        assert len(verdicts) == 12 and server.stats["peak_in_flight"] == 4 and judge.stats.peak_in_flight == 4
        assert 0.55 < seconds < 2.0  # three waves of 0.2 s
        judge.close()


def test_the_api_key_comes_from_the_environment(endpoint, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-secret")
    judge = _judge(endpoint, api_key_env="MY_JUDGE_KEY")
    judge.compare(CONV, "a", "b")
    assert endpoint.stats["authorization"] == {"Bearer sk-secret"}
    judge.close()


def test_a_local_judge_checkpoint(tmp_path, tiny_checkpoint):
    torch.manual_seed(0)
    tok = ByteTokenizer()
    M.HybridLM(tiny(max_position_embeddings=2048, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save(
        tmp_path / "judge")
    judge = LocalJudge(str(tmp_path / "judge"), max_tokens=8)
    # a random tiny model writes no verdict: every comparison is asked once (greedy: no re-asking),
    # then falls back, counted
    verdicts = judge.compare_many([Comparison(CONV, "a", "b"), Comparison(CONV, "c", "d")])
    assert verdicts == [NEUTRAL, NEUTRAL] and (judge.stats.requests, judge.stats.fallbacks) == (2, 2)
    sampled = LocalJudge(str(tmp_path / "judge"), max_tokens=8, temperature=1.0, parse_retries=2)
    sampled.compare_many([Comparison(CONV, "a", "b")])
    assert (sampled.stats.requests, sampled.stats.parse_retries, sampled.stats.fallbacks) == (3, 2, 1)
    # a judge whose context cannot hold the comparison: not asked, falls back
    short = LocalJudge(str(tiny_checkpoint), max_tokens=8)
    assert short.compare(CONV, "a", "b") == NEUTRAL and (short.stats.requests, short.stats.fallbacks) == (0, 1)
