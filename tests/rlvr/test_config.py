"""Configuration validation: every mistake names its key, and rlvr-train stops fast."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlvr.config import Config, ConfigError, load_config

DATA = {"train": [{"generator": "addition"}]}


def test_sampling_config_maps_to_the_engines_sampling_params():
    cfg = load_config({"data": DATA, "rollout": {"sampling": {"temperature": 0.7, "top_k": 5, "stop": ["\n"]}}})
    params = cfg.rollout.sampling.params(n=4, seed=9)
    assert (params.temperature, params.top_k, params.stop, params.n, params.seed) == (0.7, 5, ("\n",), 4, 9)
    assert params.max_tokens == cfg.rollout.sampling.max_tokens
    assert not params.routed_experts and cfg.rollout.sampling.params(n=1, seed=0, routed_experts=True).routed_experts
    assert not cfg.algorithm.records_routing
    assert load_config({"data": DATA, "algorithm": {"routing_metrics": True}}).algorithm.records_routing


def test_defaults_and_derived_batch_arithmetic():
    cfg = load_config({"data": DATA, "prompts_per_step": 16, "algorithm": {"group_size": 4},
                       "learner": {"num_ranks": 2}})
    assert cfg.sequences_per_step == 64 and cfg.sequences_per_rank == 32


@pytest.mark.parametrize("overrides,key", [
    ({"learner": {"lr": "fast"}}, "learner.lr"),
    ({"learner": {"zero_stage": 5}}, "learner.zero_stage"),
    ({"learner": {"micro_batch_sise": 4}}, "learner.micro_batch_sise: unknown key"),
    ({"rollout": {"sampling": {"temperature": -1}}}, "rollout.sampling.temperature"),
    ({"data": {"train": [{"generator": "addition", "path": "x.jsonl"}]}}, "data.train.0: give exactly one of"),
    ({"prompts_per_step": 10, "learner": {"num_ranks": 3}}, "learner.num_ranks = 3"),
    ({"learner": {"max_tokens_per_micro_batch": 0}}, "learner.max_tokens_per_micro_batch"),
    ({"rollout": {"max_model_len": 64, "sampling": {"max_tokens": 64}}}, "rollout.sampling.max_tokens: 64 leaves"),
    ({"algorithm": {"max_staleness": -1}}, "algorithm.max_staleness"),
    ({"algorithm": {"max_staleness": 1}, "rollout": {"colocate": True}}, "algorithm.max_staleness: needs rollout workers"),
    ({"algorithm": {"is_mode": "mask", "is_low": 2.5}}, "algorithm: is_mode=mask keeps ratios in [is_low, tis_cap]"),
    ({"algorithm": {"is_mode": "mask", "tis_cap": None}}, "needs tis_cap > is_low"),
    ({"algorithm": {"is_level": "batch"}}, "algorithm.is_level"),
    ({"algorithm": {"policy_ratio": "group"}}, "algorithm.policy_ratio"),
    ({"rollout": {"dtype": "float16"}}, "rollout.dtype"),
    ({"rollout": {"dtype": "bfloat16", "colocate": True}}, "rollout.dtype: bfloat16 differs from the learner's"),
    ({"algorithm": {"routing_replay": "learner"}}, "algorithm.routing_replay"),
    ({"algorithm": {"routing_replay": "rollout"}, "rollout": {"engine": "vllm"}}, "algorithm.routing_replay / routing_metrics"),
    ({"algorithm": {"routing_metrics": True}, "rollout": {"engine": "vllm"}}, "rollout.engine=builtin only"),
    ({"rollout": {"prefill_gap_every": 5, "engine": "vllm"}}, "rollout.prefill_gap_every"),
])
def test_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config({"data": DATA} | overrides)
    assert key in str(err.value), str(err.value)


def test_the_learner_recomputes_the_proximal_policy_only_where_the_objective_needs_it():
    def proximal(**algorithm):
        return load_config({"data": DATA, "algorithm": algorithm}).algorithm.proximal

    # truncation, at any level: the loss's own forward is the proximal policy (stale samples too)
    assert not proximal() and not proximal(epochs=3) and not proximal(max_staleness=2)
    assert not proximal(is_level="geometric") and not proximal(is_level="sequence")
    assert proximal(is_mode="mask") and proximal(is_mode="mask", is_level="geometric")


def _train(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "rlvr-train"
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args,needle", [
    (["prompts_per_step=5", "algorithm.group_size=3", "learner.num_ranks=2"], "learner.num_ranks = 2"),
    (["learner.lr=fast"], "learner.lr"),
    (["+learner.typo=1"], "learner.typo: unknown key"),
    (["learner.typo=1"], "learner.typo: unknown key"),
])
def test_rlvr_train_rejects_a_bad_config_quickly_without_traceback(args, needle, tmp_path):
    start = time.monotonic()
    done = _train(*args, f"hydra.run.dir={tmp_path}")
    elapsed = time.monotonic() - start
    assert done.returncode != 0
    assert needle in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert elapsed < 5, f"took {elapsed:.1f} s"


def test_the_shipped_configs_compose_and_validate():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(str(configs), version_base="1.3"):
        for overrides in ([], ["algorithm=dapo"], ["algorithm=dr_grpo"], ["algorithm=gspo"], ["learner=zero2_2ranks"],
                          ["experiment=two_node"], ["experiment=nano_gpu", "model.path=/models/nano"],
                          ["experiment=sql"], ["experiment=code"], ["experiment=tir"], ["experiment=tir_no_tool"]):
            cfg = compose("config", overrides=overrides)
            assert isinstance(load_config(OmegaConf.to_container(cfg, resolve=True)), Config), overrides
