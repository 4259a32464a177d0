"""``rlvr score`` off the happy path: it never loses a row, never mixes two jobs in one output,
and says what is wrong in one line (``rlvr: error: ...``), never with a traceback."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlvr.scoring.job import encode, score_file

GOOD = [{"response": f"\\boxed{{{i}}}", "answer": str(i)} for i in range(6)]


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cli(*args, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlvr", *args], capture_output=True, text=True, timeout=timeout, **kw)


def _score(src: Path, out, *extra, **kw) -> subprocess.CompletedProcess:
    return _cli("score", "--env", "math", "--input", str(src), "--output", str(out), "--no-progress", *extra, **kw)


def _error(done: subprocess.CompletedProcess, needle: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert needle in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_outputs_of_another_job_are_refused_never_mixed(tmp_path):
    src, out = _jsonl(tmp_path / "a.jsonl", GOOD), tmp_path / "out.jsonl"
    assert _score(src, out).returncode == 0
    other = _jsonl(tmp_path / "b.jsonl", GOOD[::-1])
    before = out.read_text()
    _error(_score(other, out), "holds the scores of another job (the input's content differs)")
    _error(_score(src, out, "--field", "response=response", "--field", "answer=answer"),
           "another job (fields differs)")
    assert out.read_text() == before
    foreign = _jsonl(tmp_path / "foreign.jsonl", [{"x": 1}])  # not written by rlvr score
    _error(_score(src, foreign), "was not written by rlvr score")
    # the same job again: resumes (nothing left to do)
    again = _score(src, out)
    assert again.returncode == 0 and json.loads(again.stdout.splitlines()[-1])["resumed_from"] == 6


def test_a_garbled_or_too_long_output_is_refused(tmp_path):
    src, out = _jsonl(tmp_path / "a.jsonl", GOOD), tmp_path / "out.jsonl"
    assert _score(src, out).returncode == 0
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:3] + ["{garbled"]) + "\n")
    _error(_score(src, out), "line 4 is not a scored row")
    out.write_text("\n".join(lines + lines[:1]) + "\n")
    _error(_score(src, out), "more than the input's 6")


def test_two_runs_never_write_one_output(tmp_path):
    src, out = _jsonl(tmp_path / "a.jsonl", GOOD), tmp_path / "out.jsonl"
    record = out.with_name(out.name + ".rlvr.json")
    with record.open("a+") as held:  # another run holds the output
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _error(_score(src, out), "another rlvr score is writing")
    assert _score(src, out).returncode == 0 and len(out.read_text().splitlines()) == 6


SLEEPY = '''
import os, time
from rlvr.env import Environment, Reward

class SleepyEnvironment(Environment):
    def score(self, task, response):  # slow where told; "flaky" rows recover once a marker exists
        if response == "slow" or (response == "flaky" and not os.path.exists(os.environ["RLVR_TEST_MARKER"])):
            time.sleep(float(os.environ.get("RLVR_TEST_SLEEP", "3600")))
        time.sleep(float(os.environ.get("RLVR_TEST_EACH", "0")))
        return Reward(1.0, {})
'''


def _sleepy(tmp_path: Path, **env) -> dict:
    site = tmp_path / "site"
    (site / "sleepy_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "sleepy_plugin.py").write_text(SLEEPY)
    (site / "sleepy_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: sleepy-plugin\nVersion: 0.1\n")
    (site / "sleepy_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[rlvr.environments]\nsleepy = sleepy_plugin:SleepyEnvironment\n")
    return os.environ | {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                         "RLVR_TEST_MARKER": str(tmp_path / "marker")} | env


def test_retry_failed_scores_timed_out_rows_again(tmp_path):
    env = _sleepy(tmp_path, RLVR_TEST_SLEEP="3")
    src = _jsonl(tmp_path / "in.jsonl", [{"response": "ok"}, {"response": "flaky"}, {"response": "ok"}])
    out = tmp_path / "out.jsonl"
    first = _cli("score", "--env", "sleepy", "--input", str(src), "--output", str(out), "--timeout", "1", env=env)
    assert first.returncode == 0 and "row 1 (line 2): timeout" in first.stderr
    (tmp_path / "marker").touch()  # whatever made it fail is gone
    again = _cli("score", "--env", "sleepy", "--input", str(src), "--output", str(out), "--retry-failed", env=env)
    assert again.returncode == 0, again.stderr
    assert [r["reward"] for r in map(json.loads, out.read_text().splitlines())] == [1.0, 1.0, 1.0]
    assert json.loads(again.stdout.splitlines()[-1])["retried"] == 1


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def test_sigterm_stops_the_workers_and_keeps_the_rows(tmp_path):
    env = _sleepy(tmp_path, RLVR_TEST_EACH="0.2")
    rows = [{"response": str(i)} for i in range(200)]
    src, out = _jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "rlvr", "score", "--env", "sleepy", "--input", str(src),
                             "--output", str(out), "--workers", "2", "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    workers = _children(proc.pid)
    assert len(workers) >= 2  # the scoring workers (and multiprocessing's resource tracker)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr
    time.sleep(1)
    assert not [w for w in workers if os.path.exists(f"/proc/{w}") and "zombie" not in Path(f"/proc/{w}/status").read_text().lower()]
    written = out.read_text().splitlines()
    assert 0 < len(written) < 200 and all(json.loads(line)["reward"] == 1.0 for line in written)
    again = _cli("score", "--env", "sleepy", "--input", str(src), "--output", str(out), "--workers", "2",
                 "--no-progress", env=env | {"RLVR_TEST_EACH": "0"})
    assert again.returncode == 0
    assert len(out.read_text().splitlines()) == 200


@pytest.mark.parametrize("value", ["nan", "inf", "1e9", "0", "-1", "fast"])
def test_timeouts_are_validated(tmp_path, value):
    done = _score(_jsonl(tmp_path / "a.jsonl", GOOD), tmp_path / "o.jsonl", "--timeout", value)
    assert done.returncode == 2 and "--timeout" in done.stderr and "Traceback" not in done.stderr


def test_environment_arguments_are_json_and_type_checked(tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", GOOD)
    done = _score(src, tmp_path / "o.jsonl", "--env-arg", "precision={bad")
    assert done.returncode == 2 and "not JSON" in done.stderr
    _error(_score(src, tmp_path / "o.jsonl", "--env-arg", "precision=\"six\""),
           "--env-arg precision: expected int, got string 'six'")
    _error(_score(src, tmp_path / "o.jsonl", "--env-arg", "precisoin=6"), "takes no such argument")
    assert not (tmp_path / "o.jsonl").exists()
    assert _score(src, tmp_path / "o.jsonl", "--env-arg", "precision=3").returncode == 0
    assert _score(src, tmp_path / "n.jsonl", "--env-arg", "precision=null").returncode == 0  # (int | None)


def test_stdout_as_output_streams_the_rows(tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", GOOD)
    done = subprocess.run(f"{sys.executable} -m rlvr score --env math --input {src} --output /dev/stdout "
                          "--no-progress | cat", shell=True, capture_output=True, text=True, timeout=60)
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["reward"] for r in rows] == [1.0] * 6


def test_split_with_the_progress_bar(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(GOOD), "test": datasets.Dataset.from_list(GOOD[:2])}
                         ).save_to_disk(str(tmp_path / "dd"))
    done = _cli("score", "--env", "math", "--input", str(tmp_path / "dd"), "--output", str(tmp_path / "o.jsonl"),
                "--split", "test")
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 2
    _error(_score(_jsonl(tmp_path / "a.jsonl", GOOD), tmp_path / "p.jsonl", "--split", "test"), "is a single file")


def test_one_line_errors_for_bad_paths_files_and_addresses(tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", GOOD)
    (tmp_path / "afile").write_text("x")
    _error(_score(src, tmp_path / "afile" / "out.jsonl"), "is a file, not a folder")
    _error(_score(src, tmp_path), "is a folder")
    _error(_score(src, "/proc/rlvr-out.jsonl"), "--output /proc/rlvr-out.jsonl")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 junk")
    _error(_score(tmp_path / "bad.parquet", tmp_path / "o.jsonl"), "not a readable parquet file")
    (tmp_path / "gz.jsonl").write_bytes(__import__("gzip").compress(src.read_bytes()))
    _error(_score(tmp_path / "gz.jsonl", tmp_path / "o.jsonl"), "gzip-compressed")
    start = time.monotonic()
    _error(_score(src, tmp_path / "o.jsonl", "--ray", "127.0.0.1:9"), "--ray 127.0.0.1:9: nothing answers")
    assert time.monotonic() - start < 15
    _error(_cli("example", "--dir", "/proc/rlvr-example"), "cannot write the example")
    _error(_cli("example", "--generator", "nope", "--dir", str(tmp_path / "ex")),
           "--generator: unknown generator 'nope' (registered: addition, ")
    assert not (tmp_path / "o.jsonl").exists()  # a rejected input leaves no output behind


def test_rlvr_example_takes_generator_arguments_and_fails_when_nothing_scores(tmp_path):
    ex = ["example", "--rows", "20", "--dir", str(tmp_path / "ex")]
    _error(_cli(*ex, "--generator", "math_responses", "--generator-arg", "digits=2"),
           "--generator-arg digits: math_responses takes no such argument")
    _error(_cli(*ex, "--generator", "addition"), "--generator: addition writes tasks without responses")
    # a generator's own arguments reach it: the careless teacher's sums are scored
    done = _cli(*ex, "--generator", "addition", "--generator-arg", "forget_carry=1.0", "--generator-arg", "digits=1")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "ex" / "responses.jsonl").read_text().splitlines()]
    assert all(len(r["prompt"]) <= 4 for r in rows if "prompt" in r)  # one-digit problems: "a+b="
    # every row failing (an environment that cannot read them): an exit code that says so
    done = _cli(*ex, "--generator", "addition", "--generator-arg", "forget_carry=0.5", "--env", "code")
    assert done.returncode == 1 and "none of the 20 rows was scored" in done.stderr, done.stderr[-2000:]


def test_output_is_strict_json_and_a_lone_surrogate_is_reported(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"response": "\\\\boxed{1}", "answer": "1", "x": NaN}\n'
                   '{"response": "\\\\boxed{2} \\ud83d", "answer": "2"}\n')
    done = _score(src, tmp_path / "o.jsonl")
    assert done.returncode == 0, done.stderr
    assert "lone surrogate" in done.stderr
    text = (tmp_path / "o.jsonl").read_text()
    assert "NaN" not in text
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows[0]["x"] is None and [r["reward"] for r in rows] == [1.0, 1.0]
    assert rows[1]["response"].endswith("\ud83d")  # the value survives, escaped
    reported = []
    assert encode({"b": b"\xff\x00", "t": b"text"}, lambda w, m: reported.append(m)) == \
        b'{"b": "base64:/wA=", "t": "text"}\n'


def test_workers_are_not_more_than_the_rows(tmp_path):
    summary = score_file("math", _jsonl(tmp_path / "a.jsonl", GOOD[:3]), tmp_path / "o.jsonl", workers=8,
                         progress=False)
    assert summary.workers == 3 and summary.rows == 3
