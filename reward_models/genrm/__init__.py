"""GenRM-style generative judge: the conversation and verdict format (verdict.py), group
aggregation for GRPO (aggregate.py), HTTP and local judge backends (judge.py), and the ``judge``
environment (environment.py)."""

from reward_models.genrm.environment import JudgeEnvironment

__all__ = ["JudgeEnvironment"]
