"""Multi-turn episodes: the engine generates, the environment answers, until done.

Token ids are kept exactly as generated: each turn's prompt is the previous token ids plus the
new observation's ids, never a re-tokenisation of the conversation text (re-tokenising can merge
or split tokens at turn boundaries and make the learner score tokens the engine never sampled).
Each episode carries a mask (1 = model-generated, trained on; 0 = prompt or observation) and the
sampling log-probabilities, aligned token for token with ``token_ids``.

An environment whose observations carry chat ``messages`` is rendered with the tokenizer's chat
template (``rlvr.chat``, contents as data); the environment's ``max_observation_tokens`` cuts
each observation and ``max_total_tokens`` ends an episode whose prompt and turns reach it.

One episode never costs the others: the steps of a turn run on a small thread pool, a step that
raises becomes that episode's error observation, and one that passes the environment's
``step_timeout`` ends that episode ("step_timeout"); the call goes on with the rest.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import torch

from rlvr import chat
from rlvr.env import MultiTurnEnvironment, Observation, Step
from rlvr.rollout.engine import SamplingParams


@dataclasses.dataclass
class Episode:
    task: Mapping[str, Any]
    prompt_ids: list[int]  # the first observation
    token_ids: list[int] = dataclasses.field(default_factory=list)  # everything after the prompt
    mask: list[int] = dataclasses.field(default_factory=list)  # 1 where the model generated the token
    logprobs: list[float] = dataclasses.field(default_factory=list)  # sampling logprob, 0.0 on observations
    reward: float = 0.0
    turns: int = 0
    done: bool = False
    finish_reason: str = ""
    weights_version: int = 0
    info: dict = dataclasses.field(default_factory=dict)
    messages: list = dataclasses.field(default_factory=list)  # the chat so far, when the environment speaks chat
    # (tokens read, MoE layers, top_k): the experts chosen for each token, with the engines'
    # routing records (``SamplingParams.routed_experts``); see ``read_routing``
    experts: torch.Tensor | None = None

    def append(self, ids: list[int], generated: bool, logprobs: list[float] | None = None) -> None:
        self.token_ids.extend(ids)
        self.mask.extend([1 if generated else 0] * len(ids))
        self.logprobs.extend(logprobs if generated else [0.0] * len(ids))

    def read_routing(self, experts: torch.Tensor | None) -> None:
        """A turn's routing record (every token the engine read in that turn: the history, then
        its own tokens). A token keeps the record of the turn that first read it: the one under
        which the tokens after it in that turn were sampled. The history's observations are
        first read by the next turn's prefill."""
        if experts is not None:
            self.experts = experts if self.experts is None else torch.cat([self.experts, experts[len(self.experts):]])


def _first_prompt(tokenizer, episode: Episode, first: Observation) -> list[int]:
    if first.messages:
        episode.messages = list(first.messages)
        return chat.encode_chat(tokenizer, first.messages)
    return tokenizer.encode(first.text)


def _observation_ids(tokenizer, episode: Episode, turn_text: str, turn_ids: list[int], obs: Observation,
                     limit: int | None) -> list[int]:
    """The tokens that follow a model turn, at most ``limit`` of them where the template allows:
    a chat observation's content is shortened, never the template's closing tags and the next
    generation prompt (an observation whose template text alone passes ``limit`` keeps that
    text, with its content left out); plain text is cut."""
    if not obs.messages:
        ids = chat.encode_data(tokenizer, obs.text)
        return ids if limit is None else ids[:limit]
    messages = [dict(m) for m in obs.messages]
    for attempt in range(9):
        ids = chat.encode_after_turn(tokenizer, episode.messages, messages, turn_ids)
        if limit is None or len(ids) <= limit:
            break
        for m in messages:  # shrink every content in proportion to the excess, then retry; last, drop it
            keep = 0 if attempt == 7 else max(0, int(len(m["content"]) * limit / len(ids)) - 16)
            m["content"] = m["content"][:keep] + " ...(cut)"
    episode.messages += [{"role": "assistant", "content": turn_text}, *messages]
    return ids


def _room(env, engine) -> int | None:
    """Tokens an episode may hold in all: the environment's budget and the engine's context."""
    return min((x for x in (env.max_total_tokens, getattr(engine, "max_model_len", None)) if x is not None), default=None)


def _next_turns(engine, envs: list, episodes: list[Episode], active: list[int], sampling: SamplingParams
                ) -> tuple[list, list[int]]:
    """One turn of every active episode (``envs`` and ``episodes`` are indexed by episode)
    -> (completions, the episodes they belong to). A turn may use what is left of the episode's
    token budget (the environment's ``max_total_tokens``, the engine's ``max_model_len``); an
    episode with no room left ends there. Episodes with the same room share one engine call
    (identical contexts always do, so that their samples differ)."""
    calls: dict[int, list[int]] = {}
    for i in active:
        room, used = _room(envs[i], engine), len(episodes[i].prompt_ids) + len(episodes[i].token_ids)
        budget = sampling.max_tokens if room is None else min(sampling.max_tokens, room - used)
        if budget < 1:
            episodes[i].finish_reason = "max_total_tokens"
            continue
        calls.setdefault(budget, []).append(i)
    by_episode = {}
    for budget, idx in calls.items():
        contexts = [episodes[i].prompt_ids + episodes[i].token_ids for i in idx]
        by_episode.update(zip(idx, engine.generate(contexts, dataclasses.replace(sampling, max_tokens=budget))))
    order = [i for i in active if i in by_episode]
    return [by_episode[i] for i in order], order


def _take_turns(pool: ThreadPoolExecutor, envs: list, texts: dict[int, str], episodes: list[Episode]
                ) -> dict[int, Step | None]:
    """Every episode's ``env.step`` at once, each under its environment's ``step_timeout``: a step
    that raises becomes an error observation (the episode goes on); one that does not return in
    time -> None (the episode ends; its thread is left to finish on its own)."""
    start = time.monotonic()
    futures = {i: pool.submit(envs[i].step, text) for i, text in texts.items()}
    steps = {}
    for i, future in futures.items():
        left = start + envs[i].step_timeout - time.monotonic()
        try:
            steps[i] = future.result(timeout=max(left, 0.0))
        except FutureTimeout:
            steps[i] = None
        except Exception as err:  # noqa: BLE001 - any failure of one turn is that episode's, never the call's
            text = f"Error: the environment could not take this turn ({type(err).__name__}: {str(err)[:300]})"
            messages = ({"role": "tool", "content": text},) if episodes[i].messages else ()
            steps[i] = Step(Observation(text, messages=messages), 0.0, False, {"step_error": text})
    return steps


def run_episodes(engine, make_env: Callable[[], MultiTurnEnvironment], tasks: list[Mapping[str, Any]],
                 sampling: SamplingParams, max_turns: int | None = None) -> list[Episode]:
    """Play one episode per task, all episodes advancing together one turn per engine call."""
    if sampling.n != 1:
        raise ValueError("multi-turn episodes sample one continuation per turn (n=1)")
    tokenizer = engine.tokenizer
    envs = [make_env() for _ in tasks]
    limit = (max_turns or envs[0].max_turns) if envs else 0
    episodes = []
    for env, task in zip(envs, tasks):
        episode = Episode(task=task, prompt_ids=[])
        episode.prompt_ids = _first_prompt(tokenizer, episode, env.reset(task))
        episodes.append(episode)
    active = list(range(len(tasks)))
    pool = ThreadPoolExecutor(max_workers=max(1, min(8, len(tasks))), thread_name_prefix="env-step")
    try:
        while active:
            completions, active = _next_turns(engine, envs, episodes, active, sampling)
            steps = _take_turns(pool, envs, {i: c.text for i, c in zip(active, completions)}, episodes)
            active = [i for i, c in zip(active, completions) if _advance(tokenizer, engine, envs[i], episodes[i], c,
                                                                          steps[i], limit)]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    for env in envs:
        getattr(env, "close", lambda: None)()
    return episodes


def _advance(tokenizer, engine, env, ep: Episode, completion, step: Step | None, limit: int) -> bool:
    """The model's turn and the environment's answer into the episode -> whether it goes on."""
    ep.append(completion.token_ids, True, completion.logprobs)
    ep.read_routing(completion.experts)
    ep.turns += 1
    ep.weights_version = completion.weights_version
    if step is None:
        ep.finish_reason, ep.reward = "step_timeout", 0.0
        ep.info["step_error"] = f"the environment's step took more than {env.step_timeout:g} s"
        return False
    ep.reward = step.reward
    ep.info.update(step.info)
    ends = step.done or completion.finish_reason == "abort" or ep.turns >= limit
    if ends and ep.messages:  # the transcript holds every model turn (offline scoring replays them)
        ep.messages.append({"role": "assistant", "content": completion.text})
    if step.done or completion.finish_reason == "abort":
        ep.done, ep.finish_reason = True, "done" if step.done else "abort"
        return False
    if ep.turns >= limit:
        ep.finish_reason = "max_turns"
        return False
    ids = _observation_ids(tokenizer, ep, completion.text, completion.token_ids, step.observation,
                           env.max_observation_tokens)
    room = _room(env, engine)
    if room is not None and len(ep.prompt_ids) + len(ep.token_ids) + len(ids) >= room:
        ep.finish_reason = "max_total_tokens"  # no room for the observation and another turn
        del ep.messages[len(ep.messages) - len(step.observation.messages):]  # (never shown to the model)
        return False
    ep.append(ids, False)
    return True
