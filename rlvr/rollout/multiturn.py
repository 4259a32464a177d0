"""Multi-turn episodes: the engine generates, the environment answers, until done.

Token ids are kept exactly as generated: each turn's prompt is the previous token ids plus the
new observation's ids, never a re-tokenisation of the conversation text (re-tokenising can merge
or split tokens at turn boundaries and make the learner score tokens the engine never sampled).
Each episode carries a mask (1 = model-generated, trained on; 0 = prompt or observation) and the
sampling log-probabilities, aligned token for token with ``token_ids``.

An environment whose observations carry chat ``messages`` is rendered with the tokenizer's chat
template (``rlvr.chat``); the environment's ``max_observation_tokens`` cuts each observation
and ``max_total_tokens`` ends an episode whose prompt and turns reach it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from rlvr import chat
from rlvr.env import MultiTurnEnvironment, Observation
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

    def append(self, ids: list[int], generated: bool, logprobs: list[float] | None = None) -> None:
        self.token_ids.extend(ids)
        self.mask.extend([1 if generated else 0] * len(ids))
        self.logprobs.extend(logprobs if generated else [0.0] * len(ids))


def _first_prompt(tokenizer, episode: Episode, first: Observation) -> list[int]:
    if first.messages:
        episode.messages = list(first.messages)
        return tokenizer.encode(chat.render(tokenizer, first.messages))
    return tokenizer.encode(first.text)


def _observation_ids(tokenizer, episode: Episode, turn_text: str, obs: Observation, limit: int | None) -> list[int]:
    """The tokens that follow a model turn, cut to ``limit`` tokens: a chat observation's content
    is shortened (so the template's closing tags stay), plain text is cut."""
    if not obs.messages:
        ids = tokenizer.encode(obs.text)
        return ids if limit is None else ids[:limit]
    messages = [dict(m) for m in obs.messages]
    for _ in range(8):
        ids = tokenizer.encode(chat.after_turn(tokenizer, episode.messages, messages))
        if limit is None or len(ids) <= limit:
            break
        for m in messages:  # shrink every content in proportion to the excess, then retry
            keep = max(0, int(len(m["content"]) * limit / len(ids)) - 16)
            m["content"] = m["content"][:keep] + " ...(cut)"
    episode.messages += [{"role": "assistant", "content": turn_text}, *messages]
    return ids if limit is None else ids[:limit]


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
    while active:
        completions, active = _next_turns(engine, envs, episodes, active, sampling)
        still = []
        for i, completion in zip(active, completions):
            ep, env = episodes[i], envs[i]
            ep.append(completion.token_ids, True, completion.logprobs)
            ep.turns += 1
            ep.weights_version = completion.weights_version
            step = env.step(completion.text)
            ep.reward = step.reward
            ep.info.update(step.info)
            if step.done or completion.finish_reason == "abort":
                ep.done, ep.finish_reason = True, "done" if step.done else "abort"
            elif ep.turns >= limit:
                ep.finish_reason = "max_turns"
            else:
                ids = _observation_ids(tokenizer, ep, completion.text, step.observation, env.max_observation_tokens)
                room = _room(env, engine)
                if room is not None and len(ep.prompt_ids) + len(ep.token_ids) + len(ids) >= room:
                    ep.finish_reason = "max_total_tokens"  # no room for the observation and another turn
                    continue
                ep.append(ids, False)
                still.append(i)
        active = still
    for env in envs:
        getattr(env, "close", lambda: None)()
    return episodes
