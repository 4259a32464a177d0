"""Real Ray actors on a local Ray instance."""

import threading
import time

import psutil
import pytest
import ray
import torch

import rlvr.model as M
from rlvr.model.config import tiny
from rlvr.model.names import checkpoint_items
from rlvr.rollout.builtin import BuiltinEngine
from rlvr.rollout.engine import SamplingParams
from rlvr.rollout.weights import buckets
from rlvr.rollout.workers import DriverWeights, EngineSpec, RolloutPool
from rlvr.tokenizer import ByteTokenizer

PROMPTS = [f"{a}+{b}=" for a in range(6) for b in range(2)]
GREEDY = SamplingParams(temperature=0, max_tokens=24)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt")
    M.HybridLM(tiny(initializer_range=0.1)).save(path)
    torch.manual_seed(1)
    trained = M.HybridLM(tiny(initializer_range=0.1))
    yield path, trained
    ray.shutdown()


def _local(path, weights=None, prompts=PROMPTS, sampling=GREEDY):
    engine = BuiltinEngine(M.load(path), ByteTokenizer())
    if weights is not None:
        engine.update_weights(checkpoint_items(weights.state_dict()))
    return [c.token_ids for c in engine.generate(prompts, sampling)]


def test_pool_matches_a_local_engine_and_survives_a_killed_worker(cluster):
    path, _ = cluster
    pool = RolloutPool(EngineSpec(str(path)), num_workers=2)
    try:
        want = _local(path)
        assert [c.token_ids for c in pool.generate(PROMPTS, GREEDY)] == want
        # Copies of a prompt that contiguous shards would split over the two workers: sampled, each
        # copy draws its own samples, as in one engine's call (not both the first copy's)
        copies = PROMPTS[:3] + PROMPTS + PROMPTS[:2]
        sampled = SamplingParams(temperature=1.0, max_tokens=12, n=2, seed=7)
        got = pool.generate(copies, sampled)
        assert [(c.prompt_index, c.sample_index) for c in got] == [(p, s) for p in range(len(copies)) for s in range(2)]
        assert [c.token_ids for c in got] == _local(path, prompts=copies, sampling=sampled)
        first, last = got[:2], got[-4:-2]  # PROMPTS[0] at the start and at the end: other samples
        assert [c.token_ids for c in first] != [c.token_ids for c in last]
        # Long enough (~70k tokens) that the kill lands mid-generation even on a fast machine.
        slow = SamplingParams(temperature=0, max_tokens=1500, ignore_eos=True, n=4)
        result = {}
        thread = threading.Thread(target=lambda: result.setdefault("out", pool.generate(PROMPTS, slow)))
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive()
        ray.kill(pool.workers[0], no_restart=True)  # dies mid-generation
        thread.join(300)
        out = result["out"]
        assert pool.restarts == 1
        assert [(c.prompt_index, c.sample_index) for c in out] == [(p, s) for p in range(len(PROMPTS)) for s in range(4)]
        assert [c.token_ids for c in out] == _local(path, sampling=slow)
    finally:
        pool.shutdown()


@pytest.mark.parametrize("transport,channel", [("collective", None), ("collective", "broadcast"), ("disk", None)])
def test_weight_sync_in_buckets_with_versions_and_after_restart(cluster, transport, channel):
    path, trained = cluster
    source = DriverWeights(lambda: checkpoint_items(trained.state_dict()))
    pool = RolloutPool(EngineSpec(str(path)), num_workers=2, weights=source, transport=transport,
                       bucket_bytes=64 * 1024, channel=channel)  # (far below the model's size: many chunks)
    try:
        procs = [psutil.Process(ray.get(w.info.remote())["pid"]) for w in pool.workers]
        before = sum(p.io_counters().write_bytes for p in procs)
        assert pool.update_weights() == 1
        # one node: the receivers map the sender's buffers unless told to take the broadcast
        assert pool.channel == (None if transport == "disk" else channel or "shared")
        assert sum(p.io_counters().write_bytes for p in procs) == before  # in memory: nothing written
        out = pool.generate(PROMPTS, GREEDY)
        want = _local(path, trained)
        assert [c.token_ids for c in out] == want
        assert {c.weights_version for c in out} == {1}
        ray.kill(pool.workers[1], no_restart=True)
        out = pool.generate(PROMPTS, GREEDY)  # the replacement is re-synced before it works
        assert [c.token_ids for c in out] == want and {c.weights_version for c in out} == {1}
        assert pool.generation == (0 if transport == "disk" else 2)  # (a new group with the replacement)
    finally:
        pool.shutdown()


def test_buckets_respect_the_size_limit():
    tensors = [(f"t{i}", torch.zeros(100)) for i in range(10)]  # 400 bytes each
    sizes = [len(b) for b in buckets(tensors, 1000)]
    assert sizes == [2, 2, 2, 2, 2]
    assert [len(b) for b in buckets([("big", torch.zeros(1000))], 100)] == [1]
