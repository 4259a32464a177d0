"""Rollout workers as Ray actors, and the driver that spreads prompts over them.

``RolloutPool`` owns N ``RolloutWorker`` actors (resources from config). ``generate`` shards the
prompts over the workers and gathers the completions in prompt order; a worker that dies is
replaced, given the current weights, and its shard is issued again, so nothing is lost.

Weight sync: ``update_weights`` streams (name, tensor) pairs in buckets of at most
``bucket_bytes``, or takes buckets a learner actor already packed into Ray's object store; every
worker hands each bucket to its engine (``rlvr/rollout/weights.py``: begin, every bucket,
finish), and the bucket is released before the next is built. Neither side ever holds a full
second copy of the weights. A version counter tags every completion with the weights that
produced it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Iterable, Iterator

import ray
import torch

from rlvr import runtime
from rlvr.rollout.engine import Completion, SamplingParams
from rlvr.rollout.multiturn import Episode, run_episodes
from rlvr.rollout.weights import buckets, pack_bucket, unpack_bucket


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """Everything a worker needs to build its engine; the backend is chosen here and only here."""

    model_path: str
    backend: str = "builtin"  # "builtin" | "vllm"
    tokenizer: str = "byte"  # "byte", or a Hugging Face tokenizer name/path
    max_batch: int = 64
    max_model_len: int | None = None  # prompt + response tokens per sequence (None: the model's limit)
    dtype: str = "float32"
    threads: int = 1  # torch threads per worker process
    vllm_kwargs: tuple = ()  # extra vllm.LLM arguments as (key, value) pairs


def build_engine(spec: EngineSpec):
    from rlvr.tokenizer import make_tokenizer

    if spec.backend == "builtin":
        import rlvr.model
        from rlvr.rollout.builtin import BuiltinEngine

        torch.set_num_threads(spec.threads)
        tokenizer = make_tokenizer(spec.tokenizer)
        model = rlvr.model.load(spec.model_path, dtype=getattr(torch, spec.dtype))
        return BuiltinEngine(model, tokenizer, max_batch=spec.max_batch, max_model_len=spec.max_model_len)
    if spec.backend == "vllm":
        from rlvr.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(spec)
    raise ValueError(f"rollout backend {spec.backend!r} is not one of: builtin, vllm")


class EngineCalls:
    """The rollout calls an actor serves with its engine ``self.rollout``: a ``RolloutWorker``, or a
    learner rank whose engine runs on the parameters it trains (``rollout.colocate``)."""

    rollout = None

    def generate(self, prompts: list, sampling: SamplingParams) -> list[Completion]:
        return self.rollout.generate(prompts, sampling)

    def run_episodes(self, tasks: list, env: str, env_args: str, sampling: SamplingParams) -> list[Episode]:
        """One multi-turn episode per task, against instances of environment ``env`` made here
        with ``env_args`` (canonical JSON)."""
        from rlvr.env import make_environment

        kwargs = json.loads(env_args)
        return run_episodes(self.rollout, lambda: make_environment(env, **kwargs), tasks, sampling)

    # One weight update: begin, every bucket, finish (see rlvr/rollout/weights.py).
    def begin_update(self) -> None:
        self.rollout.begin_weight_update()

    def load_bucket(self, packed: list[tuple]) -> int:
        self.rollout.load_weight_bucket(unpack_bucket(packed))
        return len(packed)

    def finish_update(self, version: int) -> None:
        self.rollout.finish_weight_update(version)

    def abort(self) -> None:
        self.rollout.abort()

    def info(self) -> dict:
        return {"weights_version": self.rollout.weights_version, "max_model_len": self.rollout.max_model_len,
                "weight_reloads": getattr(self.rollout, "weight_reloads", None)}

    def ping(self) -> int:
        return self.rollout.weights_version

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


@ray.remote
class RolloutWorker(EngineCalls):
    def __init__(self, spec: EngineSpec):
        self.rollout = build_engine(spec)
        runtime.settle()  # the engine and libraries live as long as the worker


def _chain(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


class RolloutPool:
    def __init__(self, spec: EngineSpec, num_workers: int = 1, num_cpus: float = 1, num_gpus: float = 0,
                 resources: dict[str, float] | None = None, weights_source: Callable[[], Iterable] | None = None,
                 bucket_bytes: int = 64 * 1024**2, owns_ray: bool = False, colocated: list | None = None):
        """``resources``: custom Ray resources each worker needs (e.g. a node label);
        ``weights_source``: the current weights (as for ``update_weights``), to re-sync a
        replacement worker; ``owns_ray``: ``shutdown`` also disconnects from Ray (an offline job
        that connected for this pool); ``colocated``: actors (learner ranks) whose engines run on
        the weights they train, to serve the rollouts instead of workers of the pool's own: a
        weight update is then only a new version number."""
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        self.spec, self.bucket_bytes, self.owns_ray = spec, bucket_bytes, owns_ray
        self.options = dict(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or None)
        self.weights_source = weights_source  # how to re-sync a replaced worker
        self.version = 0
        self.restarts = 0
        self.colocated = colocated is not None
        self.workers = list(colocated) if self.colocated else [self._start() for _ in range(num_workers)]
        ray.get([w.ping.remote() for w in self.workers])

    def _start(self):
        return RolloutWorker.options(**self.options).remote(self.spec)

    def _replace(self, slot: int) -> None:
        if self.colocated:  # a learner rank: the job cannot go on without it
            raise RuntimeError(f"the learner rank serving rollouts (rollout.colocate) in slot {slot} died")
        ray.kill(self.workers[slot], no_restart=True)
        self.workers[slot] = self._start()
        self.restarts += 1
        if self.version and self.weights_source is not None:
            self._push(self.weights_source(), [self.workers[slot]], self.version)

    def generate(self, prompts: list, sampling: SamplingParams) -> list[Completion]:
        """Completions for every (prompt, sample), in prompt order, whatever workers die."""
        out = []
        for indices, completions in self._sharded(prompts, 1, lambda w, shard: w.generate.remote(shard, sampling)):
            for c in completions:
                c.prompt_index = indices[c.prompt_index]
            out += completions
        return sorted(out, key=lambda c: (c.prompt_index, c.sample_index))

    def run_episodes(self, tasks: list, env: str, env_args: str, sampling: SamplingParams,
                     group: int = 1) -> list[Episode]:
        """One episode per task, in task order, whatever workers die. Consecutive runs of
        ``group`` tasks stay on one worker: its engine gives repeats of one prompt in one call
        different samples, where two workers would give them the same."""
        out: list = [None] * len(tasks)
        for indices, episodes in self._sharded(
                tasks, group, lambda w, shard: w.run_episodes.remote(shard, env, env_args, sampling)):
            for i, episode in zip(indices, episodes):
                out[i] = episode
        return out

    def _shards(self, items: list, unit: int) -> list[list[int]]:
        """The indices of ``items`` each worker gets: contiguous runs of whole ``unit``s, except
        that a unit equal to an earlier one goes with it. An engine numbers the copies of a
        prompt within one call and draws each copy's samples from its number; copies on two
        workers would both be the first and draw the same samples, and the result would depend
        on the number of workers. Order within a worker is the items' order."""
        units = -(-len(items) // unit)
        per_worker = -(-units // len(self.workers))
        first: dict[str, int] = {}
        shards: list[list[int]] = [[] for _ in self.workers]
        for u in range(units):
            key = json.dumps(items[u * unit:(u + 1) * unit], sort_keys=True, default=str)
            shards[first.setdefault(key, u // per_worker)].extend(range(u * unit, min((u + 1) * unit, len(items))))
        return shards

    def _sharded(self, items: list, unit: int, call: Callable) -> list[tuple[list[int], list]]:
        """``call(worker, shard)`` over the shards of ``items`` (``_shards``), one per worker ->
        [(the shard's indices in ``items``, its result)]; a shard whose worker dies is issued
        again on its replacement."""
        shards = {slot: (indices, [items[i] for i in indices])
                  for slot, indices in enumerate(self._shards(items, unit)) if indices}
        running = {call(self.workers[slot], s[1]): slot for slot, s in shards.items()}
        results: dict[int, list] = {}
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            slot = running.pop(ready[0])
            try:
                results[slot] = ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError):
                self._replace(slot)
                running[call(self.workers[slot], shards[slot][1])] = slot
        return [(shards[slot][0], results[slot]) for slot in sorted(results)]

    def update_weights(self, weights: Iterable) -> int:
        """Push new weights to every worker; returns the new version. ``weights``: (name, tensor)
        pairs, or object refs of packed buckets (``LearnerGroup.weight_buckets``); colocated
        engines already run on them (``weights`` is not read)."""
        self.version += 1
        if self.colocated:  # (their next generate runs after this: one caller's calls run in order)
            for w in self.workers:
                w.finish_update.remote(self.version)
        else:
            self._push(weights, self.workers, self.version)
        return self.version

    def _push(self, weights: Iterable, workers, version: int) -> None:
        # An actor runs one caller's calls in order: "begin" is waited for with the first bucket
        # (which the learner packs meanwhile), so an update is a round trip per bucket and one more.
        calls = [w.begin_update.remote() for w in workers]
        for ref in self._bucket_refs(weights):
            ray.get(calls + [w.load_bucket.remote(ref) for w in workers])
            calls = []
            del ref  # released before the next bucket is built
        ray.get(calls + [w.finish_update.remote(version) for w in workers])

    def _bucket_refs(self, weights: Iterable) -> Iterator:
        items = iter(weights)
        first = next(items, None)
        if first is None:
            return
        if isinstance(first, ray.ObjectRef):
            yield first
            yield from items
            return
        for bucket in buckets(_chain(first, items), self.bucket_bytes):
            yield ray.put(pack_bucket(bucket))

    @functools.cached_property
    def tokenizer(self):
        """The workers' tokenizer, here in the driver (to measure prompts before sending them)."""
        from rlvr.tokenizer import make_tokenizer

        return make_tokenizer(self.spec.tokenizer)

    @functools.cached_property
    def max_model_len(self) -> int:
        """Prompt + response tokens a worker's engine holds per sequence."""
        return ray.get(self.workers[0].info.remote())["max_model_len"]

    def node_ids(self) -> list[str]:
        """The Ray node of each worker (where the placement put it)."""
        return ray.get([w.node_id.remote() for w in self.workers])

    def shutdown(self) -> None:
        if not self.colocated:  # (colocated "workers" are the learner's ranks: it shuts them down)
            for w in self.workers:
                ray.kill(w, no_restart=True)
        self.workers = []
        if self.owns_ray:
            ray.shutdown()
