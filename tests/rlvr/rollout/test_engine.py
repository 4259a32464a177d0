"""The engine protocol's checks: sampling parameters and prompts are validated once, for every
engine, with messages that say what to pass (no raw errors, no silent misreadings)."""

import json
import random

import pytest
import torch

import rlvr.model as M
from rlvr.model.config import tiny
from rlvr.rollout.builtin import BuiltinEngine
from rlvr.rollout.engine import SamplingParams, StopStrings, cut_at_stop
from rlvr.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return BuiltinEngine(M.HybridLM(tiny(initializer_range=0.1, max_position_embeddings=64)), ByteTokenizer())


@pytest.mark.parametrize("kwargs,needle", [
    (dict(stop=("",)), "stop: expected non-empty strings"),
    (dict(temperature=float("nan")), "temperature must be a finite number"),
    (dict(top_k=1.5), "top_k must be a whole number"),
    (dict(max_tokens=2.5), "max_tokens must be a whole number"),
    (dict(stop_token_ids=("a",)), "stop_token_ids: expected token ids"),
    (dict(top_p=0), "top_p must be in (0, 1]"),
])
def test_bad_sampling_parameters_say_what_to_pass(kwargs, needle):
    with pytest.raises(ValueError) as err:
        SamplingParams(**kwargs)
    assert needle in str(err.value)


def test_a_bare_stop_string_or_id_is_one_not_many():
    assert SamplingParams(stop="qR").stop == ("qR",)
    assert SamplingParams(stop_token_ids=5).stop_token_ids == (5,)


def test_prompts_are_checked_and_normalised(engine):
    greedy = SamplingParams(temperature=0, max_tokens=3)
    with pytest.raises(TypeError, match="pass \\[prompt\\]"):
        engine.generate("hi!", greedy)
    assert engine.generate([], greedy) == []
    out = engine.generate([torch.tensor([65, 66, 67])], greedy)
    assert out[0].prompt_ids == [65, 66, 67] and all(type(i) is int for i in out[0].prompt_ids)
    json.dumps(out[0].__dict__)  # plain data
    with pytest.raises(ValueError, match="prompt 0 has 70 tokens; the engine holds at most 64"):
        engine.generate(["x" * 70], greedy)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate(["a", ""], greedy)


def test_an_empty_forward_is_a_clear_error(engine):
    with pytest.raises(ValueError, match="at least one token"):
        engine.model(torch.zeros(0, 5, dtype=torch.long))


def _naive_cut(tokenizer, tokens, stops):
    """The definition: the first prefix whose text contains a stop string (O(T^2) decodes)."""
    for end in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:end])
        hits = [text.index(s) for s in stops if s in text]
        if hits:
            return end, text[:min(hits)]
    return None


def test_stop_strings_match_the_definition_on_random_bytes_and_multibyte_text():
    tok = ByteTokenizer()
    rng = random.Random(0)
    alphabet = list("ab \n") + ["é", "→", "日"]
    stops_choices = [("ab",), ("\n\n",), ("é→",), ("→",), ("b a", "日é"), ("zz",)]
    for trial in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30)))
        tokens = tok.encode(text)
        if trial % 3 == 0:  # stray bytes and special ids (eos) inside
            tokens.insert(rng.randrange(len(tokens) + 1), rng.choice([0x80, 0xC3, tok.eos_token_id]))
        stops = rng.choice(stops_choices)
        assert cut_at_stop(tok, tokens, stops) == _naive_cut(tok, tokens, stops), (tokens, stops)


def test_stop_strings_decode_a_bounded_window_per_token():
    """Each step decoded the whole text so far: O(T^2) over a sample."""

    class Counting(ByteTokenizer):
        decoded = 0

        def decode(self, ids):
            Counting.decoded += len(ids)
            return super().decode(ids)

    tok = Counting()
    tokens = tok.encode("x" * 5000 + "STOP")
    assert cut_at_stop(tok, tokens, ("STOP",)) == (5004, "x" * 5000)
    assert Counting.decoded < 4 * len(tokens)
    watch = StopStrings(tok, ("é",))
    assert [watch.add(t) for t in "é".encode()] == [False, True] and watch.cut == 0
