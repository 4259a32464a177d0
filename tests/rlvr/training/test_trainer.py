"""The training loop, end to end, as a user runs it: ``rlvr-train`` with Hydra overrides, real
Ray actors, a real DeepSpeed engine, the builtin rollout engine and the math environment."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlvr.rollout.engine import Completion
from rlvr.training.trainer import build_batch, prefill_gap

# A small, fast job: 1-digit addition, a short SFT warm start, 4 GRPO steps of 16 prompts x 4.
QUICK = [
    "data.train.0.generator_args.digits=1", "eval_prompts=40",  # (evaluation follows: 1-digit held-out pairs)
    "sft.data.generator_args.digits=1", "sft.steps=120",
    "steps=4", "time_limit=null", "prompts_per_step=16", "algorithm.group_size=4",
    "learner.max_tokens_per_micro_batch=256", "eval_every=2", "checkpoint_every=2", "rollout.sampling.max_tokens=3",
    "rollout.eval_sampling.max_tokens=3", "logging.progress=false", "logging.tensorboard=false",
    "cluster.num_cpus=4", "reward.workers=1",
]


def _command(out: Path, *extra: str) -> list[str]:
    return [str(Path(sys.executable).parent / "rlvr-train"), f"hydra.run.dir={out}", "name=test", *QUICK, *extra]


def _metrics(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}


def test_build_batch_aligns_tokens_masks_and_logprobs():
    c = [Completion(0, 0, [5, 6, 7], [8, 9], [-0.5, -0.25], "", "stop"),
         Completion(0, 1, [5, 6, 7], [10], [-1.0], "", "stop")]
    batch = build_batch(c, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 10, 0]]
    # targets input_ids[:, 1:] = [[6, 7, 8, 9], [6, 7, 10, 0]]: generated ones are 8, 9 and 10
    assert batch.mask.tolist() == [[0, 0, 1, 1], [0, 0, 1, 0]]
    assert batch.engine_logp.tolist() == [[0, 0, -0.5, -0.25], [0, 0, -1.0, 0]]


def test_build_batch_puts_expert_records_under_their_input_tokens_and_measures_the_prefill_gap():
    first = torch.tensor([[[0, 1]], [[2, 3]], [[4, 5]], [[6, 7]]], dtype=torch.int8)  # 3 prompt + 2 - 1 read
    c = [Completion(0, 0, [5, 6, 7], [8, 9], [-0.5, -0.25], "", "stop", experts=first, prefill_logprobs=[-0.5, -0.2]),
         Completion(0, 1, [5, 6, 7], [10], [-1.0], "", "stop"),  # (no record: -1, the learner routes itself)
         Completion(0, 2, [5], [10, 11, 12, 13, 14], [-1.0] * 5, "", "stop", experts=torch.ones(5, 1, 2, dtype=torch.int8))]
    batch = build_batch(c, pad_id=0)
    assert batch.experts.shape == (3, 5, 1, 2) and batch.experts.dtype == torch.int8
    assert torch.equal(batch.experts[0, :4], first) and bool((batch.experts[0, 4:] == -1).all())
    assert bool((batch.experts[1] == -1).all()) and bool((batch.experts[2] == 1).all())
    assert build_batch(c[1:2], pad_id=0).experts is None
    gap = prefill_gap(c)
    assert gap["rollout/prefill_decode_gap"] == pytest.approx(0.025) and gap["rollout/prefill_decode_gap_max"] == pytest.approx(0.05)
    assert prefill_gap(c[1:]) == {}


@pytest.mark.slow
def test_routing_replay_with_bf16_rollouts_trains_and_reports_the_mismatch(tmp_path):
    done = subprocess.run(_command(tmp_path, "steps=2", "eval_every=0", "algorithm.routing_replay=rollout",
                                   "rollout.dtype=bfloat16", "rollout.prefill_gap_every=1"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "train/loss" in m]  # (not the final evaluation's row)
    print([{k: m[k] for k in ("train/routing_agreement", "train/routing_tokens_agree", "rollout/prefill_decode_gap",
                              "train/token_prob_error")} for m in steps])
    assert len(steps) == 2
    for m in steps:
        assert 0.5 < m["train/routing_agreement"] <= 1 and 0 < m["train/routing_tokens_agree"] <= 1
        assert m["rollout/prefill_decode_gap"] < 1e-4


@pytest.mark.slow
def test_a_short_job_trains_and_writes_its_summary(tmp_path):
    done = subprocess.run(_command(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 4 and 0 <= summary["eval_accuracy_before"] <= 1 and summary["wall_seconds"] > 0
    assert "held-out greedy accuracy" in done.stdout
    metrics = _metrics(tmp_path)
    assert sorted(metrics) == [1, 2, 3, 4]
    for key in ("reward/mean", "reward/math/mean", "train/loss", "train/entropy", "train/clip_fraction",
                "train/logprob_mismatch", "throughput/tokens_per_s", "time/rollout", "time/learn", "time/sync",
                "learner/load_peak_rss_gib", "learner/peak_rss_gib"):
        assert key in metrics[1], key
    assert metrics[1]["train/logprob_mismatch"] < 1e-3  # engine and learner agree on the sampled tokens
    assert 0.1 < metrics[1]["learner/load_peak_rss_gib"] < 8 and 0.1 < metrics[1]["learner/peak_rss_gib"] < 8
    assert (tmp_path / "reward_curve.png").stat().st_size > 1000
    assert (tmp_path / "final" / "config.json").exists()


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The reference: the quick job, run once without interruption."""
    out = tmp_path_factory.mktemp("whole")
    assert subprocess.run(_command(out), capture_output=True, timeout=600).returncode == 0
    return out


def _assert_same_run(whole: Path, resumed: Path, steps=(3, 4)) -> None:
    a, b = _metrics(whole), _metrics(resumed)
    assert sorted(b) == [1, 2, 3, 4]
    for step in steps:
        for key in ("reward/mean", "train/loss", "train/entropy", "train/clip_fraction", "eval/accuracy"):
            if key in a[step]:
                assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-7), (step, key)
    before, after = (json.loads((p / "summary.json").read_text()) for p in (whole, resumed))
    for key in ("eval_accuracy_before", "eval_accuracy_after"):
        assert after[key] == before[key], key


@pytest.mark.slow
def test_the_synchronous_loop_reproduces_the_numbers_of_the_loop_before_rollouts_ahead(whole):
    # algorithm.max_staleness=0 (the default) is the loop as it was before asynchronous GRPO:
    # the same samples, rewards, losses, gradients and evaluations, to the bit.
    golden = json.loads((Path(__file__).parent / "data" / "quick_job_sync_metrics.json").read_text())["rows"]
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(golden)
    for row, want in zip(rows, golden):
        for key, value in want.items():
            assert row[key] == value, (row["step"], key, row[key], value)
    assert all("staleness/mean" not in row for row in rows)  # (nothing runs ahead)


@pytest.mark.slow
def test_rollouts_ahead_train_on_stale_samples_and_a_signal_stops_and_resumes(tmp_path):
    # dapo: dynamic sampling's refills run ahead too; masked IS: the proximal policy recomputed before the update
    ahead = ["algorithm.max_staleness=1", "algorithm=dapo", "algorithm.is_mode=mask"]
    proc = subprocess.Popen(_command(tmp_path, *ahead), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _wait_for(proc, lambda: (tmp_path / "metrics.jsonl").exists()
              and '"step": 1,' in (tmp_path / "metrics.jsonl").read_text(), "step 1")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr[-2000:]
    resumed_at = int((tmp_path / "checkpoints" / "resume_from").read_text().removeprefix("step_"))
    assert 1 <= resumed_at < 4
    done = subprocess.run(_command(tmp_path, *ahead), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    lag = {r["step"]: r["staleness/mean"] for r in steps}
    # step 1 samples the starting weights; every later step was collected while the one before it
    # trained (one update old), except the first after the relaunch: its samples come from the
    # checkpoint's weights (the rollouts in flight at the signal were abandoned, their prompts drawn again)
    assert lag == {s: 0 if s in (1, resumed_at + 1) else 1 for s in (1, 2, 3, 4)}
    for r in steps:
        assert r["staleness/max"] <= 1 and r["staleness/dropped"] == 0
        assert 0 < r["is/ratio_min"] <= r["is/ratio_mean"] <= r["is/ratio_max"] and 0 <= r["is/masked_share"] <= 1
        assert 0 < r["overlap/learner_busy"] <= 1 and r["overlap/rollout_busy"] >= 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 4 and 0 <= summary["eval_accuracy_after"] <= 1


@pytest.mark.slow
def test_rollouts_ahead_survive_a_killed_rollout_worker(tmp_path):
    proc = subprocess.Popen(_command(tmp_path, "algorithm.max_staleness=2", "steps=30", "checkpoint_every=100"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for(proc, lambda: (tmp_path / "metrics.jsonl").exists()
              and '"step": 3,' in (tmp_path / "metrics.jsonl").read_text(), "step 3")
    ps = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout.splitlines()
    workers = [int(line.split()[0]) for line in ps
               if line.split()[1] == str(proc.pid) and line.split(None, 2)[2].startswith("ray::RolloutWorker")]
    assert workers, "no rollout worker found in the run's session"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 31))
    assert max(r["staleness/max"] for r in steps) <= 2 and sum(r["staleness/dropped"] for r in steps) == 0
    assert "rollout worker 0 died: replaced" in _log(tmp_path)


@pytest.mark.slow
def test_bf16_rollouts_show_a_mismatch_that_a_gate_stops_at_the_first_step(tmp_path):
    # bf16 engines against the fp32 learner: the token probability error is measurably above 1
    # (an fp32 engine's is 1 to rounding); a gate set below it stops the run after one step
    gate = "gates=[{metric: 'train/token_prob_error', above: 1.0001, window: 1, action: stop}]"
    done = subprocess.run(_command(tmp_path, "rollout.dtype=bfloat16", gate), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "train/token_prob_error averaged" in done.stderr and "rollout.dtype" in done.stderr
    assert "Traceback" not in done.stderr
    [row] = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r]
    assert row["step"] == 1 and row["train/token_prob_error"] > 1.0001 and row["train/logprob_mismatch"] > 1e-3


def test_colocated_rollouts_run_the_same_job(whole, tmp_path):
    # rollout.colocate: the learner rank samples from the module it trains, with no rollout worker
    # and no weight sync; the same seed gives the same samples, rewards, losses and evaluations.
    done = subprocess.run(_command(tmp_path, "rollout.colocate=true"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_run(whole, tmp_path, steps=(1, 2, 3, 4))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    syncs = [r["time/sync"] for r in rows if "time/sync" in r]
    assert len(syncs) == 4 and max(syncs) < 0.05  # a version number, no weights moved


def test_colocation_refuses_what_it_cannot_serve(tmp_path):
    for extra, key in ((["rollout.engine=vllm"], "rollout.engine=builtin"), (["learner.zero_stage=3"], "zero_stage")):
        done = subprocess.run(_command(tmp_path, "rollout.colocate=true", *extra), capture_output=True, text=True,
                              timeout=120)
        assert done.returncode != 0 and "rollout.colocate" in done.stderr + done.stdout and "Traceback" not in done.stderr
        assert key in done.stderr + done.stdout


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen(_command(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _log(out: Path) -> str:
    log = out / "train.log"  # Hydra's log of the run
    return log.read_text() if log.exists() else ""


def _wait_for(proc: subprocess.Popen, ready, what: str) -> None:
    deadline = time.monotonic() + 600
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, f"the run ended before {what}"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("signum,target,phase", [
    (signal.SIGINT, "group", "grpo"),  # Ctrl-C in a terminal: the whole process group
    (signal.SIGTERM, "driver", "grpo"),  # Slurm / Kubernetes preemption
    (signal.SIGINT, "group", "sft"),
])
def test_a_signal_stops_cleanly_and_a_relaunch_continues_exactly(whole, tmp_path, signum, target, phase):
    proc = _start(tmp_path)
    if phase == "grpo":
        _wait_for(proc, lambda: (tmp_path / "metrics.jsonl").exists()
                  and '"step": 1,' in (tmp_path / "metrics.jsonl").read_text(), "step 1")
    else:
        _wait_for(proc, lambda: "warm start: SFT" in _log(tmp_path), "the SFT warm start")
        time.sleep(1)
    sent = time.monotonic()
    os.killpg(proc.pid, signum) if target == "group" else proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    stopped = time.monotonic() - sent
    assert proc.returncode == 128 + signum, stderr[-2000:]
    assert "relaunch the same command" in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert stopped < 30, f"took {stopped:.1f} s to stop"
    if phase == "grpo":
        pointer = (tmp_path / "checkpoints" / "resume_from").read_text()
        assert f"interrupted at step {int(pointer.removeprefix('step_'))}" in stderr
    done = subprocess.run(_command(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_run(whole, tmp_path, steps=(2, 3, 4))


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(tmp_path):
    proc = _start(tmp_path)
    _wait_for(proc, lambda: "warm start: SFT" in _log(tmp_path), "the SFT warm start")
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.monotonic() - sent < 5


@pytest.mark.slow
def test_relaunching_a_finished_run_keeps_its_record(whole):
    before = (whole / "summary.json").read_text()
    done = subprocess.run(_command(whole), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (whole / "summary.json").read_text() == before
    assert "nothing to do" in done.stdout + done.stderr


@pytest.mark.slow
def test_kill_9_then_relaunch_continues_exactly(whole, tmp_path, kill_at_checkpoint):
    killed = tmp_path / "killed"
    kill_at_checkpoint(_command(killed), killed, "step_000002")
    done = subprocess.run(_command(killed), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout + done.stderr

    _assert_same_run(whole, killed)


@pytest.mark.slow
def test_zero3_kill_9_then_relaunch_continues_exactly_from_each_ranks_partition(tmp_path, kill_at_checkpoint):
    """Two ZeRO-3 ranks: each saves and resumes its own partition of the weights and optimizer
    state (no gathered copy in the checkpoint), and final/ is streamed out whole."""
    zero3 = ["learner=zero2_2ranks", "learner.zero_stage=3"]
    whole = tmp_path / "whole"
    done = subprocess.run(_command(whole, *zero3), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = tmp_path / "killed"
    kill_at_checkpoint(_command(killed, *zero3), killed, "step_000002")
    saved = sorted(p.name for p in (killed / "checkpoints" / "step_000002").rglob("*optim_states.pt"))
    assert len(saved) == 2 and all("zero_pp_rank_" in name for name in saved), saved  # one partition per rank
    done = subprocess.run(_command(killed, *zero3), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout + done.stderr
    _assert_same_run(whole, killed)
    import rlvr.model as M

    a, b = M.load(whole / "final").state_dict(), M.load(killed / "final").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_multirun_sweeps_one_run_per_value_into_folders_named_by_it(tmp_path):
    command = _command(tmp_path / "unused", f"hydra.sweep.dir={tmp_path / 'sweep'}", "~sft", "steps=1",
                       "learner.lr=1e-4,1e-3", "--multirun")  # (Hydra's flags may stand anywhere)
    command = [c for c in command if c != f"hydra.run.dir={tmp_path / 'unused'}" and not c.startswith("sft.")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = tmp_path / "sweep"
    runs = {p.parent.name: json.loads((p.parent / "config.json").read_text())["learner"]["lr"]
            for p in sweep.glob("*/summary.json")}
    assert runs == {"learner.lr=0.0001": 1e-4, "learner.lr=0.001": 1e-3}
    # no warm start ran: the fresh model is kept as initial/, nothing reads as an SFT checkpoint
    for name in runs:
        summary = json.loads((sweep / name / "summary.json").read_text())
        assert not (sweep / name / "sft").exists() and (sweep / name / "initial" / "config.json").exists()
        assert summary["start"] == "fresh model.preset (no warm start)"
    rows = json.loads((sweep / "sweep_summary.json").read_text())
    assert sorted(r["job"] for r in rows) == ["learner.lr=0.0001", "learner.lr=0.001"]
    assert all(r["finished"] and r["eval_accuracy_after"] is not None and r["wall_seconds"] > 0 for r in rows)
    table = (sweep / "sweep_summary.md").read_text()
    assert "| learner.lr=0.001 |" in table and str(sweep / "sweep_summary.md") in done.stdout


@pytest.mark.slow
def test_rlvr_eval_reproduces_the_trainers_held_out_accuracy(whole, tmp_path):
    rlvr = str(Path(sys.executable).parent / "rlvr")
    done = subprocess.run([rlvr, "eval", "--run", str(whole), "--output", str(tmp_path / "rows.jsonl")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    trained = json.loads((whole / "summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(trained["eval_accuracy_after"], abs=1e-6)
    assert summary["problems"] == trained["eval_prompts"] == 40
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(len(r["responses"]) == len(r["rewards"]) == 1 for r in rows)
    # the warm start, sampled: pass@1 and pass@4 over 4 samples, pass@4 >= pass@1
    done = subprocess.run([rlvr, "eval", "--run", str(whole), "--model", str(whole / "sft"), "-n", "4", "-k", "1,4"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sampled = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0 <= sampled["pass@1"] <= sampled["pass@4"] <= 1


def test_rlvr_eval_refuses_bad_options(tmp_path):
    rlvr = str(Path(sys.executable).parent / "rlvr")
    for argv, message in ((["--run", str(tmp_path)], "holds no config.json"),
                          (["--model", str(tmp_path), "--env", "math"], "give --run DIR, or --model, --env and --input"),
                          (["--run", str(tmp_path), "-n", "2", "-k", "1,4"], "between 1 and -n (2)")):
        done = subprocess.run([rlvr, "eval", *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.slow
def test_rlvr_eval_on_a_file_and_a_prompt_too_long(whole, tmp_path):
    rlvr = str(Path(sys.executable).parent / "rlvr")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"question": f"{a}+{a}=", "answer": str(2 * a)}) + "\n" for a in range(6)))
    base = [rlvr, "eval", "--model", str(whole / "final"), "--env", "math", "--input", str(rows),
            "--prompt-field", "question", "--max-tokens", "3"]
    done = subprocess.run(base + ["-n", "2", "-k", "1,2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["problems"] == 6 and summary["samples_per_problem"] == 2 and "pass@2" in summary
    rows.write_text(json.dumps({"question": "1+" * 400 + "1=", "answer": "401"}) + "\n")
    done = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "exceed the model's context" in done.stderr and "Traceback" not in done.stderr


def _gsm8k_like(path: Path, rows: int = 60, long_every: int = 10) -> Path:
    """Questions as GSM8K's, every ``long_every``-th one longer than the tiny engine's context."""
    with path.open("w") as f:
        for i in range(rows):
            question = f"Tom has {i} apples and buys 3 more. How many now?"
            if i % long_every == 0:
                question = "A long story. " * 60 + question  # ~900 bytes: > 512 tokens
            f.write(json.dumps({"question": question, "answer": str(i + 3)}) + "\n")
    return path


@pytest.mark.slow
def test_prompts_too_long_for_the_context_are_left_out_and_reported(tmp_path):
    data = _gsm8k_like(tmp_path / "gsm.jsonl")
    command = [str(Path(sys.executable).parent / "rlvr-train"), "data=gsm8k_local", f"data.train.0.path={data}",
               "~sft", "model.preset=tiny", "steps=1", f"hydra.run.dir={tmp_path / 'run'}", "prompts_per_step=8",
               "algorithm.group_size=2", "logging.progress=false", "logging.tensorboard=false", "cluster.num_cpus=4",
               "reward.workers=1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    counts = [int(n) for n in re.findall(r"(\d+) of \d+ prompts are longer than 507 tokens", log)]
    assert sum(counts) == 6 and "(rollout.sampling.max_tokens)" in log and "left out" in log, log[-3000:]
    # data.long_prompts=error: one line before Ray starts, naming the setting
    done = subprocess.run([*command, "data.long_prompts=error", f"hydra.run.dir={tmp_path / 'strict'}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "data.long_prompts=error" in done.stderr and "Traceback" not in done.stderr
    assert "Ray" not in done.stderr
