"""The README's own-task recipe, as written, on the example package (examples/reverse): the
package installed (here into a folder of its own, so the test leaves the environment as it found
it), its configs given with --config-dir, the checks before launch, a short run that trains and
evaluates on that task, and `rlvr eval --run` on it."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "reverse"
BIN = Path(sys.executable).parent
RECIPE = ["--config-dir", str(EXAMPLE / "configs"), "data=reverse", "name=reverse"]  # (as the README has it)
SHORT = ["steps=3", "sft.steps=40", "eval_prompts=24", "prompts_per_step=8", "algorithm.group_size=4",
         "time_limit=null", "cluster.num_cpus=4", "reward.workers=1", "logging.tensorboard=false"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The package installed as a user would (pip, from its folder) into a target folder; the
    environment for the commands that should find it."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(EXAMPLE)], check=True, capture_output=True, timeout=300)
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")])))


def _run(env: dict, *args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, env=env, cwd=cwd)
    return done, time.monotonic() - start


def test_the_plugin_registers_through_its_entry_points(installed):
    done, _ = _run(installed, BIN / "rlvr", "envs")
    assert done.returncode == 0 and "reverse        rlvr_reverse.ReverseEnvironment" in done.stdout
    assert "reverse        rlvr_reverse.reverse_rows" in done.stdout


@pytest.mark.parametrize("mistake,needle", [
    ("learner.lrr=1e-3", "learner.lrr: unknown key"),
    ("data.train.0.generator_args.length=abc", "data.train.0.generator_args.length: expected int, got string 'abc'"),
    ("data.train.0.generator_args.lenght=4", "data.train.0.generator_args.lenght: reverse takes no such argument"),
    ("data.train.0.generator_args.length=99", "data.train.0.generator_args: reverse: length must be between 1 and 20"),
    ("model.path=outputs/nope", "model.path: outputs/nope does not exist"),
])
def test_mistakes_in_the_recipe_are_one_line_in_about_a_second(installed, tmp_path, mistake, needle):
    done, elapsed = _run(installed, BIN / "rlvr-train", *RECIPE, mistake, f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and done.stderr == f"rlvr-train: {done.stderr.removeprefix('rlvr-train: ')}"
    assert needle in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "run").exists()
    print(f"{mistake}: refused in {elapsed:.2f} s")
    assert elapsed < 5  # (about a second; a loaded CI machine gets slack)


@pytest.mark.slow
def test_a_short_run_trains_and_evaluates_on_the_task(installed, tmp_path):
    out = tmp_path / "run"
    done, _ = _run(installed, BIN / "rlvr-train", *RECIPE, *SHORT, f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_source"] == "the held-out split of reverse" and summary["eval_prompts"] == 24
    assert summary["start"] == "SFT warm start" and summary["steps"] == 3
    assert "24 prompts: the held-out split of reverse" in done.stdout
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "reward/mean" in m]
    assert len(steps) == 3 and all("reward/reverse/mean" in m for m in steps)  # the plugin rewards
    # the log ends with the summary the terminal showed; no log line glued to a progress bar
    assert (out / "train.log").read_text().rstrip().endswith(done.stdout.rstrip().splitlines()[-1])
    screen = (done.stdout + done.stderr).replace("\r", "\n").splitlines()
    assert not [line for line in screen if "step/s" in line and "[INFO]" in line]
    assert any("held-out@0=" in line for line in screen)  # the bar names the evaluation it shows
    # the README's next command, as written (from the folder the run is in)
    done, _ = _run(installed, BIN / "rlvr", "eval", "--run", out, "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1])["pass@1"] == pytest.approx(summary["eval_accuracy_after"])
