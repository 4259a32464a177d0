import torch

import rlvr.model as M
from rlvr.env import MultiTurnEnvironment, Observation, Step
from rlvr.model.config import tiny
from rlvr.rollout.builtin import BuiltinEngine
from rlvr.rollout.engine import SamplingParams
from rlvr.rollout.multiturn import run_episodes
from rlvr.tokenizer import ByteTokenizer


class ScriptedTool(MultiTurnEnvironment):
    """Answers every action with a tool observation; ends after ``task['turns']`` actions."""

    max_turns = 5

    def reset(self, task):
        self.task, self.turn, self.seen = task, 0, []
        return Observation(f"Task {task['id']}: call the tool.\n")

    def step(self, action):
        self.turn += 1
        self.seen.append(action)
        done = self.turn >= self.task["turns"]
        return Step(Observation(f"\n<tool turn={self.turn} len={len(action)}>\n"), reward=float(done), done=done)


def test_masks_and_logprobs_align_token_for_token():
    torch.manual_seed(0)
    model = M.HybridLM(tiny(initializer_range=0.1))
    engine = BuiltinEngine(model, ByteTokenizer())
    tasks = [{"id": i, "turns": t} for i, t in enumerate([1, 3, 7])]
    sampling = SamplingParams(temperature=1.0, max_tokens=12, stop=("\n",), seed=0)
    episodes = run_episodes(engine, ScriptedTool, tasks, sampling)
    tok = engine.tokenizer
    assert [e.turns for e in episodes] == [1, 3, 5]
    assert [e.finish_reason for e in episodes] == ["done", "done", "max_turns"]
    assert [e.reward for e in episodes] == [1.0, 1.0, 0.0]
    worst = 0.0
    for ep in episodes:
        assert len(ep.token_ids) == len(ep.mask) == len(ep.logprobs)
        # observation tokens are exactly the tokenised observations, in order
        obs_runs, run = [], []
        for token, m in zip(ep.token_ids, ep.mask):
            if m == 0:
                run.append(token)
            elif run:
                obs_runs.append(run)
                run = []
        want = [tok.encode(f"\n<tool turn={t} len=") for t in range(1, ep.turns)]
        assert len(obs_runs) == ep.turns - 1
        assert all(r[:len(w)] == w for r, w in zip(obs_runs, want))
        # the sampling logprobs are what a teacher-forced forward gives at model tokens
        ids = torch.tensor([ep.prompt_ids + ep.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids)[0, len(ep.prompt_ids) - 1:-1], -1)
        forced = logp.gather(1, torch.tensor(ep.token_ids)[:, None])[:, 0]
        mask = torch.tensor(ep.mask, dtype=torch.bool)
        worst = max(worst, (forced[mask] - torch.tensor(ep.logprobs)[mask]).abs().max().item())
        assert torch.all(torch.tensor(ep.logprobs)[~mask] == 0)
    print(f"multi-turn: max |sampling logprob - teacher-forced| on model tokens = {worst:.2e}")
    assert worst <= 1e-4


def test_sql_episodes_keep_masks_and_logprobs_aligned():
    from environments.sql import SqlEnvironment
    from environments.sql.synthetic import TEACHER_ENV, shop_rows
    from rlvr import chat

    torch.manual_seed(0)
    model = M.HybridLM(tiny(initializer_range=0.1))
    engine = BuiltinEngine(model, ByteTokenizer())
    tasks = shop_rows(4, seed=3)
    sampling = SamplingParams(temperature=1.0, max_tokens=24, stop=("</tool_call>",), seed=1)
    episodes = run_episodes(engine, lambda: SqlEnvironment(**TEACHER_ENV), tasks, sampling)
    tok = engine.tokenizer
    for ep, task in zip(episodes, tasks):
        assert ep.prompt_ids == tok.encode(f"<user>\n{task['question']}\n<assistant>\n")
        assert len(ep.token_ids) == len(ep.mask) == len(ep.logprobs)
        assert ep.turns == TEACHER_ENV["max_turns"] and ep.finish_reason == "max_turns"  # an untrained model never answers
        # every observation is the rendered tool message after the model's turn, token for token
        runs, run, kind = [], [], 1
        for token, m in zip(ep.token_ids, ep.mask):
            if m != kind and run:
                runs.append((kind, run))
                run = []
            kind = m
            run.append(token)
        runs.append((kind, run))
        observations = [r for k, r in runs if k == 0]
        tool_messages = [m for m in ep.messages if m["role"] == "tool"]
        assert len(observations) == len(tool_messages) == ep.turns - 1
        assert tok.decode(observations[0]) == chat.after_turn(tok, ep.messages[:1], tool_messages[:1])
        ids = torch.tensor([ep.prompt_ids + ep.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids)[0, len(ep.prompt_ids) - 1:-1], -1)
        forced = logp.gather(1, torch.tensor(ep.token_ids)[:, None])[:, 0]
        mask = torch.tensor(ep.mask, dtype=torch.bool)
        assert (forced[mask] - torch.tensor(ep.logprobs)[mask]).abs().max() <= 1e-4
        assert ep.info["tool_errors"] == ep.turns  # garbage in: every turn is a malformed call


class Chatty(ScriptedTool):
    """Long observations, and a token budget for the whole episode."""

    max_total_tokens = 60

    def step(self, action):
        self.turn += 1
        return Step(Observation("x" * 25), reward=0.0, done=False)


def test_episodes_stop_at_their_token_budget():
    torch.manual_seed(0)
    engine = BuiltinEngine(M.HybridLM(tiny(initializer_range=0.1)), ByteTokenizer())
    sampling = SamplingParams(temperature=1.0, max_tokens=12, seed=0, ignore_eos=True)
    episodes = run_episodes(engine, Chatty, [{"id": i, "turns": 9} for i in range(3)], sampling)
    for ep in episodes:
        assert ep.finish_reason == "max_total_tokens"
        assert len(ep.prompt_ids) + len(ep.token_ids) <= Chatty.max_total_tokens
        assert ep.mask[-1] == 1  # the last observation is dropped when no turn can follow it


def test_episode_routing_records_cover_every_token_read_once():
    """Each token keeps the record of the turn that first read it (the one its turn's later
    tokens were sampled under); observations are first read by the next turn's prefill."""
    from rlvr.rollout.multiturn import Episode
    ep = Episode(task={}, prompt_ids=[1, 2])
    first, second = torch.zeros(5, 1, 2, dtype=torch.int8), torch.ones(9, 1, 2, dtype=torch.int8)
    ep.read_routing(first)
    ep.read_routing(None)  # (a turn aborted before its prefill adds nothing)
    ep.read_routing(second)
    assert torch.equal(ep.experts, torch.cat([first, second[5:]]))

    torch.manual_seed(0)
    model = M.HybridLM(tiny(initializer_range=0.1))
    engine = BuiltinEngine(model, ByteTokenizer())
    sampling = SamplingParams(temperature=1.0, max_tokens=12, stop=("\n",), seed=0, routed_experts=True)
    for ep in run_episodes(engine, ScriptedTool, [{"id": i, "turns": 3} for i in range(2)], sampling):
        ids = torch.tensor([ep.prompt_ids + ep.token_ids])
        assert ep.experts.shape == (ids.shape[1] - 1, 1, 2)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids[:, :-1], experts=ep.experts[None])[0, len(ep.prompt_ids) - 1:], -1)
        forced = logp.gather(1, torch.tensor(ep.token_ids)[:, None])[:, 0]
        mask = torch.tensor(ep.mask, dtype=torch.bool)
        assert (forced[mask] - torch.tensor(ep.logprobs)[mask]).abs().max() <= 1e-4
