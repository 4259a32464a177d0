"""Samples and their rewards for a list of prompts: the one code path behind a training step, the
trainer's periodic evaluation and ``rlvr eval``.

A prompt whose environment is single-turn is completed by the rollout pool and its completions
are scored by that environment's scorer processes; a prompt whose environment is multi-turn has
its episodes played on the rollout pool, and the episode's reward counts. The pool is Ray's
``RolloutPool`` in training, or ``LocalPool`` (one engine in this process) for an evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from rlvr.data import Prompt
from rlvr.env import MultiTurnEnvironment, get_environment_class, make_environment, scores_groups
from rlvr.rollout.engine import Completion, SamplingParams
from rlvr.rollout.multiturn import Episode, run_episodes
from rlvr.scoring.scorer import map_groups

log = logging.getLogger(__name__)


def sampling_seed(seed: int, step: int, round_: int) -> int:
    """The sampling seed of a training step's round of rollouts."""
    return (seed * 1_000_003 + step * 101 + round_) % 2**63


def eval_seed(seed: int) -> int:
    """The held-out evaluations' sampling seed (the trainer's, and ``rlvr eval --run``'s)."""
    return sampling_seed(seed, -1, 0)


@dataclasses.dataclass
class Collected:
    """``n`` samples per prompt, in prompt order (prompt i's are ``i * n`` to ``i * n + n - 1``)."""

    samples: list[Completion]  # an episode appears as its first prompt and every later token
    masks: list[list[int]]  # per sample token: 1 where the model generated it
    rewards: torch.Tensor
    episodes: list[Episode]
    rollout_seconds: float = 0.0
    reward_seconds: float = 0.0
    scoring_failures: int = 0
    info_metrics: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # "<env>/<key>" -> values
    # per sample: an episode's chat transcript (what offline scoring replays), None for a completion
    transcripts: list[list | None] = dataclasses.field(default_factory=list)


def as_completion(episode: Episode, index: int) -> Completion:
    """An episode in the learner's terms: its first prompt, then every token after it (model
    turns and observations; ``episode.mask`` tells them apart)."""
    return Completion(index, 0, episode.prompt_ids, episode.token_ids, episode.logprobs, "", episode.finish_reason,
                      episode.weights_version, episode.experts)


def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    """Turns per episode, the share of tool calls the environment reported as errors (its final
    info's ``tool_errors``), episode length in tokens (model and observation) and how episodes
    ended; where the environment reports them, tool calls per episode (``tool_calls``) and the
    share of answers given without any (``answered_without_tool``)."""
    if not episodes:
        return {}
    turns = sum(e.turns for e in episodes)
    out = {"episode/turns_mean": turns / len(episodes),
           "episode/tool_error_rate": sum(e.info.get("tool_errors", 0) for e in episodes) / max(turns, 1),
           "episode/length_mean": sum(len(e.prompt_ids) + len(e.token_ids) for e in episodes) / len(episodes)}
    for key in ("tool_calls", "answered_without_tool"):
        if any(key in e.info for e in episodes):
            out[f"episode/{key}_mean"] = sum(float(e.info.get(key, 0)) for e in episodes) / len(episodes)
    for reason in ("done", "max_turns", "max_total_tokens"):
        out[f"episode/ended_{reason}"] = sum(e.finish_reason == reason for e in episodes) / len(episodes)
    return out


def _value(outcome, take):
    """``take(outcome.value)``, or None (logged) for a failed or timed-out scoring."""
    if outcome.status == "ok":
        return take(outcome.value)
    log.debug("scoring failed (%s): %s", outcome.status, outcome.error)
    return None


class LocalPool:
    """One rollout engine in this process, with ``RolloutPool``'s ``generate``, ``run_episodes``,
    ``tokenizer`` and ``max_model_len``: a pool of one worker, giving what such a pool gives."""

    def __init__(self, engine):
        self.engine = engine
        self.tokenizer, self.max_model_len = engine.tokenizer, engine.max_model_len

    def generate(self, prompts: list, sampling: SamplingParams) -> list[Completion]:
        return self.engine.generate(prompts, sampling)

    def run_episodes(self, tasks: list, env: str, env_args: str, sampling: SamplingParams, group: int = 1
                     ) -> list[Episode]:
        kwargs = json.loads(env_args)
        return run_episodes(self.engine, lambda: make_environment(env, **kwargs), tasks, sampling)


    def shutdown(self) -> None:
        getattr(self.engine, "shutdown", lambda: None)()


def open_pool(spec, workers: int = 1, ray_address: str | None = None):
    """The rollout pool of an offline job (``rlvr generate``, ``rlvr eval``): one engine in this
    process, or ``workers`` Ray actors (``RolloutPool``) when more than one is asked for or a
    cluster is named (``local`` starts Ray here)."""
    from rlvr.rollout.workers import RolloutPool, build_engine

    if workers == 1 and ray_address is None:
        return LocalPool(build_engine(spec))
    from rlvr.scoring.cluster import connect

    connected = connect(ray_address or "local", workers)
    return RolloutPool(spec, num_workers=workers, num_cpus=1, owns_ray=connected)


class Collector:
    """Samples and rewards for prompts, from ``pool`` and the scorers ``open_scorer`` makes (one
    per single-turn (environment, env_args) among ``keys``, the prompts' ``scorer_key``)."""

    def __init__(self, pool, keys, open_scorer):
        self.pool = pool
        # A multi-turn environment's episodes run on the pool and carry their reward; the others'
        # completions are scored by scorer processes.
        self.multi_turn = {key: issubclass(get_environment_class(key[0]), MultiTurnEnvironment) for key in keys}
        self.scorers = {key: open_scorer(key[0], json.loads(key[1])) for key in keys if not self.multi_turn[key]}
        self.groups = {key: scores_groups(get_environment_class(key[0])) for key in self.scorers}

    def collect(self, prompts: list[Prompt], n: int, sampling, seed: int, **records) -> Collected:
        """``n`` samples of each prompt with ``sampling`` (a SamplingConfig) and ``seed``;
        ``records``: what else the engines return (``SamplingConfig.params``)."""
        out = Collected([None] * (len(prompts) * n), [None] * (len(prompts) * n), torch.zeros(len(prompts) * n), [],
                        transcripts=[None] * (len(prompts) * n))
        by_key: dict[tuple[str, str] | None, list[int]] = {}
        for i, p in enumerate(prompts):
            by_key.setdefault(p.scorer_key if self.multi_turn[p.scorer_key] else None, []).append(i)
        for key, idx in by_key.items():
            before = time.monotonic()
            if key is None:
                params = sampling.params(n=n, seed=seed, **records)
                completions = self.pool.generate([prompts[i].text for i in idx], params)
                out.rollout_seconds += time.monotonic() - before
                before = time.monotonic()
                scored, failures, infos = self._score([prompts[i] for i in idx], completions, n)
                out.reward_seconds += time.monotonic() - before
                out.scoring_failures += failures
                for name, values in infos.items():
                    out.info_metrics.setdefault(name, []).extend(values)
                found = [(c, [1] * len(c.token_ids), float(r)) for c, r in zip(completions, scored)]
            else:
                tasks = [prompts[i].task for i in idx for _ in range(n)]
                # (an episode's turns are not scored by prefill: its samples are whole episodes)
                params = sampling.params(n=1, seed=seed, **(records | {"prefill_logprobs": False}))
                played = self.pool.run_episodes(tasks, key[0], key[1], params, group=n)
                out.rollout_seconds += time.monotonic() - before
                out.episodes += played
                found = [(as_completion(e, k // n), e.mask, e.reward) for k, e in enumerate(played)]
                for k, e in enumerate(played):
                    out.transcripts[idx[k // n] * n + k % n] = e.messages or None
            for k, (sample, mask, reward) in enumerate(found):
                at = idx[k // n] * n + k % n
                out.samples[at], out.masks[at], out.rewards[at] = sample, mask, reward
        return out

    def _score(self, prompts: list[Prompt], completions: list[Completion], n: int
               ) -> tuple[torch.Tensor, int, dict[str, list[float]]]:
        """Reward of each completion (0 for one whose scoring failed or timed out), the number of
        such failures, and the environments' ``info_metrics`` ("<env>/<key>" -> values). Each
        environment's completions go to its own scorer, all of them at once (threads), so a slow
        environment (a judge) holds up none of the others."""
        rewards, failures, infos = torch.zeros(len(completions)), 0, {}
        by_scorer: dict[tuple[str, str], list[int]] = {}
        for i in range(len(completions)):
            by_scorer.setdefault(prompts[i // n].scorer_key, []).append(i)
        with ThreadPoolExecutor(max_workers=max(1, len(by_scorer))) as threads:
            jobs = {key: threads.submit(self._score_with, key, idx, prompts, completions, n)
                    for key, idx in by_scorer.items()}
            for key, job in jobs.items():
                wanted = get_environment_class(key[0]).info_metrics
                for i, found in job.result():
                    if found is None:
                        failures += 1
                        continue
                    rewards[i] = found[0]
                    for name in wanted:
                        if isinstance(found[1].get(name), (int, float)):
                            infos.setdefault(f"{key[0]}/{name}", []).append(float(found[1][name]))
        return rewards, failures, infos

    def _score_with(self, key, idx: list[int], prompts, completions, n: int) -> list[tuple[int, tuple | None]]:
        """(completion index, (reward, info), or None where scoring failed) for the completions
        ``idx``, whole groups of ``n`` when the environment scores groups together."""
        scorer = self.scorers[key]
        if not self.groups[key]:
            outcomes = scorer.map([(prompts[i // n].task, completions[i].text) for i in idx])
            return [(i, _value(outcome, tuple)) for i, outcome in zip(idx, outcomes)]
        groups = [idx[k:k + n] for k in range(0, len(idx), n)]
        outcomes = map_groups(scorer, [(prompts[g[0] // n].task, [completions[i].text for i in g]) for g in groups])
        out = []
        for group, outcome in zip(groups, outcomes):
            out += list(zip(group, _value(outcome, lambda v: [tuple(x) for x in v]) or [None] * len(group)))
        return out

    def close(self) -> None:
        for scorer in self.scorers.values():
            scorer.close()
