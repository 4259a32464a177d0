import pytest

from rlvr import env as env_mod
from rlvr.env import Environment, Reward, TaskError, available, get_environment_class, make_environment, register


class Echo(Environment):
    task_fields = {"target": str}

    def score(self, task, response):
        return Reward(float(response == task["target"]), {"target": task["target"]})


@pytest.fixture(autouse=True)
def _clean_registry(monkeypatch):
    monkeypatch.setattr(env_mod, "_registered", {})


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
