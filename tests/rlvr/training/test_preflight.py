"""Every configuration mistake of a user is found before Ray starts, in about a second, with one
line naming the key (rlvr/training/preflight.py); nothing in an earlier run's folder is touched."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import rlvr.model as M
from rlvr.config import ConfigError, load_config
from rlvr.model.config import tiny
from rlvr.training import preflight
from rlvr.training.command_line import check_command_line, compose_jobs, fit_overrides, parse

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    (d / "gsm.jsonl").write_text("".join(json.dumps({"question": f"{i}+1?", "answer": str(i + 1)}) + "\n"
                                         for i in range(40)))
    (d / "empty.jsonl").write_text("")
    (d / "noprompt.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    torch.manual_seed(0)
    M.HybridLM(tiny()).save(d / "ckpt")
    return d


def _check(*args: str, out: Path | None = None) -> list[str]:
    return check_command_line(CONFIGS, [*args, f"hydra.run.dir={out or '/nonexistent/run'}"])


CASES = [
    # (overrides, text the one-line error must contain)
    (["experiment=nano_gpuu"], "Could not find 'experiment/nano_gpuu' Available options in 'experiment': "),
    (["data=gsm8k_local"], "data.train.0.path: must be set"),
    (["data=gsm8k_local", "data.train.0.path=/no/such.jsonl"], "data.train.0.path: /no/such.jsonl not found"),
    (["data=gsm8k_local", "data.train.0.path={d}/empty.jsonl"], "data.train.0.path: {d}/empty.jsonl is empty"),
    (["data=gsm8k_local", "data.train.0.path={d}/noprompt.jsonl"], "data.train.0.prompt_field: the first row"),
    (["data=gsm8k_local", "data.train.0.path={d}/gsm.jsonl", "data.train.0.fields.answer=gold"],
     "data.train.0.fields.answer: the first row"),
    (["data.train.0.generator=addd"], "data.train.0.generator: unknown generator 'addd'"),
    (["data.train.0.env=mathh"], "data.train.0.env: unknown environment 'mathh'"),
    (["model.path={d}"], "model.path: {d} is not a checkpoint folder"),
    (["model.path=/no/such/ckpt"], "model.path: /no/such/ckpt does not exist"),
    (["model.preset=nope"], "model.preset: unknown preset 'nope'"),
    (["model.tokenizer=surely-not-a-cached/tokenizer"], "model.tokenizer: cannot load"),
    (["learner.gpus_per_rank=1"], "learner.gpus_per_rank: 1 GPU(s) x 1 asked for, but this machine has 0"),
    (["rollout=vllm_gpu", "rollout.engine=builtin"], "rollout.gpus_per_worker: 1 GPU(s) x 2 asked for"),
    (["rollout.sampling.temperature=0"], "rollout.sampling.temperature: 0 is greedy"),
    (["algorithm.clip_low=1.5"], "algorithm.clip_low"),
    (["algorithm.clip_low=0.3", "algorithm.clip_high=0.2"], "algorithm.clip_high: 0.2 < clip_low"),
    (["learner.lr=inf"], "learner.lr: Input should be a finite number"),
    (["learner.eps=-1"], "learner.eps"),
    (["learner.betas=[0.9,1.0]"], "learner.betas: each must be in [0, 1)"),
    (["steps=true"], "steps: expected int, got True"),
    (["name=../x"], "name: '../x' is not a folder name"),
    (["name=a/b"], "name: 'a/b' is not a folder name"),
    (["learner.typo=1"], "learner.typo: unknown key"),
    (["cluster.address=auto"], "cluster.address: auto, but no Ray cluster runs on this machine"),
    (["cluster.address=127.0.0.1:9"], "cluster.address: nothing answers at 127.0.0.1:9"),
    (["resume=maybe"], "resume: expected true, false or force"),
    (["data.train.0.generator_args.digits=abc"], "data.train.0.generator_args.digits: expected int, got string 'abc'"),
    (["data.train.0.generator_args.length=4"], "data.train.0.generator_args.length: addition takes no such argument"),
    (["data.train.0.generator_args.holdout=some"], "data.train.0.generator_args: addition: holdout must be"),
    (["sft.data.generator_args.digits=two"], "sft.data.generator_args.digits: expected int"),
    (["data.train.0.generator=functions", "data.train.0.env=code", "data.train.0.generator_args={{}}"],
     "sft.data.generator: the warm start learns 'addition', which no training source uses"),
    (["data.long_prompts=truncate"], "data.long_prompts: Input should be 'drop' or 'error'"),
]


@pytest.mark.parametrize("args,needle", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_each_mistake_is_one_line_naming_the_key_within_a_second(files, args, needle):
    args = [a.format(d=files) for a in args]
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        _check(*args)
    elapsed = time.monotonic() - start
    message = str(err.value)
    assert needle.format(d=files) in message, message
    assert "\n" not in message and elapsed < 3, (message, elapsed)


def test_a_wandb_project_without_wandb_is_refused_naming_the_extra(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"logging.wandb_project: 'demo' asks for W&B, but wandb is not installed "
                                          r"in this Python \(pip install -e '.\[wandb\]'\)"):
        _check("logging.wandb_project=demo")


def test_vllm_engine_where_vllm_is_not_installed():
    pytest.importorskip("hydra")
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        assert _check("rollout.engine=vllm") is not None  # (in .venv-vllm it is installed: no error)
        return
    with pytest.raises(ConfigError, match="rollout.engine: vllm is not installed"):
        _check("rollout.engine=vllm")


def _composed(*args: str) -> dict:
    """The config of a command line, composed as rlvr-train composes it (no checks)."""
    cl = parse(list(args), CONFIGS)
    [job] = compose_jobs(cl, fit_overrides(cl))
    return job.config


def test_the_warm_start_belongs_to_the_default_data_only(files):
    assert _composed()["sft"] is not None
    gsm = ["data=gsm8k_local", f"data.train.0.path={files}/gsm.jsonl"]
    assert _composed(*gsm).get("sft") is None
    assert _composed(*gsm, "~sft").get("sft") is None  # nothing to delete: fine
    assert _composed(*gsm, "sft=addition_teacher")["sft"]["steps"] == 1000  # asked for: added
    # ... although checks refuse a warm start on a generator no training source uses
    with pytest.raises(ConfigError, match="sft.data.generator: the warm start learns 'addition'"):
        _check(*gsm, "sft=addition_teacher")
    assert _composed("~sft").get("sft") is None


def test_a_multirun_checks_every_job_before_the_first():
    with pytest.raises(ConfigError, match="job learner.lr=abc.*learner.lr"):
        check_command_line(CONFIGS, ["--multirun", "learner.lr=1e-4,abc", "hydra.sweep.dir=/nonexistent"])


def _earlier_run(out: Path, **changes) -> None:
    cfg = load_config(_composed(f"hydra.run.dir={out}") | changes)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "resume_from").write_text("step_000025")


def test_a_relaunch_with_another_config_is_refused_unless_forced(tmp_path):
    _earlier_run(tmp_path / "run")
    _check(out=tmp_path / "run")  # the same command resumes
    _check("steps=400", "logging.progress=false", out=tmp_path / "run")  # run longer, log less: fine
    with pytest.raises(ConfigError, match=r"resume: .* another config \(learner.lr: 0.0002 -> 0.0003\).*resume=force"):
        _check("learner.lr=3e-4", out=tmp_path / "run")
    _check("learner.lr=3e-4", "resume=force", out=tmp_path / "run")


def test_a_run_saved_before_a_config_key_existed_resumes_at_its_default(tmp_path):
    run = tmp_path / "run"
    _earlier_run(run)
    saved = json.loads((run / "config.json").read_text())
    del saved["algorithm"]["max_staleness"], saved["algorithm"]["is_mode"]  # (keys added after that run)
    (run / "config.json").write_text(json.dumps(saved))
    _check(out=run)  # at their defaults they change nothing
    with pytest.raises(ConfigError, match=r"algorithm.max_staleness: None -> 1"):
        _check("algorithm.max_staleness=1", out=run)


def _train(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run([str(Path(sys.executable).parent / "rlvr-train"), *args], capture_output=True, text=True,
                          timeout=120)
    return done, time.monotonic() - start


def test_resume_false_refuses_before_anything_in_the_run_is_written(tmp_path):
    out = tmp_path / "run"
    _earlier_run(out)
    before = (out / "config.json").read_text()
    done, elapsed = _train(f"hydra.run.dir={out}", "resume=false")
    assert done.returncode == 2 and "resume: false, but" in done.stderr and "Traceback" not in done.stderr
    assert (out / "config.json").read_text() == before and not (out / ".hydra").exists()
    print(f"rlvr-train resume=false refused in {elapsed:.1f} s")
    assert elapsed < 10


def test_rlvr_train_stops_before_ray_and_writes_nothing(tmp_path):
    done, elapsed = _train(f"hydra.run.dir={tmp_path / 'run'}", "experiment=nano_gpuu")
    assert done.returncode == 2 and "Could not find 'experiment/nano_gpuu'" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()
    done, _ = _train("--multirun", f"hydra.sweep.dir={tmp_path / 'sweep'}", "learner.lr=1e-4,abc")
    assert done.returncode == 2 and "job learner.lr=abc" in done.stderr and not (tmp_path / "sweep").exists()
    print(f"rlvr-train rejected an unknown experiment in {elapsed:.1f} s")
    assert elapsed < 10


def test_joining_a_cluster_without_the_resources_fails_naming_the_key():
    from rlvr.training.preflight import check_cluster_resources

    nodes = [{"Alive": True, "Resources": {"CPU": 8.0, "node:10.0.0.1": 1.0, "memory": 1e10}},
             {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 8.0}}]  # the GPU node is gone
    cfg = load_config(_composed("learner.gpus_per_rank=1", "cluster.address=auto"))
    with pytest.raises(ConfigError, match=r"learner.gpus_per_rank: no node of the Ray cluster has GPU=1 \(the cluster has CPU=8\)"):
        check_cluster_resources(cfg, nodes)
    cfg = load_config(_composed("+rollout.resources.rollout_node=1"))
    with pytest.raises(ConfigError, match="rollout.resources: no node of the Ray cluster has rollout_node=1"):
        check_cluster_resources(cfg, nodes)
    check_cluster_resources(load_config(_composed()), nodes)  # CPUs only: fits


def test_rollouts_ahead_on_too_few_cores_are_warned_about_naming_the_thread_keys():
    def warning(*overrides, cores=2):
        return preflight.warn_oversubscribed(load_config(_composed(*overrides)), cores=cores)

    assert warning() is None  # synchronous: the phases take turns on every core
    message = warning("algorithm.max_staleness=1")  # the CPU defaults: 2 + 2 threads
    assert "rollout.threads=1 learner.threads=1" in message and "4 torch threads" in message
    assert warning("algorithm.max_staleness=1", "rollout.threads=1", "learner.threads=1") is None
    assert warning("algorithm.max_staleness=1", cores=8) is None
