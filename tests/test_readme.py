"""Every command the README shows runs as written: the quick ones here (in a fresh folder, as a
new user's working directory), every `rlvr-train` command through its checks before launch, the
commands after training on a short run named as the README names it; the long ones (make demo,
make test, the own-task recipe) are run by the tests named in ``ELSEWHERE``."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Commands run in full elsewhere (or, for make, by CI itself).
ELSEWHERE = {
    "make demo": ".ci/run's make test installs the same; the job is rlvr-train, below",
    "make test": ".ci/run",
    "rlvr-train": "tests/rlvr/training/test_trainer.py (the default job, shortened)",
    "pip install -e examples/reverse": "tests/examples/test_reverse_example.py (into a folder of its own)",
    "rlvr eval --run outputs/reverse": "tests/examples/test_reverse_example.py",
}
QUICK = ("rlvr-train --cfg", "rlvr example", "rlvr score", "rlvr envs", "rlvr plan")
AFTER_TRAINING = ("rlvr eval --run outputs/default", "rlvr generate --model outputs/default")


def readme_commands() -> list[str]:
    """The command lines of the README's ```bash blocks (comments and `export` lines left out)."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = [re.sub(r"\s+#.*$", "", line).strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "export "))]


def _env() -> dict:
    return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")


def test_the_readme_is_a_front_page_and_every_command_is_run_somewhere():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
    commands = readme_commands()
    assert len(commands) >= 8
    unknown = [c for c in commands if c not in ELSEWHERE and not c.startswith(QUICK + AFTER_TRAINING)
               and not c.startswith("rlvr-train ")]
    assert unknown == []


def test_the_readmes_links_resolve():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")):
                assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_quick_commands_run_as_written(tmp_path):
    for command in [c for c in readme_commands() if c.startswith(QUICK)]:
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, (command, done.stderr[-2000:])


def test_every_rlvr_train_command_passes_its_checks(monkeypatch):
    from rlvr.training.app import CONFIG_DIR
    from rlvr.training.command_line import check_command_line

    monkeypatch.chdir(ROOT)  # (the own-task recipe names examples/reverse/configs from the checkout)
    for command in [c for c in readme_commands() if c.startswith("rlvr-train")]:
        args = shlex.split(command)[1:]
        if "--config-dir" in args:  # its plugin is installed by the example's test, not here
            continue
        check_command_line(CONFIG_DIR, [*args, "hydra.run.dir=/nonexistent/readme"])


@pytest.mark.slow
def test_the_commands_after_training_run_as_written(tmp_path):
    """A short default job named as the README's run (outputs/default), then its commands."""
    short = ["steps=2", "sft.steps=30", "eval_prompts=16", "prompts_per_step=8", "time_limit=null",
             "cluster.num_cpus=4", "reward.workers=1", "logging.progress=false", "logging.tensorboard=false"]
    done = subprocess.run(["rlvr-train", *short], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "outputs" / "default" / "summary.json").exists()
    for command in [c for c in readme_commands() if c.startswith(AFTER_TRAINING)]:
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, (command, done.stderr[-2000:])
    rows = [json.loads(line) for line in (tmp_path / "outputs" / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all("responses" in r for r in rows)
