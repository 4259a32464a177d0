"""The rollout engine interface: what every backend (builtin torch, vLLM) implements."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Protocol

import torch


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Checked once, here, for every engine. A single stop string or stop id may be given bare
    (``stop="###"`` is one string, not three characters)."""

    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    max_tokens: int = 128
    stop: tuple[str, ...] = ()  # stop strings: generation ends when the text contains one
    stop_token_ids: tuple[int, ...] = ()  # besides the tokenizer's eos
    n: int = 1  # samples per prompt
    seed: int | None = None
    ignore_eos: bool = False  # generate max_tokens whatever comes (benchmarks)
    # return the experts every MoE layer chose for each token the model read (``Completion.experts``):
    # routing replay in the learner
    routed_experts: bool = False
    # also score each sample's tokens by one forward over prompt + sample (the learner's path:
    # for Mamba layers the chunked scan, not the decode recurrence): ``Completion.prefill_logprobs``
    prefill_logprobs: bool = False

    def __post_init__(self):
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        ids = (self.stop_token_ids,) if _is_int(self.stop_token_ids) else tuple(self.stop_token_ids)
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "stop_token_ids", tuple(int(i) for i in ids if _is_int(i)))
        if not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop: expected non-empty strings, got {stop!r}")
        if len(self.stop_token_ids) != len(ids):
            raise ValueError(f"stop_token_ids: expected token ids (whole numbers), got {ids!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        for name, low in (("top_k", 0), ("max_tokens", 1), ("n", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be a whole number or None, got {self.seed!r}")


def expert_dtype(n_experts: int) -> torch.dtype:
    """The smallest integer type that holds an expert index and -1 (no record)."""
    return torch.int8 if n_experts <= 128 else torch.int16


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def prompt_repeats(ids: list[list[int]]) -> list[int]:
    """For each prompt, how many copies of it came earlier in the list: what the engines draw a
    copy's samples from, besides the seed and the tokens, so copies in one call differ."""
    seen: dict[tuple[int, ...], int] = {}
    repeats = []
    for p in ids:
        repeats.append(seen.get(tuple(p), 0))
        seen[tuple(p)] = repeats[-1] + 1
    return repeats


def prompt_ids(prompts, tokenizer, max_len: int | None = None) -> list[list[int]]:
    """Prompts (strings, or token ids as lists or tensors) as lists of ints, checked: a bare
    string is refused (it would be one prompt per character), as are empty prompts and prompts
    longer than ``max_len``."""
    if isinstance(prompts, str) or (isinstance(prompts, torch.Tensor) and prompts.dim() < 2):
        raise TypeError("prompts must be a list (of strings or of token-id lists); to generate from one "
                        "prompt, pass [prompt]")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            ids = tokenizer.encode(p)
        elif isinstance(p, torch.Tensor):
            ids = [int(t) for t in p.reshape(-1).tolist()]
        else:
            ids = [int(t) for t in p]
        if not ids:
            raise ValueError(f"prompt {i} is empty")
        if max_len is not None and len(ids) >= max_len:
            raise ValueError(f"prompt {i} has {len(ids)} tokens; the engine holds at most {max_len} "
                             "(max_model_len; by default the model's max_position_embeddings)")
        out.append(ids)
    return out


class StopStrings:
    """Watches one sample's text grow token by token and says when it first contains a stop
    string, in time linear in its length: each step decodes only the last few tokens (from an
    offset a step or two back, so a tokenizer that spells a token differently at the start of a
    text, or a character split over several byte tokens, still reads right) and searches only
    where a stop string could newly end. (Decoding the whole text every step was O(T^2).)"""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        self.tokenizer, self.stops = tokenizer, stops
        self.longest = max(map(len, stops), default=0)
        self.tokens: list[int] = []
        self.text = ""  # the decoded text of the tokens up to ``_read``
        self._prefix = self._read = 0  # decode window: tokens[_prefix:] (tokens before _read are in text)
        self.cut: int | None = None  # where the first stop string starts in ``text``, once one appeared

    def add(self, token: int) -> bool:
        """Append one token; True when the text now contains a stop string (``cut`` says where)."""
        self.tokens.append(token)
        before = self.tokenizer.decode(self.tokens[self._prefix:self._read])
        window = self.tokenizer.decode(self.tokens[self._prefix:])
        if len(window) <= len(before) or window.endswith("\ufffd"):
            return False  # no complete new character yet
        start = max(0, len(self.text) - self.longest + 1)
        self.text += window[len(before):]
        self._prefix, self._read = self._read, len(self.tokens)
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.cut = min(hits)
        return bool(hits)


def cut_at_stop(tokenizer, tokens: list[int], stops: tuple[str, ...]) -> tuple[int, str] | None:
    """(tokens up to and including the one that completes the first stop string, the text before
    that stop string), or None when no stop string appears."""
    watch = StopStrings(tokenizer, stops)
    for i, token in enumerate(tokens):
        if watch.add(token):
            return i + 1, watch.text[:watch.cut]
    return None


@dataclasses.dataclass
class Completion:
    """One sample. ``logprobs[i]`` is log p(token_ids[i]) under the unmodified model distribution
    (temperature 1, no top-k/top-p), in fp32: what the learner's teacher-forced forward
    computes, so the two can be compared token for token."""

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str  # "stop" (eos, stop token or stop string), "length" or "abort"
    weights_version: int = 0
    # With ``SamplingParams.routed_experts``: (len(prompt_ids) + len(token_ids) - 1, MoE layers,
    # top_k), the experts chosen for each token the model read (the prompt's, then each generated
    # token but the last, which is never read), int8 (int16 past 128 experts).
    experts: torch.Tensor | None = None
    # With ``SamplingParams.prefill_logprobs``: ``logprobs`` as one prefill forward gives them.
    prefill_logprobs: list[float] | None = None


class Engine(Protocol):
    weights_version: int

    def generate(self, prompts: list[str] | list[list[int]], sampling: SamplingParams) -> list[Completion]: ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None: ...

    def abort(self) -> None: ...
