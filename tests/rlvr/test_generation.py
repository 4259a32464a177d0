"""`rlvr generate`: rows in, rows with responses out, bad rows reported, resumable, jobs not mixed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr.cli import main


@pytest.fixture
def model(tiny_checkpoint):
    return tiny_checkpoint


def _rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generates_for_every_row_and_reports_bad_ones(model, tmp_path, capsys):
    src = _rows(tmp_path / "in.jsonl", [{"prompt": "1+1=", "id": 0}, "not json", {"q": "x"}, {"prompt": "2+2=", "id": 3},
                                        {"prompt": "9" * 80, "id": 4}])
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(model), "--input", str(src), "--output", str(out), "--max-tokens", "5",
                 "--no-progress"]) == 0
    rows = _read(out)
    assert [r.get("id") for r in rows] == [0, None, None, 3, 4]
    assert isinstance(rows[0]["response"], str) and rows[0]["finish_reasons"][0] in ("stop", "length")
    assert 1 <= rows[0]["response_tokens"][0] <= 5
    assert "invalid JSON" in rows[1]["error"] and "no string column 'prompt'" in rows[2]["error"]
    assert "exceed the model's context of 64" in rows[4]["error"]
    captured = capsys.readouterr()
    assert "row 1 (line 2)" in captured.err and "row 4 (line 5)" in captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert (summary["rows"], summary["generated"], summary["errors"]) == (5, 2, 3)


def test_resume_after_an_interruption_and_no_mixing(model, tmp_path):
    src = _rows(tmp_path / "in.jsonl", [{"prompt": f"{i}+{i}="} for i in range(30)])
    whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
    args = ["generate", "--model", str(model), "--input", str(src), "--max-tokens", "4", "--no-progress"]
    assert main([*args, "--output", str(whole)]) == 0
    assert main([*args, "--output", str(cut)]) == 0
    lines = cut.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:10]) + lines[10][:7])  # killed mid-line
    assert main([*args, "--output", str(cut)]) == 0
    assert cut.read_text() == whole.read_text()  # greedy: the resumed file is the whole run's
    assert main([*args, "-n", "2", "--output", str(cut)]) == 2  # another job: refused, nothing written
    assert cut.read_text() == whole.read_text()


def test_several_samples_per_prompt(model, tmp_path):
    src = _rows(tmp_path / "in.jsonl", [{"question": "3+4", "answer": "7"}])
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(model), "--input", str(src), "--output", str(out), "--template",
                 "Q: {question}=", "-n", "3", "--max-tokens", "4", "--no-progress"]) == 0
    row = _read(out)[0]
    assert len(row["responses"]) == len(row["response_tokens"]) == len(row["finish_reasons"]) == 3
    assert row["answer"] == "7" and "response" not in row


@pytest.mark.slow
def test_ray_rollout_workers_write_what_the_engine_here_writes(model, tmp_path, capsys):
    src = _rows(tmp_path / "in.jsonl", [{"prompt": f"{i}*{i}="} for i in range(40)] + [{"prompt": "9" * 80}])
    here, ray_out = tmp_path / "here.jsonl", tmp_path / "ray.jsonl"
    args = ["generate", "--model", str(model), "--input", str(src), "-n", "2", "--max-tokens", "6", "--no-progress"]
    assert main([*args, "--output", str(here)]) == 0
    assert main([*args, "--workers", "2", "--output", str(ray_out)]) == 0
    assert here.read_text() == ray_out.read_text()  # the too-long row measured against the workers' context too
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["errors"] == 1


def test_ignore_eos_generates_max_tokens_and_a_bad_cluster_address_is_named(model, tmp_path, capsys):
    src = _rows(tmp_path / "in.jsonl", [{"prompt": "1+1="}])
    out = tmp_path / "out.jsonl"
    base = ["generate", "--model", str(model), "--input", str(src), "--max-tokens", "7", "--no-progress"]
    assert main([*base, "--ignore-eos", "--output", str(out)]) == 0
    assert _read(out)[0]["response_tokens"] == [7] and _read(out)[0]["finish_reasons"] == ["length"]
    rlvr = str(Path(sys.executable).parent / "rlvr")  # (a fresh process: Ray may be up in this one)
    done = subprocess.run([rlvr, *base, "--ray", "nohost:1", "--output", str(tmp_path / "o2.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--ray nohost:1: nothing answers" in done.stderr and "Traceback" not in done.stderr
    assert main([*base, "--model", str(tmp_path), "--output", str(tmp_path / "o3.jsonl")]) == 2
    assert "--model" in capsys.readouterr().err
