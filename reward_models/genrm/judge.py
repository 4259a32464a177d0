"""Judge backends, one interface: ``compare_many([Comparison, ...]) -> [Verdict, ...]`` (and
``compare`` for one).

* ``HttpJudge``: an OpenAI-compatible chat-completions endpoint, e.g. ``vllm serve`` of the real
  GenRM on GPUs. Requests run on an asyncio loop of the judge's own (a daemon thread, so callers
  on any thread share it) with at most ``max_concurrency`` in flight; each has a ``timeout``, and a
  failed one (connection dropped, HTTP 429/5xx, timeout) is retried ``retries`` times with
  exponential backoff; after that the comparison raises ``JudgeError`` (an endpoint that is down
  is an error to report, never a silent neutral reward). The API key is read from the
  environment variable ``api_key_env`` and sent as a bearer token; it is never logged.
* ``LocalJudge``: a checkpoint on the rollout engines (``rlvr.rollout``: builtin or vLLM), for
  small judges and tests; every comparison of a call goes to the engine as one batch.

Both re-ask an answer that holds no verdict ``parse_retries`` times (sampled answers differ;
greedy ones would not, so a greedy local judge does not re-ask), then use the neutral verdict,
counted in ``stats.fallbacks``. An answer holds a verdict only of the judge's own: not when it was
cut off (``finish_reason`` "length"), and never one that quotes the candidates or the
conversation (``verdict.parse_verdict``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import random
import threading
from collections.abc import Sequence

from reward_models.genrm.verdict import NEUTRAL, Verdict, VerdictError, judge_messages, parse_verdict


@dataclasses.dataclass(frozen=True)
class Comparison:
    conversation: tuple[dict, ...]
    response_1: str
    response_2: str
    principle: str | None = None

    def quoted(self) -> tuple[str, ...]:
        """What the judge is shown besides its instructions: never a source of its verdict."""
        return (self.response_1, self.response_2, *(m["content"] for m in self.conversation),
                *((self.principle,) if self.principle else ()))


class JudgeError(RuntimeError):
    """The judge could not be asked (endpoint unreachable or failing after every retry)."""


@dataclasses.dataclass
class JudgeStats:
    comparisons: int = 0
    requests: int = 0  # HTTP requests or engine prompts, retries included
    http_retries: int = 0
    parse_retries: int = 0
    fallbacks: int = 0  # answers never parsed: the neutral verdict was used
    peak_in_flight: int = 0


class Judge:
    """What every backend gives: ``compare_many`` (in order) and ``compare``."""

    stats: JudgeStats

    def compare_many(self, items: Sequence[Comparison]) -> list[Verdict]:
        raise NotImplementedError

    def compare(self, conversation: Sequence[dict], response_1: str, response_2: str,
                principle: str | None = None) -> Verdict:
        return self.compare_many([Comparison(tuple(conversation), response_1, response_2, principle)])[0]

    def close(self) -> None:
        pass


class HttpJudge(Judge):
    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", max_concurrency: int = 16,
                 timeout: float = 120.0, retries: int = 3, backoff: float = 0.5, parse_retries: int = 2,
                 temperature: float = 0.0, max_tokens: int = 4096, native_roles: bool = False):
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.max_concurrency, self.timeout, self.retries, self.backoff = max_concurrency, timeout, retries, backoff
        self.parse_retries, self.temperature, self.max_tokens = parse_retries, temperature, max_tokens
        self.native_roles = native_roles
        self.stats = JudgeStats()
        self._in_flight = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="http-judge", daemon=True)
        self._thread.start()
        self._slots = None

    def compare_many(self, items: Sequence[Comparison]) -> list[Verdict]:
        return asyncio.run_coroutine_threadsafe(self._compare_all(list(items)), self._loop).result()

    async def _compare_all(self, items: list[Comparison]) -> list[Verdict]:
        import aiohttp

        if self._slots is None:  # (made on the judge's loop, which it belongs to; shared by every call)
            self._slots = asyncio.Semaphore(self.max_concurrency)
        # A session per call: its connections are reused within the call and closed with it.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.max_concurrency)) as session:
            found = await asyncio.gather(*(self._compare_one(session, item) for item in items), return_exceptions=True)
        for outcome in found:  # (every comparison has finished: none is left running on the loop)
            if isinstance(outcome, BaseException):
                raise outcome
        return found

    async def _compare_one(self, session, item: Comparison) -> Verdict:
        self.stats.comparisons += 1
        messages = judge_messages(item.conversation, item.response_1, item.response_2, item.principle,
                                  self.native_roles)
        for attempt in range(self.parse_retries + 1):
            text, finish_reason = await self._complete(session, messages)
            try:
                return parse_verdict(text, finish_reason, item.quoted())
            except VerdictError:
                if attempt < self.parse_retries:
                    self.stats.parse_retries += 1
        self.stats.fallbacks += 1
        return NEUTRAL

    async def _complete(self, session, messages: list[dict]) -> tuple[str, str]:
        """The judge's answer to ``messages`` and why it ended, retrying failed requests with backoff."""
        import aiohttp

        body = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens}
        key = os.environ.get(self.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.http_retries += 1
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
            async with self._slots:
                self._in_flight += 1
                self.stats.peak_in_flight = max(self.stats.peak_in_flight, self._in_flight)
                self.stats.requests += 1
                try:
                    async with session.post(self.url, json=body, headers=headers,
                                                  timeout=aiohttp.ClientTimeout(total=self.timeout)) as reply:
                        if reply.status == 200:
                            return _content(await reply.json(content_type=None))
                        last = f"HTTP {reply.status}: {(await reply.text())[:200]}"
                        if reply.status not in (408, 409, 429) and reply.status < 500:
                            raise JudgeError(f"{self.url}: {last}")  # a request the endpoint refuses: no retry
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as err:
                    last = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                finally:
                    self._in_flight -= 1
        raise JudgeError(f"{self.url}: no answer after {self.retries + 1} attempts (last: {last})")

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def _content(reply: dict) -> tuple[str, str]:
    """The answer's text from a chat-completions reply, and its ``finish_reason``."""
    choice = reply["choices"][0]
    content = choice["message"].get("content")
    if not isinstance(content, str):
        raise ValueError("the reply has no message content")
    return content, str(choice.get("finish_reason") or "stop")


class LocalJudge(Judge):
    """A judge checkpoint on a rollout engine in this process, loaded at the first comparison (an
    environment made only to check a config's rows never loads it)."""

    def __init__(self, checkpoint: str, *, tokenizer: str = "byte", engine: str = "builtin", parse_retries: int = 2,
                 temperature: float = 0.0, max_tokens: int = 256, native_roles: bool = False, seed: int = 0):
        from pathlib import Path

        if not (Path(checkpoint) / "config.json").is_file():
            raise ValueError(f"checkpoint {checkpoint} is not a checkpoint folder (no config.json)")
        self.spec = (checkpoint, engine, tokenizer)
        self.parse_retries = parse_retries if temperature > 0 else 0
        self.temperature, self.max_tokens, self.native_roles, self.seed = temperature, max_tokens, native_roles, seed
        self.stats = JudgeStats()

    @functools.cached_property
    def engine(self):
        from rlvr.rollout.workers import EngineSpec, build_engine

        checkpoint, backend, tokenizer = self.spec
        return build_engine(EngineSpec(checkpoint, backend=backend, tokenizer=tokenizer))

    def compare_many(self, items: Sequence[Comparison]) -> list[Verdict]:
        from rlvr.chat import render
        from rlvr.rollout.engine import SamplingParams

        self.stats.comparisons += len(items)
        verdicts: list[Verdict | None] = [None] * len(items)
        prompts = {}
        for i, item in enumerate(items):
            text = render(self.engine.tokenizer, judge_messages(item.conversation, item.response_1, item.response_2,
                                                                item.principle, self.native_roles))
            if len(self.engine.tokenizer.encode(text)) + self.max_tokens <= self.engine.max_model_len:
                prompts[i] = text
            else:  # longer than the judge's context: nothing to ask
                verdicts[i] = NEUTRAL
                self.stats.fallbacks += 1
        for attempt in range(self.parse_retries + 1):
            if not prompts:
                break
            sampling = SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens, seed=self.seed + attempt)
            self.stats.requests += len(prompts)
            for i, completion in zip(list(prompts), self.engine.generate(list(prompts.values()), sampling)):
                try:
                    verdicts[i] = parse_verdict(completion.text, completion.finish_reason, items[i].quoted())
                    del prompts[i]
                except VerdictError:
                    pass
            self.stats.parse_retries += len(prompts) if attempt < self.parse_retries else 0
        for i in prompts:
            verdicts[i] = NEUTRAL
            self.stats.fallbacks += 1
        return verdicts
