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
    shape = parameter_count(PRESETS["nemotron3-nano-30b-a3b"]())
    assert shape.total == pytest.approx(31.58e9, rel=1e-3) and shape.experts == pytest.approx(29.37e9, rel=1e-3)
    assert shape.largest_tensor == 128 * 1856 * 2688  # one MoE layer's stacked up_proj
    assert shape.largest_module == 2 * shape.largest_tensor  # (its up_proj and down_proj)


def _figures(**learner) -> dict[str, float]:
    c = PRESETS["tiny"]()
    shape = parameter_count(c)
    return {f.name.split(": ")[1]: f.bytes / shape.total for f in learner_figures(_cfg(**learner), c, shape)}


@pytest.mark.parametrize("stage,parted", [(0, set()), (1, {"optimizer"}), (2, {"optimizer", "gradients"}),
                                          (3, {"optimizer", "gradients", "weights"})])
def test_each_zero_stage_partitions_what_it_should(stage, parted):
    one, four = _figures(zero_stage=stage, num_ranks=1), _figures(zero_stage=stage, num_ranks=4)
    for name in ("weights", "gradients", "optimizer"):
        assert four[name] == pytest.approx(one[name] / 4 if name in parted else one[name]), name
    assert one["weights"] == 4
    # ZeRO's optimizers step an fp32 master copy (of fp32 weights too); ZeRO-0 steps the weights
    assert one["optimizer"] == (8 if stage == 0 else 12)
    bf16 = _figures(bf16=True, zero_stage=stage)
    assert bf16["weights"] == 2 and bf16["optimizer"] == 12
    # loading: ZeRO-3 builds its partition (and one module whole), the others the whole model
    assert (four["load"] < one["load"] / 2) == (stage == 3)
    assert (four["ZeRO buffers"] > 0) == (stage > 0)


def test_gradient_checkpointing_keeps_fewer_activations():
    c = PRESETS["nemotron3-nano-30b-a3b"]()
    assert activation_elements_per_token(c, True) < activation_elements_per_token(c, False) / 5


def _nano():
    return load_config({"data": {"train": [{"generator": "addition"}]},
                        "model": {"preset": "nemotron3-nano-30b-a3b", "dtype": "bfloat16", "gradient_checkpointing": True},
                        "learner": {"num_ranks": 8, "zero_stage": 3, "bf16": True, "max_tokens_per_micro_batch": 8192},
                        "rollout": {"engine": "vllm", "vllm_kwargs": {"gpu_memory_utilization": 0.8},
                                    "sampling": {"max_tokens": 1024}}})


def test_preflight_refuses_a_job_that_does_not_fit_the_gpus_here():
    from rlvr.config import ConfigError
    from rlvr.training.preflight import check_fits

    check_fits(_nano(), 80 * GiB)
    zero2 = _nano()
    zero2.learner.zero_stage = 2  # (every rank holds the whole bf16 model)
    with pytest.raises(ConfigError, match=r"learner.gpus_per_rank: the job does not fit this machine's GPUs: "
                                          r"learner step: 11\d.\d GiB > 80 GiB .*rlvr plan"):
        check_fits(zero2, 80 * GiB)


def test_nano_fits_8_x_80_gib_loading_each_ranks_partition():
    p = plan(_nano(), PRESETS["nemotron3-nano-30b-a3b"](), [80, 141])
    small, large = p["devices"]["80GiB"], p["devices"]["141GiB"]
    assert small["fits"] and large["fits"] and large["rollout_sequences"] > small["rollout_sequences"] > 0
    assert small["learner_step_gib"] < 75 and small["learner_load_gib"] < 15  # (the whole bf16 model: 58.8 GiB)
    figures = {r["name"]: r["gib"] for r in p["learner"]}
    assert figures["learner: weights"] == pytest.approx(31.58e9 * 2 / 8 / GiB, rel=1e-2)
    weights = next(r for r in p["rollout"] if r["name"] == "rollout: weights")
    assert weights["gib"] == pytest.approx(31.58e9 * 2 / GiB, rel=1e-2)


def test_rlvr_plan_takes_rlvr_trains_overrides_and_ends_with_json():
    rlvr = [sys.executable, "-m", "rlvr", "plan"]
    done = subprocess.run([*rlvr, "experiment=nano_gpu", "--gpu-memory", "80"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["model"] == "model.preset=nemotron3-nano-30b-a3b" and list(result["devices"]) == ["80GiB"]
    assert "80GiB: fits" in done.stdout
    done = subprocess.run([*rlvr, "learner.lrr=1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "learner.lrr: unknown key" in done.stderr and "Traceback" not in done.stderr
