"""The builtin rollout engine: batched generation with the hybrid model's own caches.

Needs nothing but torch. Requests are (prompt, sample) pairs; up to ``max_batch`` of them decode
together, each step one token for every active row. A finished row leaves the batch at once and
a waiting request joins in its place (continuous batching): new requests are prefilled together
(right-padded, exact thanks to per-row lengths), each distinct prompt once however many samples
it has, and their cache rows are merged into the running batch. Log-probabilities are computed
in fp32 from the unmodified distribution.

Memory follows use: KV caches and output buffers grow (doubling, capped at the longest possible
sequence) with what is generated, so a generous ``max_tokens`` costs nothing until it is used.

Randomness is per request, as vLLM's per-request seed: the uniform number that draws token t of
a request is a counter-based hash of (the request's key, t), the key coming from (seed, prompt
tokens, which repeat of that prompt in the call, sample index). A prompt's samples therefore do not
depend on the other prompts of the call, their order, ``max_batch`` or which worker ran it.
"""

from __future__ import annotations

import gc
import hashlib
import random
import threading
from collections import deque
from collections.abc import Iterable

import torch

from rlvr import kernels
from rlvr.model import HybridLM
from rlvr.model.names import load_named, targets
from rlvr.rollout.weights import Endpoint, GroupReceiver, Layout, MappedReader, can_map, next_version, update_weights
from rlvr.rollout.engine import Completion, SamplingParams, StopStrings, expert_dtype, prompt_repeats
from rlvr.rollout.engine import prompt_ids as engine_prompt_ids
from rlvr.tokenizer import Tokenizer


class _Outputs:
    """What every request has generated so far, as tensors: (requests, capacity) token ids and
    log-probabilities plus a count per request, so a decode step records all rows with two index
    writes instead of a Python loop over rows. Capacity doubles on demand (a generous max_tokens
    costs nothing until used)."""

    def __init__(self, requests: int, max_tokens: int, routing: tuple[int, int, torch.dtype] | None = None):
        self.max_tokens = max_tokens
        capacity = min(max_tokens, 256)
        self.tokens = torch.zeros(requests, capacity, dtype=torch.long)
        self.logprobs = torch.zeros(requests, capacity)
        self.count = torch.zeros(requests, dtype=torch.long)
        # with routing (MoE layers, top_k, dtype): the experts chosen for each generated token
        # when it was read back (requests, capacity, layers, top_k), and each prompt's (prefill)
        self.experts = None if routing is None else torch.full((requests, capacity, *routing[:2]), -1,
                                                                dtype=routing[2])
        self.prompt_experts: dict[int, torch.Tensor] = {}
        self.finish: list[str | None] = [None] * requests
        self.text: list[str | None] = [None] * requests
        self.watch: dict[int, StopStrings] = {}  # request -> its stop-string watcher (when there are stops)

    def record(self, requests: torch.Tensor, tokens: torch.Tensor, logprobs: torch.Tensor) -> None:
        pos = self.count[requests]
        if int(pos.max()) >= self.tokens.shape[1]:
            grow = min(self.tokens.shape[1], self.max_tokens - self.tokens.shape[1])
            self.tokens = torch.nn.functional.pad(self.tokens, (0, grow))
            self.logprobs = torch.nn.functional.pad(self.logprobs, (0, grow))
            if self.experts is not None:
                self.experts = torch.nn.functional.pad(self.experts, (0, 0, 0, 0, 0, grow), value=-1)
        self.tokens[requests, pos] = tokens
        self.logprobs[requests, pos] = logprobs
        self.count[requests] = pos + 1

    def record_experts(self, requests: torch.Tensor, routing: list[torch.Tensor]) -> None:
        """A decode step's routing (per MoE layer, (rows, 1, top_k)): that of each row's last
        recorded token, which the step read."""
        self.experts[requests, self.count[requests] - 1] = torch.stack(routing, 2)[:, 0].to(self.experts.dtype)

    def token_ids(self, request: int) -> list[int]:
        return self.tokens[request, :int(self.count[request])].tolist()

    def read_experts(self, request: int, prompt: int) -> torch.Tensor | None:
        """(prompt + generated - 1, layers, top_k): every token the model read, in order."""
        if self.experts is None or prompt not in self.prompt_experts:  # (none: aborted before its prefill)
            return None
        count = int(self.count[request])
        prompt_part = self.prompt_experts[prompt]
        return torch.cat([prompt_part, self.experts[request, :max(count - 1, 0)]])[:len(prompt_part) + count - 1]


def request_keys(prompt_ids: list[list[int]], n: int, seed: int) -> torch.Tensor:
    """-> (len(prompt_ids) * n, 2) int64: two 32-bit halves of a key for each request (request r
    is sample r % n of prompt r // n) from (seed, prompt tokens, earlier copies of the prompt in
    this call, sample index). Copies of a prompt get different keys; neighbours do not matter."""
    keys = []
    for ids, copy in zip(prompt_ids, prompt_repeats(prompt_ids)):
        for sample in range(n):
            text = f"{seed}|{copy}|{sample}|{','.join(map(str, ids))}".encode()
            key = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")
            keys.append((key & 0xFFFFFFFF, key >> 32))
    return torch.tensor(keys, dtype=torch.long).view(-1, 2)


def sample_tokens(logits: torch.Tensor, sampling: SamplingParams, uniform: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (rows, vocab) fp32, uniform (rows,) in [0, 1) (None when greedy) -> (token ids,
    their log-probabilities under the raw model). Inverse-CDF sampling, one uniform number per
    row: torch.multinomial (or Gumbel noise) draws a number per vocabulary entry, which cost 0.8 ms
    of a 2 ms decode step."""
    if sampling.temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, torch.log_softmax(logits.float(), -1).gather(1, tokens[:, None])[:, 0]
    return kernels.sample(logits, sampling.temperature, uniform, sampling.top_k, sampling.top_p)


class BuiltinEngine:
    def __init__(self, model: HybridLM, tokenizer: Tokenizer, max_batch: int = 64, max_model_len: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_model_len = max_model_len or model.config.max_position_embeddings
        self.weights_version = 0
        self._receiver: GroupReceiver | None = None  # this engine's end of the weight-transfer group
        self._mapped = MappedReader()  # (and of the mapped channel)
        self._running: set[threading.Event] = set()  # one stop flag per generate call in progress
        self._running_lock = threading.Lock()

    # -- Engine protocol
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None:
        update_weights(self, named_tensors, version)

    # Weight transport (rlvr/rollout/weights.py): tensors are copied into the parameters in place,
    # from the group's chunks or from buckets.
    def weight_group_ranks(self) -> int:
        return 1

    def can_map_weights(self, endpoint: dict) -> bool:
        return can_map(Endpoint(**endpoint))

    def join_weight_group(self, endpoint: dict, first_rank: int, size: int, group: str, mode: str) -> None:
        self._receiver = None  # (the last generation's, if any: its connections close)
        device = next(self.model.parameters()).device
        self._receiver = GroupReceiver(Endpoint(**endpoint), first_rank, size, group, mode, device=str(device))

    @torch.no_grad()
    def receive_weights(self, update: dict, version: int) -> None:
        """One update: read from the sender's memory (the mapped channel) straight into the
        parameters, or received chunk by chunk from the group."""
        if update.get("kind") == "mapped":
            target_of = targets(self.model)
            self._mapped.read(update, lambda name, dtype, shape: target_of(name))
        else:
            self._receiver.receive(Layout.from_dict(update), lambda items: load_named(self.model, items))
        self.finish_weight_update(version)

    def begin_weight_update(self) -> None:
        pass

    def load_weight_bucket(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        load_named(self.model, named_tensors)

    def finish_weight_update(self, version: int | None = None) -> None:
        self.weights_version = next_version(self.weights_version, version)

    def abort(self) -> None:
        """Stop every ``generate`` running now (from any thread): their unfinished samples return
        with finish_reason "abort". A call that starts afterwards is not affected."""
        with self._running_lock:
            for stop in self._running:
                stop.set()

    @torch.no_grad()
    def generate(self, prompts, sampling: SamplingParams) -> list[Completion]:
        self.model.eval()  # (a learner's module, with rollout.colocate: in train mode between its steps)
        # Generation allocates a few objects per token and frees none until the end; the cyclic
        # garbage collector would rescan them all every few thousand allocations (~6% of a
        # CPU rollout). Nothing here forms cycles.
        collecting = gc.isenabled()
        gc.disable()
        try:
            # The weights cannot change during one generate (updates wait for it), so their
            # kernel layouts are made once for all its decode steps.
            with kernels.frozen_weights():
                return self._generate(prompts, sampling)
        finally:
            if collecting:
                gc.enable()

    def _generate(self, prompts, sampling: SamplingParams) -> list[Completion]:
        prompt_ids = engine_prompt_ids(prompts, self.tokenizer, self.max_model_len)
        if not prompt_ids:
            return []
        stop_ids = torch.tensor(sorted(set(sampling.stop_token_ids) | (
            set() if sampling.ignore_eos else {self.tokenizer.eos_token_id})), dtype=torch.long)
        n = sampling.n
        keys = request_keys(prompt_ids, n, sampling.seed if sampling.seed is not None else random.randrange(2**63))
        pending = deque(range(len(prompts) * n))  # request r is sample r % n of prompt r // n
        routing = self._routing_shape() if sampling.routed_experts else None
        out = _Outputs(len(prompts) * n, sampling.max_tokens, routing)
        stop = threading.Event()
        with self._running_lock:
            self._running.add(stop)
        try:
            self._decode(prompt_ids, sampling, stop_ids, keys, pending, out, stop)
        finally:
            with self._running_lock:
                self._running.discard(stop)
        completions = [self._completion(out, r, prompt_ids[r // n], n) for r in range(len(prompts) * n)]
        if sampling.prefill_logprobs:
            for start in range(0, len(completions), self.max_batch):
                self._score_by_prefill(completions[start:start + self.max_batch])
        return completions

    def _score_by_prefill(self, completions: list[Completion]) -> None:
        """Each completion's tokens, log-probabilities from one forward over prompt + tokens
        (right-padded together): what the learner computes, where the samples came from decode
        steps. Their difference on the same weights is the prefill-vs-decode gap."""
        rows = [c for c in completions if c.token_ids]
        if not rows:
            return
        lengths = torch.tensor([len(c.prompt_ids) + len(c.token_ids) for c in rows])
        ids = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
        for i, c in enumerate(rows):
            ids[i, :lengths[i]] = torch.tensor(c.prompt_ids + c.token_ids)
        col = torch.arange(ids.shape[1] - 1)
        keep = (col >= torch.tensor([len(c.prompt_ids) - 1 for c in rows])[:, None]) & (col < lengths[:, None] - 1)
        logp, _ = self.model(ids[:, :-1], keep=keep, targets=ids[:, 1:][keep])
        for c, part in zip(rows, logp.split([len(c.token_ids) for c in rows])):
            c.prefill_logprobs = part.tolist()

    def _decode(self, prompt_ids, sampling, stop_ids, keys, pending, out, stop) -> None:
        """Continuous batching until every request finished or ``stop`` is set."""
        n = sampling.n
        active = torch.zeros(0, dtype=torch.long)  # request of each running row
        cache, last = None, None

        def draw(logits, requests):  # the next token of each request, from its own random stream
            uniform = None if sampling.temperature == 0 else kernels.counter_uniform(keys[requests], out.count[requests])
            return sample_tokens(logits, sampling, uniform)

        while (len(active) or pending) and not stop.is_set():
            if len(active):
                routing = [] if out.experts is not None else None
                tokens, logps = draw(self.model.step(last, cache, routing), active)
                if routing:
                    out.record_experts(active, routing)
                active, cache, last = self._advance(out, active, cache, tokens, logps, sampling, stop_ids)
            if pending and len(active) < self.max_batch:
                batch = torch.tensor([pending.popleft() for _ in range(min(self.max_batch - len(active), len(pending)))])
                new_cache, logits = self._prefill(batch.tolist(), prompt_ids, n, out)
                # KV caches grow by doubling as tokens come, never past the longest sequence here.
                new_cache.limit(max(len(prompt_ids[r // n]) for r in batch.tolist()) + sampling.max_tokens)
                tokens, logps = draw(logits, batch)
                new, new_cache, new_last = self._advance(out, batch, new_cache, tokens, logps, sampling, stop_ids)
                if len(new):
                    if cache is None:
                        cache, last = new_cache, new_last
                    else:
                        cache.merge(new_cache)
                        last = torch.cat([last, new_last])
                    active = torch.cat([active, new])
        for r in active.tolist() + list(pending):  # only after an abort
            out.finish[r] = "abort"

    # -- steps
    def _routing_shape(self) -> tuple[int, int, torch.dtype]:
        """(MoE layers, top_k, dtype) of a routing record."""
        c = self.model.config
        return c.pattern.count("E"), c.num_experts_per_tok, expert_dtype(c.n_routed_experts)

    def _prefill(self, batch: list[int], prompt_ids: list[list[int]], n: int, out: _Outputs):
        """Prefill each distinct prompt of ``batch`` (request ids) once (recording its routing
        in ``out`` when asked); return a cache and next-token logits with one row per request."""
        distinct = sorted({r // n for r in batch})
        lengths = torch.tensor([len(prompt_ids[p]) for p in distinct])
        padded = torch.zeros(len(distinct), int(lengths.max()), dtype=torch.long)
        for i, p in enumerate(distinct):
            padded[i, :lengths[i]] = torch.tensor(prompt_ids[p])
        cache = self.model.new_cache()
        routing = [] if out.experts is not None else None
        logits = self.model(padded, cache=cache, lengths=lengths, routing=routing)
        if routing:
            chosen = torch.stack(routing, 2).to(out.experts.dtype)  # (prompts, length, layers, top_k)
            for i, p in enumerate(distinct):
                out.prompt_experts[p] = chosen[i, :lengths[i]]
        last = logits[torch.arange(len(distinct)), lengths - 1]
        where = {p: i for i, p in enumerate(distinct)}
        rows = torch.tensor([where[r // n] for r in batch])
        cache.select(rows)
        return cache, last[rows]

    def _advance(self, out: _Outputs, active: torch.Tensor, cache, tokens, logps, sampling: SamplingParams,
                 stop_ids: torch.Tensor):
        """Record one token per running row, mark finished requests, and drop their rows from
        the batch. -> (requests still running, cache, their last tokens)."""
        out.record(active, tokens, logps)
        stopped = torch.isin(tokens, stop_ids)
        done = stopped | (out.count[active] >= sampling.max_tokens)
        if sampling.stop:  # stop strings need the text of each row
            for i, (r, token) in enumerate(zip(active.tolist(), tokens.tolist())):
                if r not in out.watch:
                    out.watch[r] = StopStrings(self.tokenizer, sampling.stop)
                if out.watch[r].add(token) and not bool(stopped[i]):
                    out.text[r] = out.watch[r].text[:out.watch[r].cut]
                    stopped[i] = done[i] = True
        if not bool(done.any()):
            return active, cache, tokens
        for i in done.nonzero()[:, 0].tolist():
            out.finish[int(active[i])] = "stop" if bool(stopped[i]) else "length"
        if bool(done.all()):
            return active[:0], None, None
        keep = cache.drop(~done)
        return active[keep], cache, tokens[keep]

    def _completion(self, out: _Outputs, r: int, prompt: list[int], n: int) -> Completion:
        token_ids = out.token_ids(r)
        text = out.text[r] if out.text[r] is not None else self.tokenizer.decode(token_ids)
        logprobs = out.logprobs[r, :len(token_ids)].tolist()
        return Completion(r // n, r % n, prompt, token_ids, logprobs, text, out.finish[r], self.weights_version,
                          out.read_experts(r, r // n))
