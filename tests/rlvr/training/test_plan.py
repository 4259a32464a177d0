"""``rlvr plan``: a job's memory per device, reckoned from the config and the model's shape."""

import json
import subprocess
import sys

import pytest

from rlvr.config import load_config
from rlvr.model.config import PRESETS
from rlvr.training.plan import GiB, activation_elements_per_token, learner_figures, parameter_count, plan


def _cfg(**learner):
    return load_config({"data": {"train": [{"generator": "addition"}]}, "learner": learner})


def test_parameters_are_counted_exactly_on_the_meta_device():
    total, experts = parameter_count(PRESETS["nemotron3-nano-30b-a3b"]())
    assert total == pytest.approx(31.58e9, rel=1e-3) and experts == pytest.approx(29.37e9, rel=1e-3)


@pytest.mark.parametrize("stage,parted", [(0, set()), (1, {"optimizer"}), (2, {"optimizer", "gradients"}),
                                          (3, {"optimizer", "gradients", "weights"})])
def test_each_zero_stage_partitions_what_it_should(stage, parted):
    c = PRESETS["tiny"]()
    params = 1_000_000
    one = {f.name.split(": ")[1]: f.bytes for f in learner_figures(_cfg(zero_stage=stage, num_ranks=1), c, params)}
    four = {f.name.split(": ")[1]: f.bytes for f in learner_figures(_cfg(zero_stage=stage, num_ranks=4), c, params)}
    for name in ("weights", "gradients", "optimizer"):
        assert four[name] == (one[name] / 4 if name in parted else one[name]), name
    assert one["weights"] == 4 * params and one["optimizer"] == 8 * params  # fp32: no master copy
    bf16 = {f.name.split(": ")[1]: f.bytes for f in learner_figures(_cfg(bf16=True), c, params)}
    assert bf16["weights"] == 2 * params and bf16["optimizer"] == 12 * params


def test_gradient_checkpointing_keeps_fewer_activations():
    c = PRESETS["nemotron3-nano-30b-a3b"]()
    assert activation_elements_per_token(c, True) < activation_elements_per_token(c, False) / 5


def _nano():
    return load_config({"data": {"train": [{"generator": "addition"}]},
                        "model": {"preset": "nemotron3-nano-30b-a3b", "dtype": "bfloat16"},
                        "learner": {"num_ranks": 8, "zero_stage": 3, "bf16": True, "max_tokens_per_micro_batch": 8192},
                        "rollout": {"engine": "vllm", "vllm_kwargs": {"gpu_memory_utilization": 0.8},
                                    "sampling": {"max_tokens": 1024}}})


def test_preflight_refuses_a_job_that_does_not_fit_the_gpus_here():
    from rlvr.config import ConfigError
    from rlvr.training.preflight import check_fits

    with pytest.raises(ConfigError, match=r"learner.gpus_per_rank: the job does not fit this machine's GPUs: "
                                          r"learner load: 117.6 GiB .* > 80 GiB .*rlvr plan"):
        check_fits(_nano(), 80 * GiB)
    check_fits(_nano(), 141 * GiB)


def test_nano_on_80_gib_is_refused_naming_todays_load_and_fits_141():
    cfg = load_config({"data": {"train": [{"generator": "addition"}]}, "model": {"dtype": "bfloat16"},
                       "learner": {"num_ranks": 8, "zero_stage": 3, "bf16": True, "max_tokens_per_micro_batch": 8192},
                       "rollout": {"engine": "vllm", "vllm_kwargs": {"gpu_memory_utilization": 0.8},
                                   "sampling": {"max_tokens": 1024}}})
    p = plan(cfg, PRESETS["nemotron3-nano-30b-a3b"](), [80, 141])
    small, large = p["devices"]["80GiB"], p["devices"]["141GiB"]
    assert not small["fits"] and small["first_problem"].startswith("learner load: 117.6 GiB")
    assert large["fits"] and large["rollout_sequences"] > small["rollout_sequences"] > 0
    weights = next(r for r in p["rollout"] if r["name"] == "rollout: weights")
    assert weights["gib"] == pytest.approx(31.58e9 * 2 / GiB, rel=1e-2)


def test_rlvr_plan_takes_rlvr_trains_overrides_and_ends_with_json():
    rlvr = [sys.executable, "-m", "rlvr", "plan"]
    done = subprocess.run([*rlvr, "experiment=nano_gpu", "--gpu-memory", "80"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["model"] == "model.preset=nemotron3-nano-30b-a3b" and list(result["devices"]) == ["80GiB"]
    assert "does NOT fit: learner load" in done.stdout
    done = subprocess.run([*rlvr, "learner.lrr=1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "learner.lrr: unknown key" in done.stderr and "Traceback" not in done.stderr
