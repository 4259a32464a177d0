"""Multi-turn GRPO end to end: ``rlvr-train experiment=sql`` shrunk to a few steps (real Ray
actors, DeepSpeed, the builtin engine playing SQL episodes), and a kill -9 in the middle of it
followed by a relaunch that continues exactly."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = [
    "experiment=sql", "sft.steps=30", "sft.seconds=null", "sft.batch_size=8", "sft.data.size=200",
    "data.train.0.size=300", "eval_prompts=16", "steps=4", "time_limit=null",
    "prompts_per_step=4", "algorithm.group_size=4", "eval_every=2", "checkpoint_every=2",
    "rollout.sampling.max_tokens=48", "rollout.eval_sampling.max_tokens=48", "learner.max_tokens_per_micro_batch=2048",
    "data.train.0.env_args.max_turns=2",  # (evaluation follows the training source)
    "logging.progress=false", "logging.tensorboard=false", "cluster.num_cpus=4",
]


def _command(out: Path, *extra: str) -> list[str]:
    return [str(Path(sys.executable).parent / "rlvr-train"), f"hydra.run.dir={out}", "name=sqltest", *SMALL, *extra]


def _metrics(out: Path) -> dict[int, dict]:
    """Step -> every metric logged at it (the final evaluation is a row of its own)."""
    steps: dict[int, dict] = {}
    for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()):
        steps.setdefault(row["step"], {}).update(row)
    return steps


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("sql_whole")
    done = subprocess.run(_command(out), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_multi_turn_steps_train_on_episodes(whole):
    metrics = _metrics(whole)
    assert sorted(metrics) == [1, 2, 3, 4]
    for key in ("episode/turns_mean", "episode/tool_error_rate", "episode/length_mean", "train/loss",
                "train/logprob_mismatch", "reward/sql/mean", "eval/accuracy"):
        assert key in metrics[2], key
    assert 1 <= metrics[1]["episode/turns_mean"] <= 2
    assert metrics[1]["train/logprob_mismatch"] < 1e-3  # engine and learner agree on the model's tokens
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["eval_accuracy_before"] is not None


@pytest.mark.slow
def test_kill_9_mid_run_then_relaunch_continues_exactly(whole, tmp_path, kill_at_checkpoint):
    kill_at_checkpoint(_command(tmp_path), tmp_path, "step_000002")
    done = subprocess.run(_command(tmp_path), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout + done.stderr
    a, b = _metrics(whole), _metrics(tmp_path)
    compared = [(3, "reward/mean"), (3, "train/loss"), (3, "episode/turns_mean"), (3, "episode/length_mean"),
                (4, "reward/mean"), (4, "train/loss"), (4, "eval/accuracy")]
    for step, key in compared:
        assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-7), (step, key)


@pytest.mark.slow
def test_episodes_are_played_ahead_of_the_learner_and_killed_runs_resume(tmp_path, kill_at_checkpoint):
    # algorithm.max_staleness=1: the next step's episodes are played while the learner trains
    kill_at_checkpoint(_command(tmp_path, "algorithm.max_staleness=1"), tmp_path, "step_000002")
    done = subprocess.run(_command(tmp_path, "algorithm.max_staleness=1"), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout + done.stderr
    metrics = _metrics(tmp_path)
    assert sorted(metrics) == [1, 2, 3, 4]
    assert [metrics[s]["staleness/mean"] for s in (1, 2, 3, 4)] == [0, 1, 0, 1]  # (3: the first after the relaunch)
    for step in (1, 2, 3, 4):
        assert metrics[step]["episode/turns_mean"] >= 1 and "reward/sql/mean" in metrics[step]
        # token-level truncation of the ratio to the stale engine's log-probs, inside the loss
        assert 0 < metrics[step]["train/is_weight_mean"] <= 2 and 0 <= metrics[step]["train/is_truncated_share"] <= 1
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 4
