"""The builtin rollout engine: batched generation with the hybrid model's own caches.

Needs nothing but torch. Requests are (prompt, sample) pairs; up to ``max_batch`` of them decode
together, each step one token for every active row. A finished row leaves the batch at once and
a waiting request joins in its place (continuous batching): new requests are prefilled together
(right-padded, exact thanks to per-row lengths), each distinct prompt once however many samples
it has, and their cache rows are merged into the running batch. Log-probabilities are computed
in fp32 from the unmodified distribution.
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from collections.abc import Iterable

import torch

from rlvr.model import HybridLM
from rlvr.model.names import load_named
from rlvr.rollout.engine import Completion, SamplingParams
from rlvr.tokenizer import Tokenizer


@dataclasses.dataclass
class _Row:
    prompt_index: int
    sample_index: int
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    text: str | None = None


def sample_tokens(logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (rows, vocab) fp32 -> (token ids, their log-probabilities under the raw model)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    if sampling.temperature == 0:
        tokens = logits.argmax(-1)
    else:
        scaled = logits.float() / sampling.temperature
        if sampling.top_k:
            kth = scaled.topk(min(sampling.top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, -torch.inf)
        if sampling.top_p < 1:
            sorted_logits, order = scaled.sort(dim=-1, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            # Drop a token when the mass before it already reaches top_p (the first always stays).
            drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= sampling.top_p
            scaled = scaled.masked_fill(drop_sorted.scatter(1, order, drop_sorted), -torch.inf)
        tokens = torch.multinomial(scaled.softmax(-1), 1, generator=generator)[:, 0]
    return tokens, logprobs.gather(1, tokens[:, None])[:, 0]


class BuiltinEngine:
    def __init__(self, model: HybridLM, tokenizer: Tokenizer, max_batch: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.weights_version = 0
        self._aborted = False

    # -- Engine protocol
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None:
        load_named(self.model, named_tensors)
        self.weights_version = self.weights_version + 1 if version is None else version

    def abort(self) -> None:
        """Stop the running ``generate``: unfinished samples return with finish_reason "abort"."""
        self._aborted = True

    @torch.no_grad()
    def generate(self, prompts, sampling: SamplingParams) -> list[Completion]:
        prompt_ids = [self._ids(p, i) for i, p in enumerate(prompts)]
        stop_ids = set(sampling.stop_token_ids) | (set() if sampling.ignore_eos else {self.tokenizer.eos_token_id})
        generator = torch.Generator().manual_seed(sampling.seed if sampling.seed is not None
                                                  else random.randrange(2**63))
        pending = deque((p, s) for p in range(len(prompts)) for s in range(sampling.n))
        longest = max(map(len, prompt_ids)) + sampling.max_tokens
        rows: list[_Row] = []
        cache, last = None, None
        finished: list[_Row] = []
        self._aborted = False
        while (rows or pending) and not self._aborted:
            if rows:
                tokens, logps = sample_tokens(self.model.step(last, cache), sampling, generator)
                last = self._advance(rows, tokens, logps, sampling, stop_ids)
                rows, cache, last = self._drop_finished(rows, cache, last, finished)
            if pending and len(rows) < self.max_batch:
                batch = [pending.popleft() for _ in range(min(self.max_batch - len(rows), len(pending)))]
                new_cache, logits = self._prefill(batch, prompt_ids)
                new_cache.reserve(longest)  # KV room for the whole generation: no regrowth per step
                new_rows = [_Row(p, s) for p, s in batch]
                tokens, logps = sample_tokens(logits, sampling, generator)
                new_last = self._advance(new_rows, tokens, logps, sampling, stop_ids)
                new_rows, new_cache, new_last = self._drop_finished(new_rows, new_cache, new_last, finished)
                if new_rows:
                    if cache is None:
                        cache, last = new_cache, new_last
                    else:
                        cache.merge(new_cache)
                        last = torch.cat([last, new_last])
                    rows.extend(new_rows)
        for row in rows + [_Row(p, s) for p, s in pending]:  # only after an abort
            row.finish_reason = "abort"
            finished.append(row)
        finished.sort(key=lambda r: (r.prompt_index, r.sample_index))
        return [self._completion(r, prompt_ids[r.prompt_index]) for r in finished]

    # -- steps
    def _ids(self, prompt, index: int) -> list[int]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ValueError(f"prompt {index} is empty")
        return ids

    def _prefill(self, batch: list[tuple[int, int]], prompt_ids: list[list[int]]):
        """Prefill each distinct prompt of ``batch`` once; return a cache and next-token logits
        with one row per (prompt, sample) of the batch."""
        distinct = sorted({p for p, _ in batch})
        lengths = torch.tensor([len(prompt_ids[p]) for p in distinct])
        padded = torch.zeros(len(distinct), int(lengths.max()), dtype=torch.long)
        for i, p in enumerate(distinct):
            padded[i, :lengths[i]] = torch.tensor(prompt_ids[p])
        cache = self.model.new_cache()
        logits = self.model(padded, cache=cache, lengths=lengths)
        last = logits[torch.arange(len(distinct)), lengths - 1]
        where = {p: i for i, p in enumerate(distinct)}
        rows = torch.tensor([where[p] for p, _ in batch])
        cache.select(rows)
        return cache, last[rows]

    def _advance(self, rows: list[_Row], tokens, logps, sampling: SamplingParams, stop_ids: set[int]):
        for row, token, logp in zip(rows, tokens.tolist(), logps.tolist()):
            row.token_ids.append(token)
            row.logprobs.append(logp)
            if token in stop_ids:
                row.finish_reason = "stop"
            elif sampling.stop:
                text = self.tokenizer.decode(row.token_ids)
                hits = [text.index(s) for s in sampling.stop if s in text]
                if hits:
                    row.finish_reason, row.text = "stop", text[:min(hits)]
            if row.finish_reason is None and len(row.token_ids) >= sampling.max_tokens:
                row.finish_reason = "length"
        return tokens

    @staticmethod
    def _drop_finished(rows, cache, last, finished):
        keep = [i for i, r in enumerate(rows) if r.finish_reason is None]
        finished.extend(r for r in rows if r.finish_reason is not None)
        if len(keep) == len(rows):
            return rows, cache, last
        if not keep:
            return [], None, None
        index = torch.tensor(keep)
        cache.select(index)
        return [rows[i] for i in keep], cache, last[index]

    def _completion(self, row: _Row, prompt: list[int]) -> Completion:
        text = row.text if row.text is not None else self.tokenizer.decode(row.token_ids)
        return Completion(row.prompt_index, row.sample_index, prompt, row.token_ids, row.logprobs,
                          text, row.finish_reason, self.weights_version)
