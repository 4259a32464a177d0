"""The rollout engine interface: what every backend (builtin torch, vLLM) implements."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Protocol

import torch


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    max_tokens: int = 128
    stop: tuple[str, ...] = ()  # stop strings: generation ends when the text contains one
    stop_token_ids: tuple[int, ...] = ()  # besides the tokenizer's eos
    n: int = 1  # samples per prompt
    seed: int | None = None
    ignore_eos: bool = False  # generate max_tokens whatever comes (benchmarks)

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_tokens < 1 or self.n < 1 or self.top_k < 0:
            raise ValueError("max_tokens and n must be >= 1, top_k >= 0")


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


class Engine(Protocol):
    weights_version: int

    def generate(self, prompts: list[str] | list[list[int]], sampling: SamplingParams) -> list[Completion]: ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None: ...

    def abort(self) -> None: ...
