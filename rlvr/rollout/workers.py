"""Rollout workers as Ray actors, and the driver that spreads prompts over them.

``RolloutPool`` owns N ``RolloutWorker`` actors (resources from config). ``generate`` shards the
prompts over the workers and gathers the completions in prompt order; a worker that dies is
replaced, given the current weights, and its shard is issued again, so nothing is lost.

Weight sync (``update_weights``) from a ``WeightSource`` (the learner, or ``DriverWeights``),
over one of two transports (``rlvr/rollout/weights.py``):
- "collective" (the default): a transfer group of the sender and every engine process, built once
  and rebuilt whenever a worker is replaced; each update streams through it in chunks, straight
  into the engines' parameters. Same-node receivers map the sender's chunk buffers (the "shared"
  channel), or, where the source can offer it (the learner on CPUs), read the learner ranks' own
  memory (the mapped channel); others receive each chunk by broadcast.
- "disk" (the slow path, on request): packed buckets through Ray's object store, one at a time,
  to every worker; a vLLM engine writes them as a checkpoint folder and reloads from it.
Neither holds a full second copy of the weights anywhere. A version counter tags every
completion with the weights that produced it.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import ray
import torch

from rlvr import runtime
from rlvr.rollout.engine import Completion, SamplingParams
from rlvr.rollout.multiturn import Episode, run_episodes
from rlvr.rollout.weights import ALIGN, Layout, WeightSender, buckets, pack_bucket, unpack_bucket

log = logging.getLogger(__name__)


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

    # The collective transport (see rlvr/rollout/weights.py).
    def weight_group_ranks(self) -> int:
        return self.rollout.weight_group_ranks()

    def can_map_weights(self, endpoint: dict) -> bool:
        return self.rollout.can_map_weights(endpoint)

    def join_weight_group(self, endpoint: dict, first_rank: int, size: int, group: str, mode: str) -> None:
        self.rollout.join_weight_group(endpoint, first_rank, size, group, mode)

    def receive_weights(self, layout: dict, version: int) -> None:
        self.rollout.receive_weights(layout, version)

    def abort(self) -> None:
        self.rollout.abort()

    def info(self) -> dict:
        sync_dir = getattr(self.rollout, "sync_dir", None)
        return {"weights_version": self.rollout.weights_version, "max_model_len": self.rollout.max_model_len,
                "weight_reloads": getattr(self.rollout, "weight_reloads", None),
                "sync_dir": None if sync_dir is None else str(sync_dir), "pid": os.getpid()}

    def ping(self) -> int:
        return self.rollout.weights_version

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


@ray.remote
class RolloutWorker(EngineCalls):
    def __init__(self, spec: EngineSpec):
        self.rollout = build_engine(spec)
        runtime.settle()  # the engine and libraries live as long as the worker


class WeightSource(Protocol):
    """Where the pool's weights come from: the process that sends them (the learner's rank 0,
    with every rank taking part in a ZeRO-3 gather) and, for the disk path, their buckets."""

    def weight_endpoint(self, chunk_bytes: int) -> dict: ...  # (the collective transport)

    def weight_layout(self, chunk_bytes: int) -> dict: ...

    def connect_weights(self, size: int, group: str, mode: str) -> None: ...

    def send_weights(self, layout: dict) -> None: ...

    def weight_buckets(self, bucket_bytes: int) -> Iterator: ...  # (the disk path: refs of packed buckets)


class DriverWeights:
    """A ``WeightSource`` for weights held in this process (an offline job, a test): ``items()``
    gives the current (name, tensor) pairs in checkpoint names."""

    def __init__(self, items: Callable[[], Iterable[tuple[str, torch.Tensor]]]):
        self.items, self.sender = items, None

    def weight_endpoint(self, chunk_bytes: int) -> dict:
        if self.sender is None or self.sender.chunk_bytes != chunk_bytes:
            self.sender = WeightSender(chunk_bytes, ray.util.get_node_ip_address())
        return self.sender.endpoint.to_dict()

    def weight_layout(self, chunk_bytes: int) -> dict:
        return Layout.of(((n, t.dtype, t.shape) for n, t in self.items()), chunk_bytes).to_dict()

    def connect_weights(self, size: int, group: str, mode: str) -> None:
        self.sender.connect(size, group, mode)

    def send_weights(self, layout: dict) -> None:
        self.sender.send(Layout.from_dict(layout), self.items())

    def weight_buckets(self, bucket_bytes: int) -> Iterator:
        for bucket in buckets(self.items(), bucket_bytes):
            yield ray.put(pack_bucket(bucket))


def _died(call) -> bool:
    try:
        ray.get(call)
    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError):
        return True
    except Exception:  # (a survivor whose receive failed with the group)
        return False
    return False


class RolloutPool:
    def __init__(self, spec: EngineSpec, num_workers: int = 1, num_cpus: float = 1, num_gpus: float = 0,
                 resources: dict[str, float] | None = None, weights: WeightSource | None = None,
                 transport: str = "collective", bucket_bytes: int = 64 * 1024**2, owns_ray: bool = False,
                 colocated: list | None = None, channel: str | None = None):
        """``resources``: custom Ray resources each worker needs (e.g. a node label);
        ``weights``: where ``update_weights`` takes the weights from (also to re-sync a replaced
        worker); ``transport``: "collective" or "disk" (module docstring); ``bucket_bytes``: the
        chunk (collective) or bucket (disk) size; ``owns_ray``: ``shutdown`` also disconnects
        from Ray (an offline job that connected for this pool); ``colocated``: actors (learner
        ranks) whose engines run on the weights they train, to serve the rollouts instead of
        workers of the pool's own: a weight update is then only a new version number; ``channel``:
        the collective transport's channel, "shared" or "broadcast" (None: shared where every
        receiver can map the sender's memory)."""
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        if transport not in ("collective", "disk"):
            raise ValueError(f"rollout.weight_transfer: {transport!r} is not one of: collective, disk")
        self.spec, self.owns_ray, self.weights, self.transport = spec, owns_ray, weights, transport
        self.bucket_bytes = bucket_bytes
        self.chunk_bytes = max(ALIGN, bucket_bytes // ALIGN * ALIGN)  # (the stream's alignment)
        self.options = dict(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or None)
        self.version = 0
        self.restarts = 0
        self.generation = 0  # transfer groups built so far
        self.channel: str | None = None  # the group's channel: "shared" or "broadcast"
        self.force_channel = channel
        self.colocated = colocated is not None
        self.workers = list(colocated) if self.colocated else [self._start() for _ in range(num_workers)]
        ray.get([w.ping.remote() for w in self.workers])

    def _start(self):
        return RolloutWorker.options(**self.options).remote(self.spec)

    def _replace(self, slot: int, push: bool = True) -> None:
        """A new worker in ``slot`` (the dead one killed for good), given the current weights
        unless ``push`` is false (an update in progress sends them to every worker next)."""
        if self.colocated:  # a learner rank: the job cannot go on without it
            raise RuntimeError(f"the learner rank serving rollouts (rollout.colocate) in slot {slot} died")
        ray.kill(self.workers[slot], no_restart=True)
        self.workers[slot] = self._start()
        self.restarts += 1
        log.warning("rollout worker %d died: replaced by a new one (%d replacement(s) so far)", slot, self.restarts)
        self.channel = None  # the group had the dead worker in it: a new generation
        if push and self.version and self.weights is not None:
            self._push([self.workers[slot]], self.version)

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

    def update_weights(self) -> int:
        """Push the current weights of ``weights`` to every worker; returns the new version.
        Colocated engines already run on them (nothing is sent)."""
        self.version += 1
        if self.colocated:  # (their next generate runs after this: one caller's calls run in order)
            for w in self.workers:
                w.finish_update.remote(self.version)
        else:
            self._push(self.workers, self.version)
        return self.version

    def _push(self, workers: list, version: int) -> None:
        """``workers`` get the weights of ``version``: on the collective transport every member
        of the group receives them (a replaced worker's peers reload what they have)."""
        if self.weights is None:
            raise RuntimeError("RolloutPool.update_weights: the pool was made without a weight source")
        if self.transport == "disk":
            self._push_buckets(workers, version)
            return
        for attempt in (1, 2):
            if self.channel is None:
                self._connect()
            layout = self.weights.weight_layout(self.chunk_bytes)
            calls = [w.receive_weights.remote(layout, version) for w in self.workers]
            try:
                self.weights.send_weights(layout)
                ray.get(calls)
                return
            except Exception:  # a worker died mid-update: replace it, rebuild the group, send again
                dead = [slot for slot, call in enumerate(calls) if _died(call)]
                if attempt == 2 or not dead:
                    raise
                for slot in dead:
                    self._replace(slot, push=False)

    def _connect(self) -> None:
        """A new generation of the transfer group: the sender and every engine process. The
        shared channel where every receiver can map the sender's buffers, else broadcast."""
        endpoint = self.weights.weight_endpoint(self.chunk_bytes)
        ranks = ray.get([w.weight_group_ranks.remote() for w in self.workers])
        channel = self.force_channel or (
            "shared" if all(ray.get([w.can_map_weights.remote(endpoint) for w in self.workers])) else "broadcast")
        self.generation += 1
        group = uuid.uuid4().hex  # (unique on the sender's store, whichever pool made it)
        size, firsts = 1 + sum(ranks), [1 + r for r in itertools.accumulate([0] + ranks[:-1])]
        calls = [w.join_weight_group.remote(endpoint, first, size, group, channel)
                 for w, first in zip(self.workers, firsts)]
        self.weights.connect_weights(size, group, channel)
        ray.get(calls)
        self.channel = channel

    def _push_buckets(self, workers: list, version: int) -> None:
        # An actor runs one caller's calls in order: "begin" is waited for with the first bucket
        # (which the learner packs meanwhile), so an update is a round trip per bucket and one more.
        calls = [w.begin_update.remote() for w in workers]
        for ref in self.weights.weight_buckets(self.bucket_bytes):
            ray.get(calls + [w.load_bucket.remote(ref) for w in workers])
            calls = []
            del ref  # released before the next bucket is built
        ray.get(calls + [w.finish_update.remote(version) for w in workers])

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
