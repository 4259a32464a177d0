"""The Collector's reward stage: environments scored at once, groups scored whole, info metrics."""

import time

import pytest

from rlvr.collect import Collector, LocalPool
from rlvr.config import SamplingConfig
from rlvr.data import Prompt
from rlvr.rollout.workers import EngineSpec, build_engine
from rlvr.scoring import open_scorer
from reward_models.genrm.scripted_server import ScriptedJudgeServer


class Recording:
    """A scorer that notes when each ``map`` started and when its last outcome came."""

    def __init__(self, inner, log, name):
        self.inner, self.log, self.name, self.timeout = inner, log, name, inner.timeout

    def map(self, payloads, timeout=None):
        start = time.monotonic()
        outcomes = list(self.inner.map(payloads, timeout))
        self.log[self.name] = (start, time.monotonic())
        return iter(outcomes)

    def close(self):
        self.inner.close()


@pytest.mark.parametrize("n", [1, 3])
def test_a_slow_judge_holds_up_no_other_environment(tiny_checkpoint, n):
    with ScriptedJudgeServer(latency=1.0) as server:
        judge_args = f'{{"base_url": "{server.base_url}", "timeout": 5.0}}'
        prompts = [Prompt("1+1=", "math", {"answer": "2"}), Prompt("Greet Ada.", "judge", {"prompt": "Greet Ada.",
                                                                                          "reference": "Hi Ada"},
                                                                     judge_args)] * 2
        collector = Collector(LocalPool(build_engine(EngineSpec(str(tiny_checkpoint)))),
                              {p.scorer_key for p in prompts},
                              lambda env, kw: open_scorer(env, workers=1, timeout=10.0, env_kwargs=kw))
        log = {}
        collector.scorers = {k: Recording(s, log, k[0]) for k, s in collector.scorers.items()}
        try:
            got = collector.collect(prompts, n, SamplingConfig(temperature=1.0, max_tokens=4), seed=0)
        finally:
            collector.close()
        assert collector.groups == {("math", "{}"): False, ("judge", judge_args): True}
        # the math rewards were in while the judge was still answering
        assert log["math"][1] < log["judge"][1] - 0.5 and log["math"][0] < log["judge"][1]
        judged = got.rewards.view(4, n)[1::2]
        assert (judged > 0).all()  # verdicts, not failures: the scripted judge rates every response 2 or 4 of 5
        assert got.scoring_failures == 0 and got.info_metrics["judge/fallback_share"] == [0.0] * (2 * n)
