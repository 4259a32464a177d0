"""pass@k against hand-computed cases and the brute-force definition; the `rlvr eval` job:
resuming, breakdowns, long prompts, Ray rollout workers."""

import importlib.util
import itertools
import json
import signal
import subprocess
import sys
import time
from math import comb
from pathlib import Path

import pytest

from rlvr.cli import main
from rlvr.data import Prompt
from rlvr.evaluation import breakdown, pass_at_k, summarize


@pytest.mark.parametrize("n, c, k, expected", [
    (1, 1, 1, 1.0), (1, 0, 1, 0.0),
    (4, 1, 1, 0.25),  # one of four passes: a single draw finds it a quarter of the time
    (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
    (8, 3, 8, 1.0), (8, 0, 8, 0.0),
    (10, 5, 3, 1 - comb(5, 3) / comb(10, 3)),
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_the_chance_over_all_draws():
    samples = [1, 0, 0, 1, 0, 1, 0]  # n = 7, c = 3
    for k in range(1, 8):
        draws = list(itertools.combinations(samples, k))
        assert pass_at_k(7, 3, k) == pytest.approx(sum(any(d) for d in draws) / len(draws), abs=1e-12)


def test_pass_at_k_is_stable_for_many_samples():
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert 0 < pass_at_k(100_000, 3, 10) < 1


def test_summary_and_bad_inputs():
    out = summarize([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], ks=[1, 2])
    assert out["pass@1"] == pytest.approx((0.25 + 1 + 0) / 3)
    assert out["pass@2"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert out["mean_reward"] == pytest.approx(5 / 12) and out["problems"] == 3
    assert summarize([[0.5, 1.0]], ks=[1], success=1.0)["pass@1"] == 0.5  # partial credit is not a pass
    with pytest.raises(ValueError, match="pass@8 needs at least 8 samples"):
        summarize([[1, 0]], ks=[1, 8])
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 1, 0)


# ---------------------------------------------------------------- the job (`rlvr eval`) on a tiny model

@pytest.fixture
def model(tiny_checkpoint):
    return tiny_checkpoint


def _problems(path, count, long=()):
    rows = [{"question": ("9+" * 40 if i in long else f"{i}+{i}=") , "answer": str(2 * i), "level": f"L{i % 3}"}
            for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _eval(model, src, *extra):
    return ["eval", "--model", str(model), "--env", "math", "--input", str(src), "--prompt-field", "question",
            "--max-tokens", "6", "--no-progress", *extra]


def _summary(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_an_interrupted_eval_resumes_to_the_whole_runs_rows_and_summary(model, tmp_path, capsys):
    src = _problems(tmp_path / "in.jsonl", 70)
    whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
    args = _eval(model, src, "-n", "2", "-k", "1,2")
    assert main([*args, "--output", str(whole)]) == 0
    expected = _summary(capsys)
    lines = whole.read_text().splitlines(keepends=True)
    assert len(lines) == 70 and all(len(json.loads(x)["rewards"]) == 2 for x in lines)
    cut.write_text("".join(lines[:33]) + lines[33][:20])  # a kill mid-chunk, mid-line
    (tmp_path / "cut.jsonl.rlvr.json").write_text((tmp_path / "whole.jsonl.rlvr.json").read_text())
    assert main([*args, "--output", str(cut)]) == 0
    assert _summary(capsys) == expected  # the rows read back count as if evaluated now
    assert cut.read_text() == whole.read_text()
    assert main([*_eval(model, src, "-n", "3", "-k", "1,2"), "--output", str(cut)]) == 2  # another job: refused
    assert "holds the evaluation rows of another job (n differs)" in capsys.readouterr().err
    assert cut.read_text() == whole.read_text()


def test_sigint_keeps_the_rows_written_and_the_rerun_finishes(model, tmp_path):
    src = _problems(tmp_path / "in.jsonl", 400)
    out = tmp_path / "out.jsonl"
    cmd = [str(Path(sys.executable).parent / "rlvr"), *_eval(model, src, "-n", "4", "--max-tokens", "40",
                                                             "--output", str(out))]
    # Ctrl-C's default disposition in the child, as a terminal gives it: a test run started as a
    # shell's background job would otherwise hand it SIGINT ignored, which Python then keeps
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.exists() and out.stat().st_size):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "re-run the same command to resume" in err and "Traceback" not in err, err
    kept = len(out.read_text().splitlines())
    assert 0 < kept < 400
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 400
    assert json.loads(done.stdout.strip().splitlines()[-1])["problems"] == 400


def test_breakdown_by_a_column_and_long_prompts_skipped(model, tmp_path, capsys):
    src = _problems(tmp_path / "in.jsonl", 9, long={4})
    assert main(_eval(model, src, "--by", "level")) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["problems"] == 8 and summary["skipped"] == 1
    assert "prompt 4 " in captured.err and "exceed the model's context of 64" in captured.err
    assert "prompts: 1 of 9 are longer than the model's context of 64 tokens minus --max-tokens" in captured.err
    assert {g: s["problems"] for g, s in summary["by_source"].items()} == {"L0": 3, "L1": 2, "L2": 3}
    assert "by_env" not in summary  # one environment: no breakdown
    assert main(_eval(model, src, "--by", "levle")) == 2
    assert "--by: no row has a column 'levle'" in capsys.readouterr().err
    _problems(src, 2, long={0, 1})
    assert main(_eval(model, src)) == 2
    assert "none of the 2 prompts fits the model's context" in capsys.readouterr().err


def test_breakdown_groups_by_environment_and_source():
    prompts = [Prompt("a", "math", {}, source="gsm8k"), Prompt("b", "math", {}, source="aime"),
               Prompt("c", "code", {}, source="mbpp")]
    out = breakdown(prompts, [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], ks=[1, 2])
    assert out["by_env"]["math"] == {"pass@1": 0.25, "pass@2": 0.5, "mean_reward": 0.25, "problems": 2}
    assert out["by_source"]["mbpp"]["pass@2"] == 1.0 and set(out["by_source"]) == {"gsm8k", "aime", "mbpp"}
    assert breakdown(prompts[:1], [[1.0]], ks=[1]) == {}


@pytest.mark.slow
def test_ray_rollout_workers_give_what_the_engine_here_gives(model, tmp_path, capsys):
    src = _problems(tmp_path / "in.jsonl", 12)
    here, ray_rows = tmp_path / "here.jsonl", tmp_path / "ray.jsonl"
    assert main([*_eval(model, src, "-n", "3", "-k", "1,3"), "--output", str(here)]) == 0
    alone = _summary(capsys)
    assert main([*_eval(model, src, "-n", "3", "-k", "1,3", "--workers", "2"), "--output", str(ray_rows)]) == 0
    assert _summary(capsys) == alone
    # sampling is per request: which worker ran it does not matter
    assert here.read_text() == ray_rows.read_text()


def test_mistyped_options_are_one_line_errors(model, tmp_path, capsys):
    src = _problems(tmp_path / "in.jsonl", 3)
    cases = [(["eval", "--run", str(tmp_path), "--input", str(src), "--env", "math"], "leave out --input, --env"),
             (_eval(model, src, "--prompt-field", "prompt"), "no column 'prompt' for the prompt (its columns: question"),
             (_eval(model, src, "--field", "answer=gold"), "missing column 'gold' (mapped to field 'answer')"),
             (_eval(tmp_path, src), "--model: " + str(tmp_path) + " is not a checkpoint folder")]
    if importlib.util.find_spec("vllm") is None:
        cases.append((_eval(model, src, "--engine", "vllm"), "--engine vllm: vLLM is not installed here"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    with pytest.raises(SystemExit):  # argparse: exit 2 with the option named
        main(_eval(model, src, "--temperature", "-1"))
    assert "argument --temperature: must be >= 0" in capsys.readouterr().err
