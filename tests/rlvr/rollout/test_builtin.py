import dataclasses
import tempfile
import threading
import time

import pytest
import torch

import rlvr.model as M
from rlvr.model.config import tiny
from rlvr.model.names import checkpoint_items
from rlvr.model.cache import AttentionCache
from rlvr.kernels import counter_uniform
from rlvr.rollout.builtin import BuiltinEngine, request_keys, sample_tokens
from rlvr.rollout.engine import SamplingParams
from rlvr.tokenizer import ByteTokenizer

PROMPTS = ["1+1=", "The quick brown fox", "abc", "x" * 23, "Q: 7*6?\nA:"]


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return BuiltinEngine(M.HybridLM(tiny(initializer_range=0.1)), ByteTokenizer(), max_batch=64)


def _greedy_reference(model, ids, steps):
    out = []
    with torch.no_grad():
        cache = model.new_cache()
        logits = model(torch.tensor([ids]), cache=cache)[:, -1]
        for _ in range(steps):
            token = int(logits.argmax(-1))
            out.append(token)
            logits = model.step(torch.tensor([token]), cache)
    return out


def test_greedy_equals_step_by_step_argmax(engine):
    sampling = SamplingParams(temperature=0, max_tokens=12, stop_token_ids=())
    tok = engine.tokenizer
    for completion in engine.generate(PROMPTS, sampling):
        want = _greedy_reference(engine.model, tok.encode(PROMPTS[completion.prompt_index]), 12)
        got = completion.token_ids
        assert got == want[:len(got)]
        assert completion.finish_reason in ("length", "stop")


# Prefill (one forward over the whole sequence: the Mamba layers' chunked scan) against decode
# (the engine's token-by-token recurrence), on the engine's own weights: the gap a learner sees
# on top of any precision difference. A bf16 engine on CPU holds bf16 weights and computes in
# fp32 (the CPU kernels convert once), so its two paths agree as fp32's do, and it differs from
# the fp32 model it was cast from by the weights' rounding: the mismatch a bf16 GPU engine has
# against an fp32 learner, in part.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampled_logprobs_equal_teacher_forced_forward(engine, dtype):
    fp32 = engine.model
    if dtype != torch.float32:
        engine = BuiltinEngine(_copy(fp32, dtype), ByteTokenizer(), max_batch=64)
    sampling = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=16, n=3, seed=7, prefill_logprobs=True)
    completions = engine.generate(PROMPTS, sampling)
    assert len(completions) == len(PROMPTS) * 3
    gaps, mismatch = [], []
    with torch.no_grad():
        for c in completions:
            ids = torch.tensor([c.prompt_ids + c.token_ids])
            for model, out in ((engine.model, gaps), (fp32, mismatch)):
                logp = torch.log_softmax(model(ids)[0, len(c.prompt_ids) - 1:-1].float(), -1)
                forced = logp.gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
                out.append((forced - torch.tensor(c.logprobs)).abs())
                if model is engine.model:  # the engine's own prefill scores (batched, right-padded)
                    assert torch.allclose(torch.tensor(c.prefill_logprobs), forced, atol=1e-5)
    gaps, mismatch = torch.cat(gaps), torch.cat(mismatch)
    print(f"{dtype}: |decode - prefill| mean {gaps.mean():.2e}, max {gaps.max():.2e}; "
          f"|engine - fp32 model| mean {mismatch.mean():.2e}, max {mismatch.max():.2e}")
    assert gaps.max() <= 1e-4
    if dtype == torch.bfloat16:
        assert 1e-3 < mismatch.mean() < 0.1  # bf16 weights: a real, small mismatch


# Routing replay, the engine's half: what it records is what its model read. In fp32 the
# learner's own router agrees with every record and replaying the records changes nothing; a
# bf16 engine's choices differ from the fp32 model's on some tokens, and replaying them brings
# the fp32 model's log-probabilities closer to the engine's.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_routed_experts_are_what_the_engine_read(engine, dtype):
    fp32 = engine.model
    engine = BuiltinEngine(_copy(fp32, dtype) if dtype != torch.float32 else fp32, ByteTokenizer(), max_batch=4)
    sampling = SamplingParams(temperature=1.0, max_tokens=40, n=3, seed=7, routed_experts=True)
    agree, own_gap, replay_gap = [], [], []
    with torch.no_grad():
        for c in engine.generate(PROMPTS, sampling):  # (4 rows at a time: requests join mid-run)
            ids = torch.tensor([c.prompt_ids + c.token_ids])
            assert c.experts.shape == (ids.shape[1] - 1, 1, 2) and c.experts.dtype == torch.int8
            assert int(c.experts.min()) >= 0 and int(c.experts.max()) < 8
            routing, n, t = [], len(c.prompt_ids), torch.tensor(c.token_ids)[:, None]
            own = torch.log_softmax(fp32(ids[:, :-1], routing=routing)[0], -1)[n - 1:].gather(1, t)[:, 0]
            replayed = torch.log_softmax(fp32(ids[:, :-1], experts=c.experts[None])[0], -1)[n - 1:].gather(1, t)[:, 0]
            agree.append((routing[0][0].sort(-1).values == c.experts.long()[:, 0].sort(-1).values).all(-1).float())
            own_gap.append((own - torch.tensor(c.logprobs)).abs())
            replay_gap.append((replayed - torch.tensor(c.logprobs)).abs())
    agree, own_gap, replay_gap = torch.cat(agree).mean(), torch.cat(own_gap), torch.cat(replay_gap)
    print(f"{dtype}: routing agreement {agree:.4f}; |fp32 model - engine| own routing mean {own_gap.mean():.2e} "
          f"max {own_gap.max():.2e}, replayed mean {replay_gap.mean():.2e} max {replay_gap.max():.2e}")
    if dtype == torch.float32:
        assert agree == 1 and replay_gap.max() <= 1e-4
    else:
        assert agree < 1 and replay_gap.mean() < own_gap.mean() and replay_gap.max() < own_gap.max()


def test_routed_experts_only_when_asked(engine):
    plain = engine.generate(PROMPTS[:2], SamplingParams(max_tokens=4, seed=1))
    assert all(c.experts is None for c in plain)


def _copy(model, dtype):
    """The model in ``dtype``, as ``rlvr.model.load(dtype=)`` holds it (the SSM's fp32 parameters stay fp32)."""
    with tempfile.TemporaryDirectory() as folder:
        model.save(folder)
        return M.load(folder, dtype=dtype)


def test_continuous_batching_gives_the_same_results(engine):
    sampling = SamplingParams(temperature=0, max_tokens=10, n=2)
    wide = engine.generate(PROMPTS, sampling)
    narrow = BuiltinEngine(engine.model, engine.tokenizer, max_batch=3).generate(PROMPTS, sampling)
    assert [c.token_ids for c in wide] == [c.token_ids for c in narrow]
    assert [(c.prompt_index, c.sample_index) for c in narrow] == [(p, s) for p in range(5) for s in range(2)]


def test_seed_makes_sampling_reproducible(engine):
    sampling = SamplingParams(max_tokens=8, n=2, seed=3)
    a = [c.token_ids for c in engine.generate(PROMPTS[:2], sampling)]
    b = [c.token_ids for c in engine.generate(PROMPTS[:2], sampling)]
    assert a == b and a[0] != a[1]


def test_stop_strings_tokens_and_length(engine):
    greedy = engine.generate(["abc"], SamplingParams(temperature=0, max_tokens=20))[0]
    text = engine.tokenizer.decode(greedy.token_ids)
    stop = text[3:5]
    cut = engine.generate(["abc"], SamplingParams(temperature=0, max_tokens=20, stop=(stop,)))[0]
    assert cut.finish_reason == "stop" and cut.text == text[:text.index(stop)]
    first = greedy.token_ids[0]
    by_token = engine.generate(["abc"], SamplingParams(temperature=0, max_tokens=20, stop_token_ids=(first,)))[0]
    assert by_token.token_ids == [first] and by_token.finish_reason == "stop"
    assert len(engine.generate(["abc"], SamplingParams(max_tokens=5))[0].token_ids) <= 5


def test_update_weights_changes_outputs_and_tags_the_version():
    torch.manual_seed(0)
    engine = BuiltinEngine(M.HybridLM(tiny(initializer_range=0.1)), ByteTokenizer())
    learner = M.HybridLM(tiny(initializer_range=0.1))  # different random weights
    sampling = SamplingParams(temperature=0, max_tokens=8)
    before = engine.generate(PROMPTS, sampling)
    engine.update_weights(checkpoint_items(learner.state_dict()), version=5)
    after = engine.generate(PROMPTS, sampling)
    assert [c.token_ids for c in before] != [c.token_ids for c in after]
    assert all(c.weights_version == 5 for c in after)
    ids = torch.tensor([after[0].prompt_ids])
    with torch.no_grad():
        assert torch.equal(engine.model(ids), learner.eval()(ids))


def test_abort_returns_unfinished_samples(engine):
    sampling = SamplingParams(max_tokens=100_000, n=2)
    timer = threading.Timer(0.5, engine.abort)
    timer.start()
    out = engine.generate(PROMPTS[:2], sampling)
    assert {c.finish_reason for c in out} <= {"abort", "stop"} and len(out) == 4


def test_bad_requests():
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        BuiltinEngine(M.HybridLM(tiny()), ByteTokenizer()).generate(["a", ""], SamplingParams())


@pytest.mark.parametrize("params,expected", [
    (dict(temperature=1.0), [0.5, 0.25, 0.125, 0.0625, 0.0625]),
    (dict(temperature=1.0, top_k=2), [2 / 3, 1 / 3, 0, 0, 0]),
    (dict(temperature=1.0, top_p=0.7), [2 / 3, 1 / 3, 0, 0, 0]),  # 0.5 < 0.7: the second one stays
    (dict(temperature=0.5), [0.5 ** 2, 0.25 ** 2, 0.125 ** 2, 0.0625 ** 2, 0.0625 ** 2]),
])
def test_sample_tokens_draws_from_the_filtered_distribution(params, expected):
    probs = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625])
    logits = probs.log().expand(20000, 5).contiguous()
    uniform = counter_uniform(request_keys([[1, 2]], 20000, seed=0), torch.zeros(20000, dtype=torch.long))
    tokens, logps = sample_tokens(logits, SamplingParams(**params), uniform)
    want = torch.tensor(expected) / sum(expected)
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    assert (freq - want).abs().max() < 0.015, freq
    assert torch.allclose(logps, probs.log()[tokens])  # raw model log-probabilities, unfiltered


def test_abort_stops_the_calls_running_now_and_not_the_next_one(engine):
    """The abort flag was one per engine, reset by each new generate: an abort landing just
    before a new call was lost, and one abort stopped every concurrent call."""
    long = SamplingParams(max_tokens=100_000, n=2, ignore_eos=True)
    short = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    engine.abort()  # nothing is running: nothing to stop, nothing kept for later
    assert {c.finish_reason for c in engine.generate(PROMPTS[:1], short)} == {"length"}
    results = {}
    running = threading.Thread(target=lambda: results.setdefault("long", engine.generate(PROMPTS[:2], long)))
    running.start()
    time.sleep(0.5)
    engine.abort()
    # a new call right after the abort: it runs to its end, and the abort still lands
    assert {c.finish_reason for c in engine.generate(PROMPTS[:1], short)} == {"length"}
    running.join(60)
    assert not running.is_alive() and {c.finish_reason for c in results["long"]} == {"abort"}


def test_a_prompts_samples_do_not_depend_on_its_neighbours(engine):
    """One RNG for the batch made a prompt's samples change with max_batch, the other prompts
    and their order (and so with the number of rollout workers)."""
    sampling = SamplingParams(temperature=1.0, max_tokens=12, n=3, seed=11, ignore_eos=True)
    target = PROMPTS[1]

    def samples_of(prompts, max_batch=64):
        out = BuiltinEngine(engine.model, engine.tokenizer, max_batch=max_batch).generate(prompts, sampling)
        return [[c.token_ids for c in out if c.prompt_index == i] for i, p in enumerate(prompts) if p == target]

    alone = samples_of([target])[0]
    assert len({tuple(t) for t in alone}) == 3  # the n samples differ
    assert samples_of(PROMPTS)[0] == alone
    assert samples_of(PROMPTS[::-1])[0] == alone
    assert samples_of(PROMPTS, max_batch=2)[0] == alone
    assert samples_of(["zz", target, "y" * 40], max_batch=4)[0] == alone
    first, second = samples_of([target, "abc", target])  # a repeated prompt gets new samples
    assert first == alone and second != first
    other_seed = BuiltinEngine(engine.model, engine.tokenizer).generate([target], dataclasses.replace(sampling, seed=12))
    assert [c.token_ids for c in other_seed] != alone


def test_kv_cache_grows_with_what_is_generated_not_with_max_tokens(engine, monkeypatch):
    """Each row reserved prompt + max_tokens KV slots up front: max_tokens=10**6, n=4 cost 1 GB
    before the first token."""
    prompt = "The quick brown fox"
    sampling = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    reference = engine.generate([prompt], sampling)[0]
    capacities = []
    append = AttentionCache.append

    def recording_append(self, k, v, lengths=None):
        result = append(self, k, v, lengths)
        capacities.append(result[0].shape[2])
        return result

    monkeypatch.setattr(AttentionCache, "append", recording_append)
    # Greedy rows repeat the reference: its text as a stop string ends them after ~40 tokens.
    long = SamplingParams(temperature=0, max_tokens=10**6, n=4, ignore_eos=True,
                          stop=(reference.text.rstrip("\ufffd"),))
    out = engine.generate([prompt], long)
    generated = len(out[0].token_ids)
    assert {len(c.token_ids) for c in out} == {generated} and generated <= 41
    assert {c.finish_reason for c in out} == {"stop"}
    used = len(reference.prompt_ids) + generated
    assert max(capacities) <= 2 * used, (max(capacities), used)
    capacities.clear()
    engine.generate([prompt], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    assert max(capacities) == len(reference.prompt_ids) + 30  # doubling stops at prompt + max_tokens
