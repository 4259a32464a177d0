"""``rlvr score`` end to end, through the real command line in a subprocess."""

import json
import os
import subprocess
import sys
import re
import textwrap
import time
from pathlib import Path

import pytest

from rlvr.scoring.job import score_file

ROWS = [
    {"id": 0, "response": "so the answer is \\boxed{4}", "answer": "4"},
    {"id": 1, "response": "I think it is 5", "answer": "6"},
    {"id": 2, "response": "\\boxed{\\frac{1}{2}}", "answer": "0.5"},
    {"id": 3, "answer": "1"},  # no response: a bad row
    {"id": 4, "response": "\\boxed{x=3}", "answer": "3"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "rlvr", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_cli_scores_reports_bad_row_and_keeps_every_row(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    proc = run_cli("score", "--env", "math", "--input", str(src), "--output", str(out), "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert "row 3 (line 4): missing field 'response'" in proc.stderr
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["reward"] for r in rows] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert rows[3]["reward_info"]["error"] == "missing field 'response'"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 5 and summary["errors"] == 1 and summary["mean_reward"] == 0.75


def test_a_line_that_is_not_utf8_is_one_bad_row(tmp_path):
    src = tmp_path / "in.jsonl"
    lines = [json.dumps(r).encode() for r in ROWS[:3]]
    lines.insert(1, b'{"response": "caf\xe9 \\boxed{1}", "answer": "1"}')  # latin-1, not UTF-8
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    proc = run_cli("score", "--env", "math", "--input", str(src), "--output", str(out))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "row 1 (line 2): not UTF-8: byte 0xe9" in proc.stderr
    rows = read_jsonl(out)
    assert [r["reward"] for r in rows] == [1.0, 0.0, 0.0, 1.0] and "not UTF-8" in rows[1]["reward_info"]["error"]


def test_output_naming_the_input_is_refused(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    before = src.read_text()
    proc = run_cli("score", "--env", "math", "--input", str(src), "--output", str(src))
    assert proc.returncode == 2 and "--output is the input file" in proc.stderr
    assert src.read_text() == before


def test_resume_continues_after_last_complete_line(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    score_file("math", src, out, progress=False)  # a first run (writes the job's record beside it)
    done = [dict(ROWS[0], reward=1.0, reward_info={"marker": "from the first run", "row": 0}),
            dict(ROWS[1], reward=0.0, reward_info={"marker": "from the first run", "row": 1})]
    out.write_text("".join(json.dumps(r) + "\n" for r in done) + '{"id": 2, "respo')  # killed mid-line
    summary = score_file("math", src, out, progress=False)
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["reward_info"]["marker"] == "from the first run"  # not recomputed
    assert rows[2]["reward"] == 1.0
    assert summary.resumed_from == 2 and summary.rows == 5


def test_field_mapping(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"completion": "\\boxed{9}", "gold": "9"}])
    out = tmp_path / "out.jsonl"
    proc = run_cli("score", "--env", "math", "--input", str(src), "--output", str(out),
                   "--field", "response=completion", "--field", "answer=gold", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(out)[0]["reward"] == 1.0


def test_mapped_column_missing_fails_fast_on_the_first_row_and_is_a_bad_row_later(tmp_path):
    from rlvr.rows import UsageError

    src = write_jsonl(tmp_path / "in.jsonl", [{"completion": "\\boxed{9}"}])
    out = tmp_path / "out.jsonl"
    with pytest.raises(UsageError, match="--field answer=gold: the first row has no column 'gold'"):
        score_file("math", src, out, field_map={"response": "completion", "answer": "gold"}, progress=False)
    assert not out.exists()  # nothing written for a rejected input
    src = write_jsonl(tmp_path / "in2.jsonl", [{"completion": "\\boxed{9}", "gold": "9"}, {"completion": "1"}])
    score_file("math", src, out, field_map={"response": "completion", "answer": "gold"}, progress=False)
    assert "missing column 'gold'" in read_jsonl(out)[1]["reward_info"]["error"]


def test_json_parquet_and_save_to_disk_inputs(tmp_path):
    import datasets

    rows = [{"response": "\\boxed{2}", "answer": "2"}, {"response": "\\boxed{3}", "answer": "2"}]
    (tmp_path / "in.json").write_text(json.dumps(rows))
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "in.parquet"))
    ds.save_to_disk(str(tmp_path / "in_ds"))
    for name in ("in.json", "in.parquet", "in_ds"):
        out = tmp_path / f"{name}.out.jsonl"
        summary = score_file("math", tmp_path / name, out, progress=False)
        assert [r["reward"] for r in read_jsonl(out)] == [1.0, 0.0], name
        assert summary.rows == 2


def test_a_slow_row_is_cut_at_the_timeout_without_stalling_others(tmp_path):
    env = _plugin(tmp_path, "sleepy", """
        import time
        from rlvr.env import Environment, Reward

        class SleepyEnvironment(Environment):
            def score(self, task, response):  # hangs on one response, as sympy can
                if response == "slow":
                    time.sleep(3600)
                return Reward(1.0, {})
    """)
    rows = [{"response": "slow"}] + [{"response": str(i)} for i in range(20)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    start = time.monotonic()
    proc = run_cli("score", "--env", "sleepy", "--input", str(src), "--output", str(out),
                   "--workers", "2", "--timeout", "2", "--no-progress", env=env)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    scored = read_jsonl(out)
    assert "timeout" in scored[0]["reward_info"] and scored[0]["reward"] == 0.0
    assert all(r["reward"] == 1.0 for r in scored[1:])
    assert elapsed < 60
    assert json.loads(proc.stdout.strip().splitlines()[-1])["timeouts"] == 1


def test_user_errors_are_one_line_without_traceback(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:1])
    proc = run_cli("score", "--env", "nope", "--input", str(src), "--output", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2 and "unknown environment 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("score", "--env", "math", "--input", str(tmp_path / "missing.jsonl"),
                   "--output", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2 and "input not found" in proc.stderr
    proc = run_cli("score", "--env", "math", "--input", str(src), "--output", "o.jsonl", "--workers", "0")
    assert proc.returncode == 2 and "--workers" in proc.stderr


def _plugin(tmp_path: Path, name: str, source: str) -> dict:
    """An environment package on PYTHONPATH, registered by entry point: the env for run_cli."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / f"{name}_plugin.py").write_text(textwrap.dedent(source))
    dist = site / f"{name}_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 0.1\n")
    cls = re.search(r"class (\w+)", source).group(1)
    (dist / "entry_points.txt").write_text(f"[rlvr.environments]\n{name} = {name}_plugin:{cls}\n")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))


def test_a_third_party_plugin_registered_by_entry_point_scores_through_the_cli(tmp_path):
    env = _plugin(tmp_path, "reverse", """
        from rlvr.env import Environment, Reward

        class ReverseEnvironment(Environment):
            '''Reward 1 when the response is the prompt reversed.'''
            task_fields = {"prompt": str}

            def score(self, task, response):
                return Reward(float(response == task["prompt"][::-1]), {"want": task["prompt"][::-1]})
    """)
    assert "reverse" in run_cli("envs", env=env).stdout
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "abc", "response": "cba"},
                                              {"prompt": "abc", "response": "abc"}])
    out = tmp_path / "out.jsonl"
    proc = run_cli("score", "--env", "reverse", "--input", str(src), "--output", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    assert [r["reward"] for r in read_jsonl(out)] == [1.0, 0.0]


@pytest.mark.slow
def test_scoring_on_a_local_ray_cluster(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    proc = run_cli("score", "--env", "math", "--input", str(src), "--output", str(out),
                   "--workers", "2", "--ray", "local", "--no-progress", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [r["reward"] for r in read_jsonl(out)] == [1.0, 0.0, 1.0, 0.0, 1.0]
