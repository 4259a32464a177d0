"""rlvr-train's command line read as Hydra reads it (rlvr/training/command_line.py): the checks
before launch hold wherever the configs live (--config-dir, --config-path, --config-name) and
in any order of flags and overrides; free-form dictionaries are replaced, not merged; sweep jobs
are named by their overrides."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlvr.config import ConfigError
from rlvr.training.command_line import check_command_line, parse, sweep_naming, write_sweep_summary

CONFIGS = Path(__file__).resolve().parents[3] / "configs"

# A user's own folder of configs: a data config of theirs, for --config-dir.
MINE = """\
train:
  - generator: addition
    generator_args: {digits: 1}
    env: math
"""


@pytest.fixture(scope="module")
def mine(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("myconfigs")
    (d / "data").mkdir()
    (d / "data" / "mine.yaml").write_text(MINE)
    return d


def _check(*args: str):
    return check_command_line(CONFIGS, [*args, "hydra.run.dir=/nonexistent/run"])


@pytest.mark.parametrize("flag", ["--config-dir={d}", "-cd {d}"])
@pytest.mark.parametrize("case,needle", [
    ("learner.lrr=1e-3", "learner.lrr: unknown key"),
    ("model.path=/no/such/ckpt", "model.path: /no/such/ckpt does not exist"),
    ("data.train.0.env=revers", "data.train.0.env: unknown environment 'revers'"),
    ("data.train.0.generator_args.digits=abc", "data.train.0.generator_args.digits: expected int"),
])
def test_checks_hold_with_a_config_dir_on_either_side_of_the_overrides(mine, flag, case, needle):
    flag_args = flag.format(d=mine).split()
    for args in ([*flag_args, "data=mine", case], ["data=mine", case, *flag_args]):
        start = time.monotonic()
        with pytest.raises(ConfigError, match=needle):
            _check(*args)
        assert time.monotonic() - start < 3


def test_a_config_dir_adds_its_configs_to_the_frameworks(mine):
    [job] = _check("data=mine", "-cd", str(mine)).jobs
    assert job.config["data"]["train"][0]["generator_args"] == {"digits": 1}
    assert job.config.get("sft") is None  # (the user's data config asks for no warm start)
    assert job.config["learner"]["lr"] > 0  # the rest is the framework's


def test_config_path_and_config_name_compose_the_users_primary_config(tmp_path):
    shutil.copytree(CONFIGS, tmp_path / "conf")
    text = (tmp_path / "conf" / "config.yaml").read_text().replace("steps: 200", "steps: 7")
    (tmp_path / "conf" / "short.yaml").write_text(text)
    relative = Path("conf")  # relative to the working directory, as a user types it
    cwd = Path.cwd()
    try:
        import os

        os.chdir(tmp_path)
        checked = check_command_line(CONFIGS, ["-cp", str(relative), "-cn", "short", "hydra.run.dir=/nonexistent/r"])
        assert checked.jobs[0].config["steps"] == 7
        assert checked.argv[:4] == ["--config-path", str(tmp_path / "conf"), "--config-name", "short"]
        with pytest.raises(ConfigError, match="learner.lrr: unknown key"):
            check_command_line(CONFIGS, ["learner.lrr=1", "--config-path", "conf", "--config-name=short"])
        with pytest.raises(ConfigError, match="--config-name: no nope.yaml"):
            check_command_line(CONFIGS, ["-cp", "conf", "-cn", "nope"])
        with pytest.raises(ConfigError, match="--config-dir: .*missing is not a folder"):
            check_command_line(CONFIGS, ["-cd", "missing"])
    finally:
        os.chdir(cwd)


def test_flags_after_the_overrides_are_handed_to_hydra_first():
    cl = parse(["learner.lr=1e-4,3e-4", "--multirun", "steps=3", "-cd", "/tmp"], CONFIGS)
    assert cl.multirun and cl.overrides == ["learner.lr=1e-4,3e-4", "steps=3"]
    assert cl.argv() == ["--multirun", "--config-dir", "/tmp", "learner.lr=1e-4,3e-4", "steps=3"]
    with pytest.raises(ConfigError, match="job learner.lr=abc: learner.lr"):
        check_command_line(CONFIGS, ["learner.lr=1e-4,abc", "hydra.sweep.dir=/nonexistent", "-m"])


def test_printing_the_config_or_help_is_not_a_job_to_check():
    assert _check("--cfg", "job", "learner.lrr=1").jobs == []
    assert parse(["--help"], CONFIGS).is_job is False


def test_a_generators_arguments_given_whole_replace_the_configs():
    [job] = _check("data.train.0.generator=word_problems", "data.train.0.generator_args={}", "~sft").jobs
    assert job.config["data"]["train"][0]["generator_args"] == {}
    [job] = _check("data.train.0.generator_args={digits: 1}").jobs
    assert job.config["data"]["train"][0]["generator_args"] == {"digits": 1}
    [job] = _check("data.train.0.generator_args.digits=1").jobs  # one entry: the others stay
    assert job.config["data"]["train"][0]["generator_args"] == {"digits": 1}
    # a new entry is checked against the generator's signature, not refused by Hydra as a new key
    with pytest.raises(ConfigError, match="data.train.0.generator_args.length: addition takes no such argument"):
        _check("data.train.0.generator_args.length=4")
    [job] = _check("data.train.0.env_args={precision: 3}").jobs  # any free-form dictionary
    assert job.config["data"]["train"][0]["env_args"] == {"precision": 3}


def test_evaluation_follows_the_training_generator():
    from rlvr.config import load_config
    from rlvr.data import eval_plan

    [job] = _check("data.train.0.generator=word_problems", "data.train.0.generator_args={}", "~sft").jobs
    sources, shares, said = eval_plan(load_config(job.config))
    # word_problems has no held-out split of its own: a share of its rows is held out
    assert sources == [] and shares == [0] and said == "5% of the rows of word_problems, held out"
    [job] = _check("data.train.0.generator_args.digits=1").jobs
    sources, _, said = eval_plan(load_config(job.config))
    assert [(s.generator, s.generator_args) for s in sources] == [("addition", {"digits": 1, "holdout": "only"})]
    assert said == "the held-out split of addition"


def test_sweep_jobs_are_named_by_the_overrides_that_differ(tmp_path):
    assert sweep_naming(["learner.lr=1e-4,1e-3", "steps=3"]) == [
        "hydra.job.config.override_dirname.exclude_keys=[steps]", "hydra.sweep.subdir=${hydra.job.override_dirname}"]
    assert sweep_naming(["steps=3"]) == []  # nothing differs: numbered folders
    assert sweep_naming(["learner.lr=1e-4,1e-3", "hydra.sweep.subdir=x"]) == []  # named by the user
    checked = check_command_line(CONFIGS, ["-m", "learner.lr=1e-4,1e-3", "steps=3", f"hydra.sweep.dir={tmp_path}"])
    assert [j.out for j in checked.jobs] == [tmp_path / "learner.lr=0.0001", tmp_path / "learner.lr=0.001"]
    (tmp_path / "learner.lr=0.001").mkdir()
    (tmp_path / "learner.lr=0.001" / "summary.json").write_text(
        '{"eval_accuracy_before": 0.25, "eval_accuracy_after": 0.5, "wall_seconds": 90}')
    table = write_sweep_summary(checked.jobs).read_text()
    assert "| learner.lr=0.001 | 0.250 | 0.500 | 1.5 min | learner.lr=0.001 |" in table
    assert "| learner.lr=0.0001 | - | - | did not finish |" in table


def test_rlvr_train_with_a_config_dir_writes_nothing_before_its_checks(mine, tmp_path):
    for args in (["data.train.0.env=revers", "-cd", str(mine), "data=mine"],
                 ["--config-dir", str(mine), "data=mine", "learner.lrr=1e-3"]):
        start = time.monotonic()
        done = subprocess.run([str(Path(sys.executable).parent / "rlvr-train"), *args,
                               f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - start
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert not (tmp_path / "run").exists()
        print(f"rlvr-train {' '.join(args[:1])}: refused in {elapsed:.2f} s")
        assert elapsed < 10


def test_a_sweep_keeps_or_drops_the_warm_start_as_its_data_config_needs():
    assert "~sft" in check_command_line(CONFIGS, ["-m", "~sft", "learner.lr=1e-4,1e-3"]).argv
    argv = check_command_line(CONFIGS, ["-m", "data=functions", "data.train.0.env_args={timeout: 3.0}", "~sft",
                                        "seed=1,2"]).argv
    assert "~sft" in argv and "~data.train.0.env_args" in argv and "++data.train.0.env_args={timeout: 3.0}" in argv


def test_an_explicit_evaluation_of_another_generator_is_said(caplog):
    import logging

    from rlvr.config import load_config
    from rlvr.data import eval_plan

    [job] = _check("data.train.0.generator=word_problems", "data.train.0.generator_args={}", "~sft",
                   "data.eval=[{generator: addition, env: math}]").jobs
    with caplog.at_level(logging.WARNING):
        _, _, said = eval_plan(load_config(job.config))
    assert said == "data.eval: addition"
    assert "data.eval evaluates generator(s) addition, which no training source uses" in caplog.text
