"""``rlvr.training.train``: the rlvr-train job from Python, with the same checks and outputs."""

import json
import subprocess
import sys
import textwrap

import pytest

from rlvr.config import ConfigError
from rlvr.training import train


def test_a_mistake_raises_the_one_line_rlvr_train_prints(tmp_path):
    with pytest.raises(ConfigError, match=r"^learner.lrr: unknown key"):
        train(["learner.lrr=1e-3", f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="data.train.0.generator_args.digits: expected int"):
        train(["data.train.0.generator_args.digits=two", f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="train\\(\\) runs one job"):
        train(["--multirun", "learner.lr=1e-4,3e-4", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_train_runs_the_job_and_returns_its_summary(tmp_path):
    out = tmp_path / "run"
    overrides = ["steps=2", "sft.steps=30", "eval_prompts=16", "prompts_per_step=8", "time_limit=null",
                 "cluster.num_cpus=4", "reward.workers=1", "logging.progress=false", "logging.tensorboard=false",
                 f"hydra.run.dir={out}"]
    script = textwrap.dedent(f"""
        import json
        from rlvr.training import train
        print(json.dumps(train({overrides!r})))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["eval_source"] == "the held-out split of addition"
    log = (out / "train.log").read_text()
    assert "held-out evaluation: the held-out split of addition" in log and "rlvr-train finished" in log
