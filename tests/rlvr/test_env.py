import pytest

from rlvr import env as env_mod
from rlvr.env import (Environment, Reward, TaskError, available, available_generators, get_environment_class,
                      get_generator, make_environment, register, register_generator)


class Echo(Environment):
    task_fields = {"target": str}

    def score(self, task, response):
        return Reward(float(response == task["target"]), {"target": task["target"]})


@pytest.fixture(autouse=True)
def _clean_registry(monkeypatch):
    monkeypatch.setattr(env_mod, "_registered", {env_mod.ENTRY_POINT_GROUP: {}, env_mod.GENERATOR_GROUP: {}})


def test_builtin_math_comes_from_the_entry_point_group():
    found = available()
    assert "math" in found
    assert getattr(found["math"], "group", None) == env_mod.ENTRY_POINT_GROUP
    assert get_environment_class("math").__name__ == "MathEnvironment"


def test_register_in_process_and_score():
    register("echo", Echo)
    env = make_environment("echo")
    assert env.score({"target": "hi"}, "hi") == Reward(1.0, {"target": "hi"})


def test_register_rejects_non_environment():
    with pytest.raises(TypeError, match="subclass"):
        register("bad", object)


def test_unknown_name_lists_known_ones():
    with pytest.raises(KeyError, match="registered: .*math"):
        get_environment_class("nope")


def test_check_task_names_the_field():
    env = Echo()
    with pytest.raises(TaskError, match="missing field 'target'"):
        env.check_task({})
    with pytest.raises(TaskError, match="'target' must be str, got int"):
        env.check_task({"target": 3})


def test_builtin_generators_come_from_their_entry_point_group():
    found = available_generators()
    assert {"addition", "word_problems", "math_responses"} <= set(found)
    assert getattr(found["addition"], "group", None) == env_mod.GENERATOR_GROUP
    rows = get_generator("word_problems")(3, seed=1)
    assert len(rows) == 3 and set(rows[0]) == {"prompt", "answer"}


def test_a_registered_generator_is_a_training_data_source():
    from rlvr.config import DataSource
    from rlvr.data import load_prompts

    register("echo", Echo)
    register_generator("echoes", lambda n, seed, word="hi": [{"prompt": f"say {word} {i}", "target": word}
                                                             for i in range(n)])
    src = DataSource(generator="echoes", generator_args={"word": "yo"}, size=4, env="echo")
    prompts = load_prompts([src], "{prompt}", seed=0, split="train")[0]
    assert [p.text for p in prompts] == [f"say yo {i}" for i in range(4)]
    assert make_environment("echo").score(prompts[0].task, "yo").value == 1.0
    with pytest.raises(KeyError, match="unknown generator 'nope' .*echoes"):
        get_generator("nope")
    with pytest.raises(TypeError, match="callable"):
        register_generator("bad", 3)


def test_a_name_registered_by_two_packages_resolves_to_the_first_on_sys_path(tmp_path):
    """As an import would: a package on PYTHONPATH wins over an installed one of the same name,
    and the clash is said."""
    import os
    import subprocess
    import sys

    sites = []
    for which in ("first", "second"):
        site = tmp_path / which
        (site / f"twin_{which}-0.1.dist-info").mkdir(parents=True)
        (site / f"twin_{which}.py").write_text(
            "from rlvr.env import Environment, Reward\n"
            f"class Twin(Environment):\n    '''The {which} twin.'''\n"
            "    def score(self, task, response):\n        return Reward(0.0)\n")
        (site / f"twin_{which}-0.1.dist-info" / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: twin-{which}\nVersion: 0.1\n")
        (site / f"twin_{which}-0.1.dist-info" / "entry_points.txt").write_text(
            f"[rlvr.environments]\ntwin = twin_{which}:Twin\n")
        sites.append(str(site))
    done = subprocess.run([sys.executable, "-m", "rlvr", "envs"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sites)))
    assert done.returncode == 0 and "twin           twin_first.Twin  The first twin." in done.stdout, done.stdout
    assert "'twin' is registered by two packages: twin_first:Twin (used, first on sys.path) and twin_second:Twin" \
        in done.stderr
