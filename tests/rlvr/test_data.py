"""Prompt sources, bad rows, and a prompt stream that resumes exactly."""

import json
import logging

import pytest

from rlvr.config import ConfigError, DataSource
from rlvr.data import PromptStream, load_prompts, load_rows, to_prompts


def test_generator_rows_are_deterministic_and_graded_against_the_true_sum():
    src = DataSource(generator="addition", generator_args={"digits": 2, "forget_carry": 1.0}, size=50)
    rows = load_rows(src, seed=3)
    assert rows == load_rows(src, seed=3) and rows != load_rows(src, seed=4)
    for row in rows:
        a, b = map(int, row["prompt"].rstrip("=").split("+"))
        assert row["answer"] == str(a + b)
        # forget_carry=1: the teacher drops every carry, so its answer is the digit-wise sum mod 10
        assert row["response"] == str(int("".join(str((int(x) + int(y)) % 10) for x, y in
                                                   zip(f"{a:03d}", f"{b:03d}"))))


def test_local_jsonl_with_a_bad_row_is_reported_and_skipped(tmp_path, caplog):
    path = tmp_path / "rows.jsonl"
    rows = [{"question": "1+1=", "gold": "2"}, {"question": "2+2="}, {"question": 5, "gold": "5"},
            {"question": "3+3=", "gold": "6"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = DataSource(path=str(path), prompt_field="question", fields={"answer": "gold"})
    with caplog.at_level(logging.WARNING):
        prompts = load_prompts([src], "Q: {prompt}", seed=0, split="train")[0]
    assert [p.text for p in prompts] == ["Q: 1+1=", "Q: 3+3="]
    assert prompts[0].task["answer"] == "2" and prompts[0].env == "math"
    assert "row 1 skipped: missing column 'gold'" in caplog.text
    assert "row 2 skipped: field 'question' must be a string" in caplog.text


def test_unusable_sources_fail_with_the_key():
    with pytest.raises(ConfigError, match="not found"):
        load_rows(DataSource(path="/nonexistent.jsonl"), 0)
    with pytest.raises(ConfigError, match="unknown generator"):
        load_rows(DataSource(generator="nope"), 0)
    with pytest.raises(ConfigError, match="rows is usable"):
        to_prompts([{"prompt": 1}], DataSource(generator="addition"), "{prompt}", "data.train[0]")


def test_stream_mixes_by_weight_reshuffles_per_epoch_and_resumes_exactly():
    a = to_prompts([{"prompt": f"a{i}", "answer": "1"} for i in range(10)], DataSource(generator="addition"), "{prompt}", "a")
    b = to_prompts([{"prompt": f"b{i}", "answer": "1"} for i in range(10)], DataSource(generator="addition"), "{prompt}", "b")
    stream = PromptStream([a, b], [3.0, 1.0], seed=0)
    first = [p.text for p in stream.next(400)]
    share_a = sum(t.startswith("a") for t in first) / len(first)
    assert 0.68 < share_a < 0.82
    from_a = [t for t in first if t.startswith("a")]
    # without replacement within an epoch, and a new order in the next one
    assert sorted(from_a[:10]) == sorted(f"a{i}" for i in range(10)) == sorted(from_a[10:20])
    assert from_a[:10] != from_a[10:20]
    # a copy restored from a state_dict continues identically
    state = json.loads(json.dumps(stream.state_dict()))
    want = [p.text for p in stream.next(50)]
    again = PromptStream([a, b], [3.0, 1.0], seed=0)
    again.load_state_dict(state)
    assert [p.text for p in again.next(50)] == want


def test_held_out_addition_problems_never_appear_in_training_rows():
    train = load_rows(DataSource(generator="addition", generator_args={"holdout": "exclude", "forget_carry": 0.5},
                                 size=5000), seed=0)
    held = load_rows(DataSource(generator="addition", generator_args={"holdout": "only"}, size=300), seed=1)
    assert len(train) == 5000 and len(held) == 300
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}


def test_held_out_pairs_look_like_all_pairs():
    from environments.math.synthetic import held_out

    pairs = [(a, b) for a in range(100) for b in range(100) if held_out(a, b)]
    assert 800 < len(pairs) < 1200
    last_digits = {(a + b) % 10 for a, b in pairs}
    carries = sum((a % 10 + b % 10) >= 10 for a, b in pairs) / len(pairs)
    assert last_digits == set(range(10)) and 0.35 < carries < 0.55  # 45% of all pairs carry


def test_prompts_longer_than_the_context_are_left_out_counted_or_refused(caplog):
    from rlvr.data import Prompt, fitting_prompts
    from rlvr.tokenizer import make_tokenizer

    tok = make_tokenizer("byte")
    prompts = [Prompt("x" * n, "math", {"answer": "1"}) for n in (10, 95, 96, 300)]
    kwargs = dict(tokenizer=tok, context=100, budget=5, where="data.train.0", setting="rollout.sampling.max_tokens")
    with caplog.at_level(logging.WARNING):
        kept = fitting_prompts(prompts, **kwargs)
    n = [len(tok.encode(p.text)) for p in prompts]
    assert [len(tok.encode(p.text)) for p in kept] == [x for x in n if x <= 95]
    message = caplog.records[-1].getMessage()
    assert f"{4 - len(kept)} of 4 prompts are longer than 95 tokens (the longest: {max(n)})" in message
    assert "rollout.sampling.max_tokens" in message and "left out" in message
    with pytest.raises(ConfigError, match="data.long_prompts=error"):
        fitting_prompts(prompts, strict=True, **kwargs)
    with pytest.raises(ConfigError, match="none is left"):
        fitting_prompts(prompts[3:], **kwargs)
    assert fitting_prompts(prompts[:1], **kwargs) == prompts[:1]
