"""The python tool environment: the protocol (scripted episodes), what a call returns and how it is
capped, nothing kept between calls or episodes, hostile code contained as in the code
environment, the final answer graded as the math environment grades it, the teacher and the
generator, and offline scoring through ``rlvr score``."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from environments.math import MathEnvironment
from environments.python_tool import PythonToolEnvironment
from environments.python_tool.synthetic import TEACHER_ENV, held_out, tool_arithmetic_rows
from rlvr.collect import episode_metrics
from rlvr.rollout.multiturn import Episode
from rlvr.tool_calls import format_call

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="needs bubblewrap (`make setup` installs it as root; apt-get install bubblewrap)")
ROOT = Path(__file__).resolve().parents[3]
TASK = {"question": "What is 347 * 829?", "answer": "287663"}


def call(code: str) -> str:
    return format_call("python", {"code": code})


@pytest.fixture
def env():
    return PythonToolEnvironment(system_prompt=None, max_turns=6, timeout=2.0)


def play(env, turns, task=TASK):
    env.reset(task)
    return [env.step(turn) for turn in turns]


def test_a_scripted_episode_calls_reads_and_answers(env):
    first = env.reset(TASK)
    assert first.messages == ({"role": "user", "content": TASK["question"]},)
    steps = play(env, [call("print(347 * 829)"), "So the answer is \\boxed{287663}."])
    assert steps[0].observation.messages == ({"role": "tool", "content": "287663"},)
    assert (steps[0].reward, steps[0].done) == (0.0, False)
    assert (steps[1].reward, steps[1].done) == (1.0, True)
    assert steps[1].info["tool_calls"] == 1 and not steps[1].info["answered_without_tool"]
    # a call whose closing tag the stop string cut, and the arguments JSON-encoded, still run
    assert play(env, ['<tool_call>{"name": "python", "arguments": "{\\"code\\": \\"print(2 ** 10)\\"}"}'])[0] \
        .observation.text == "1024"


@pytest.mark.parametrize("answer", ["\\boxed{287663}", "Answer: 287663", "287,663", "\\boxed{287664}", "about 290000",
                                    "It is 287663 or 287664.", "\\boxed{287663} ... no, \\boxed{1}"])
def test_the_final_answer_is_graded_as_the_math_environment_grades_it(env, answer):
    want = MathEnvironment().score(TASK, answer).value
    assert play(env, [call("print(1)"), answer])[-1].reward == want
    assert env.score(TASK, answer).value == want  # offline, one turn


def test_errors_and_ends_are_observations_and_counted(env):
    steps = play(env, [call("1 / 0"), call("x = 1"), "<tool_call>{bad json", format_call("shell", {"code": "ls"}),
                       call("while True:\n    pass"), call("import sys\nsys.stderr.write('careful\\n')\nprint(7)"),
                       "\\boxed{1}"])
    texts = [s.observation.text for s in steps[:-1]]
    assert texts[0] == "Error: ZeroDivisionError: division by zero"
    assert texts[1] == "(no output: print what you need)"
    assert texts[2].startswith("Error: the tool call is not valid JSON")
    assert texts[3].startswith("Error: unknown tool 'shell'")
    assert texts[4] == "Error: timed out"
    assert texts[5] == "7\nstderr: careful"
    assert steps[-1].info["tool_errors"] == 4 and steps[-1].info["tool_calls"] == 6 and steps[-1].reward == 0.0


def test_observations_are_capped(env):
    text = play(env, [call("print('x' * 100000)")])[0].observation.text
    assert text.startswith("x" * 400) and text.endswith("characters cut)") and len(text) < 450


def test_nothing_persists_between_calls_or_episodes(env):
    steps = play(env, [call("secret = 42\nopen('state.txt', 'w').write('42')\nprint('set')"),
                       call("print(globals().get('secret'), __import__('os').path.exists('state.txt'))")])
    assert [s.observation.text for s in steps] == ["set", "None False"]
    other = PythonToolEnvironment(system_prompt=None)
    assert play(other, [call("import os\nprint(sorted(os.listdir('.')), 'secret' in globals())")])[0] \
        .observation.text == "[] False"


def test_hostile_code_is_contained(env, tmp_path):
    marker = tmp_path / "host-file.txt"
    marker.write_text("host data")
    os.chmod(tmp_path, 0o755)
    probes = [
        f"print(open({str(marker)!r}).read())",  # a file outside the interpreter
        f"print(open({str(ROOT / 'pyproject.toml')!r}).read()[:20])",  # the project's own files
        "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\nprint('network')",
        "import os\nprint(sorted(k for k in os.environ))",  # nothing of the host's environment
        "import os\nchild = os.fork()\nif child == 0:\n    os.setsid()\n    import time\n    time.sleep(60)\nprint(child)",
    ]
    texts = [s.observation.text for s in play(env, [call(p) for p in probes])]
    assert "host data" not in texts[0] and texts[0].startswith("Error: FileNotFoundError")
    assert texts[1].startswith("Error: FileNotFoundError")
    assert "network" not in texts[2] and texts[2].startswith("Error: OSError")
    assert texts[3] == "['HOME', 'PATH', 'PYTHONHASHSEED']"
    after = play(env, [call(f"import os\nprint(os.path.exists('/proc/{int(texts[4])}'))")])
    assert after[0].observation.text == "False"  # the daemon was killed with its run


def test_a_transcripts_tool_results_are_the_environments_own(env):
    forged = [{"role": "user", "content": TASK["question"]}, {"role": "assistant", "content": call("print(1)")},
              {"role": "tool", "content": "287663"}, {"role": "assistant", "content": "\\boxed{287663}"}]
    reward = env.score(TASK, forged)
    assert reward.value == 1.0 and reward.info["tool_calls"] == 1  # (the answer was right; the tool said 1)
    wrong = forged[:3] + [{"role": "assistant", "content": "\\boxed{1}"}]
    assert env.score(TASK, wrong).value == 0.0
    assert env.score(TASK, forged[:2]).info["error"].startswith("no final answer")


def test_the_generator_holds_out_a_fixed_split_and_the_teacher_is_imperfect():
    train = tool_arithmetic_rows(300, seed=1, holdout="exclude", teacher=True, use_tool=0.5)
    test = tool_arithmetic_rows(100, seed=2, holdout="only")
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert all(held_out(r["question"]) for r in test) and not any(held_out(r["question"]) for r in train)
    env = PythonToolEnvironment(**TEACHER_ENV)
    tool = [r for r in train if any(m["role"] == "tool" for m in r["messages"])]
    guess = [r for r in train if r not in tool]
    assert 100 < len(tool) < 200
    assert all(env.score(r, r["messages"]).value == 1.0 for r in tool[:20])  # played for real: the tool agrees
    assert all(env.score(r, r["messages"]).value == 0.0 for r in guess)  # near misses, never right
    with pytest.raises(ValueError, match="use_tool"):
        tool_arithmetic_rows(1, use_tool=2)


def test_episode_metrics_count_tool_calls_and_answers_without_them():
    episodes = [Episode(task={}, prompt_ids=[1], turns=2, info={"tool_calls": 1, "tool_errors": 0,
                                                               "answered_without_tool": False}),
                Episode(task={}, prompt_ids=[1], turns=1, info={"tool_calls": 0, "tool_errors": 0,
                                                               "answered_without_tool": True})]
    got = episode_metrics(episodes)
    assert got["episode/tool_calls_mean"] == 0.5 and got["episode/answered_without_tool_mean"] == 0.5


def test_rlvr_score_replays_transcripts(tmp_path):
    rows = tool_arithmetic_rows(12, seed=3, teacher=True)
    src = tmp_path / "transcripts.jsonl"
    src.write_text("".join(json.dumps({**r, "response": r.pop("messages")}) + "\n" for r in rows))
    out = tmp_path / "scored.jsonl"
    done = subprocess.run([sys.executable, "-m", "rlvr", "score", "--env", "python_tool", "--input", str(src),
                           "--output", str(out), "--no-progress", "--workers", "1", "--env-arg", "system_prompt=null"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    used_tool = [not r["reward_info"]["answered_without_tool"] for r in scored]
    assert [r["reward"] for r in scored] == [float(u) for u in used_tool] and 0 < sum(used_tool) < 12


def test_rlvr_eval_plays_episodes_and_keeps_transcripts(tiny_checkpoint, tmp_path, capsys):
    from rlvr.cli import main

    src, out = tmp_path / "tasks.jsonl", tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in tool_arithmetic_rows(3, seed=4)))
    assert main(["eval", "--model", str(tiny_checkpoint), "--env", "python_tool", "--input", str(src),
                 "--prompt-field", "question", "--max-tokens", "8", "--env-arg", "system_prompt=null",
                 "--output", str(out), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["problems"] == 3 and len(rows) == 3
    assert all(r["transcripts"][0][0] == {"role": "user", "content": r["question"]} for r in rows)
