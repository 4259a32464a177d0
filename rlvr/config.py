"""The training configuration, validated once at start-up.

Hydra composes YAML from ``configs/`` (groups: model, data, algorithm, rollout, learner, cluster,
experiment); ``load_config`` turns the result into these pydantic models, so a typo or a wrong
type stops the job in well under a second with a message that names the key
(``learner.num_ranks: ...``). What can be derived is derived here, not asked for: the number of
sequences per step, the share of each learner rank (micro-batches follow from a token budget).
"""

from __future__ import annotations

import re
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if typing.TYPE_CHECKING:
    from rlvr.rollout.engine import SamplingParams


class ConfigError(ValueError):
    """A configuration mistake; the message names the key. Reported without a traceback."""


class _Strict(BaseModel):
    """Unknown keys, inf/nan and booleans where a number belongs (``steps=true``, which
    pydantic would read as 1) are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if isinstance(value, bool) and field is not None and not _accepts_bool(field.annotation):
                    raise ValueError(f"{key}: expected {_type_name(field.annotation)}, got {value!r}")
        return data


def _accepts_bool(annotation: Any) -> bool:
    if annotation in (bool, Any):
        return True
    args = typing.get_args(annotation)
    return any(_accepts_bool(a) for a in args) or (True in args or False in args)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


class ModelConfig(_Strict):
    path: str | None = None  # a checkpoint folder (ours or a Hugging Face Nemotron-H); wins over preset
    preset: str = "tiny"  # rlvr.model.PRESETS name, used when path is None
    overrides: dict[str, Any] = {}  # HybridConfig fields over the preset
    tokenizer: str = "byte"  # "byte" (rlvr.tokenizer.ByteTokenizer) or a Hugging Face name/path
    dtype: Literal["float32", "bfloat16"] = "float32"
    gradient_checkpointing: bool = False


class DataSource(_Strict):
    """One source of prompts; exactly one of path, hub, generator."""

    env: str = "math"  # the environment that scores this source's rows
    env_args: dict[str, Any] = {}  # keyword arguments of that environment (e.g. partial_credit)
    path: str | None = None  # .jsonl / .json / .parquet / datasets.save_to_disk folder
    hub: str | None = None  # a Hugging Face hub dataset name (where reachable)
    generator: str | None = None  # a task generator registered in the group rlvr.generators
    generator_args: dict[str, Any] = {}
    split: str = "train"
    size: int | None = Field(None, ge=1)  # rows to use (generator: rows to make)
    prompt_field: str = "prompt"
    fields: dict[str, str] = {}  # environment field -> dataset column
    weight: float = Field(1.0, gt=0)  # share in the mixture

    @model_validator(mode="after")
    def _one_origin(self):
        given = [k for k in ("path", "hub", "generator") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, hub, generator (got {given or 'none'})")
        return self


class DataConfig(_Strict):
    train: list[DataSource] = Field(min_length=1)
    # Empty: evaluation follows the training sources (rlvr.data.eval_plan): a generator's own
    # held-out split (its `holdout` argument), else this share of a source's rows, held out
    # (never trained on); holdout=0 runs no evaluation.
    eval: list[DataSource] = []
    holdout: float = Field(0.05, ge=0, lt=1)
    prompt_template: str = "{prompt}"  # format string over the row's fields
    # Prompts longer than the engine's context minus the generation budget: "drop" leaves them
    # out (counted and reported when the data is loaded), "error" stops the run before Ray starts.
    long_prompts: Literal["drop", "error"] = "drop"


class AlgorithmConfig(_Strict):
    """GRPO and its variants (see ``rlvr/grpo.py`` for the maths)."""

    name: Literal["grpo", "gspo"] = "grpo"  # (a label: the keys below make the algorithm)
    advantage: Literal["grpo", "dr_grpo"] = "grpo"
    group_size: int = Field(8, ge=2)  # samples per prompt
    clip_low: float = Field(0.2, ge=0, le=1)  # the ratio's floor is 1 - clip_low
    clip_high: float = Field(0.28, ge=0)  # >= clip_low; > clip_low is DAPO's clip-higher
    # token: each token's ratio is clipped (PPO, GRPO); sequence: one ratio per sequence, the
    # geometric mean of its token ratios (GSPO: algorithm=gspo)
    policy_ratio: Literal["token", "sequence"] = "token"
    aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    kl_coef: float = Field(0.0, ge=0)  # KL to the starting policy; 0 = off
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    kl_in_reward: bool = False  # subtract kl_coef * KL from the reward instead of adding it to the loss
    # Importance sampling for the engine/learner mismatch (rlvr.grpo.importance_weights): tis_cap
    # is the upper bound (truncate: the cap; mask: the upper threshold), None = no correction.
    tis_cap: float | None = Field(2.0, gt=0)
    is_mode: Literal["truncate", "mask"] = "truncate"  # mask: tokens/sequences out of [is_low, tis_cap] get no loss
    is_level: Literal["token", "sequence", "geometric"] = "token"  # whose ratio: each token's, the sequence's, its geometric mean
    is_low: float = Field(0.5, ge=0)  # mask mode's lower threshold
    # Asynchronous GRPO: rollouts of up to this many steps ahead are generated while the learner
    # trains; a sample from weights more than this many versions old is dropped. 0: synchronous.
    max_staleness: int = Field(0, ge=0)
    dynamic_sampling: bool = False  # drop groups with equal rewards and draw more prompts
    max_refills: int = Field(3, ge=0)  # extra rollout rounds dynamic sampling may spend per step
    overlong_buffer: int | None = Field(None, ge=1)  # soft penalty over the last N allowed tokens
    overlong_mask: bool = False  # leave truncated samples out of the loss
    epochs: int = Field(1, ge=1)  # optimiser passes over each batch
    # Routing replay for MoE policies (R3): the engines record the experts every MoE layer chose
    # for each token they read, and the learner's forward uses those experts, weighted by its own
    # router (which keeps learning). routing_metrics records them without replay, to measure
    # train/routing_agreement alone.
    routing_replay: Literal["none", "rollout"] = "none"
    routing_metrics: bool = False

    @property
    def records_routing(self) -> bool:
        """Whether the engines return their expert choices."""
        return self.routing_replay == "rollout" or self.routing_metrics

    @model_validator(mode="after")
    def _clip_range(self):
        if self.clip_high < self.clip_low:
            raise ValueError(f"clip_high: {self.clip_high} < clip_low = {self.clip_low} (clip-higher means "
                             "clip_high >= clip_low)")
        if self.is_mode == "mask" and (self.tis_cap is None or self.is_low >= self.tis_cap):
            raise ValueError(f"is_mode=mask keeps ratios in [is_low, tis_cap]: needs tis_cap > is_low (got "
                             f"is_low={self.is_low}, tis_cap={self.tis_cap})")
        return self

    @property
    def proximal(self) -> bool:
        """Whether the learner recomputes the proximal log-probabilities in a pass of their own
        before its update: for masked importance sampling (the rejected tokens leave the loss
        before it is normalised). Otherwise the loss's own forward is the proximal policy
        (nothing has stepped yet within the update; with ``epochs`` > 1 each rank runs its own
        pass), stale samples included, and truncation is applied inside the loss."""
        return self.is_mode == "mask"


class SamplingConfig(_Strict):
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_tokens: int = Field(64, ge=1)
    stop: list[str] = []

    def params(self, n: int, seed: int, **records) -> SamplingParams:
        """The engines' ``SamplingParams`` for ``n`` samples per prompt; ``records``: what the
        engines return besides the samples (routed_experts, prefill_logprobs)."""
        from rlvr.rollout.engine import SamplingParams  # (torch: not needed to read a config)

        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              max_tokens=self.max_tokens, stop=tuple(self.stop), n=n, seed=seed, **records)


class RolloutConfig(_Strict):
    engine: Literal["builtin", "vllm"] = "builtin"
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1, ge=0)  # Ray resources of each worker actor
    gpus_per_worker: float = Field(0, ge=0)
    resources: dict[str, float] = {}  # custom Ray resources (e.g. a node label)
    threads: int = Field(2, ge=1)  # torch threads in each worker
    max_batch: int = Field(1024, ge=1)  # sequences decoded together
    # Prompt + response tokens an engine holds per sequence; None: the model's max_position_embeddings.
    max_model_len: int | None = Field(None, ge=2)
    sampling: SamplingConfig = SamplingConfig()
    eval_sampling: SamplingConfig = SamplingConfig(temperature=0.0)
    vllm_kwargs: dict[str, Any] = {}
    # The engines' dtype; None: model.dtype. bfloat16 on CPU is supported (the builtin engine
    # computes in bf16, the SSM state stays fp32): the precision gap a GPU run has, on this machine.
    dtype: Literal["float32", "bfloat16"] | None = None
    # Weight sync to the rollout workers travels in chunks (buckets) of at most this many bytes.
    sync_bucket_bytes: int = Field(64 * 1024**2, ge=1)
    # How: "collective", in memory over a process group of the learner's rank 0 and every engine
    # process (gloo on CPUs, NCCL on GPUs; shared memory where they share a node); "disk", the slow
    # path, through Ray's object store and, for vLLM, a checkpoint folder it reloads.
    weight_transfer: Literal["collective", "disk"] = "collective"
    # Rollouts inside the learner ranks, from a builtin engine over the module they train (a
    # "hybrid engine"): no rollout workers (num_workers, their resources and threads are unused:
    # the ranks' learner.threads serve), no second copy of the weights, no weight sync. Builtin
    # engine, ZeRO stage <= 2.
    colocate: bool = False
    # Every this many steps (and at the first), the engines also score their samples by one
    # prefill forward: rollout/prefill_decode_gap, the log-prob gap between the prefill path (the
    # learner's: Mamba's chunked scan) and the decode path (the recurrence) on the same weights.
    # 0: never. Costs one forward over the step's samples; single-turn samples, builtin engine.
    prefill_gap_every: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _responses_fit(self):
        for key in ("sampling", "eval_sampling"):
            if self.max_model_len is not None and getattr(self, key).max_tokens >= self.max_model_len:
                raise ValueError(f"{key}.max_tokens: {getattr(self, key).max_tokens} leaves no room for a prompt "
                                 f"within max_model_len = {self.max_model_len}")
        return self


class LearnerConfig(_Strict):
    num_ranks: int = Field(1, ge=1)  # DeepSpeed data-parallel ranks, one Ray actor each
    cpus_per_rank: float = Field(1, ge=0)
    gpus_per_rank: float = Field(0, ge=0)
    resources: dict[str, float] = {}
    threads: int = Field(2, ge=1)  # torch threads in each rank
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    dist_backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl with GPUs, else gloo
    zero_stage: Literal[0, 1, 2, 3] = 0
    # Elements in each of DeepSpeed's ZeRO buffers: gradient reduce buckets, all-gather buckets
    # and, under ZeRO-3, parameters kept gathered and prefetched, and the optimizer's sub-groups
    # (each stepped through its own fp32 gradient copy). DeepSpeed's defaults (5e8-1e9) hold up
    # to a whole 1B model in them; memory per rank grows with this, speed barely (rlvr plan).
    zero_bucket_elements: int = Field(100_000_000, ge=1_000_000)
    bf16: bool = False
    # Tokens per forward/backward on one rank: sequences are packed into rows (no padding) and
    # cut into micro-batches of at most this many tokens; accumulation follows from it.
    max_tokens_per_micro_batch: int = Field(16384, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)  # each in [0, 1)
    eps: float = Field(1e-8, gt=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    freeze_router: bool = True  # MoE routers frozen during RL, as NeMo RL does

    @model_validator(mode="after")
    def _betas_in_range(self):
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas: each must be in [0, 1), got {list(self.betas)}")
        return self


class SFTConfig(_Strict):
    """A supervised warm start, run before RL when the run has no starting checkpoint yet
    (``model.path`` unset): the model of ``model.preset`` learns the demonstrations of ``data``
    (rows with a prompt and a response) for ``seconds`` (or ``steps``), and RL starts from the
    checkpoint it reaches, saved as <output_dir>/sft."""

    data: DataSource
    response_field: str = "response"
    seconds: float | None = Field(180.0, gt=0)
    steps: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)


class RewardConfig(_Strict):
    workers: int = Field(2, ge=1)  # scoring processes per environment
    timeout: float = Field(10.0, gt=0)  # seconds per response; slower ones are killed, reward 0


class ClusterConfig(_Strict):
    address: str | None = None  # None: start Ray here; "auto" or "ray://host:10001": join a cluster
    num_cpus: int | None = Field(None, ge=1)  # logical CPUs of a Ray started here
    namespace: str = "rlvr"


class LoggingConfig(_Strict):
    tensorboard: bool = True
    jsonl: bool = True
    wandb_project: str | None = None  # W&B when installed and set
    progress: bool = True
    plot: bool = True  # reward curve PNG at the end


class GateConfig(_Strict):
    """A bound on a per-step metric (``rlvr.training.gates``)."""

    metric: str  # a metric as metrics.jsonl names it, e.g. reward/judge/fallback_share
    above: float | None = None  # trips when the window's mean is above this ...
    below: float | None = None  # ... or below this (exactly one of the two)
    window: int = Field(5, ge=1)  # steps (that log the metric) averaged
    action: Literal["warn", "stop"] = "stop"

    @model_validator(mode="after")
    def _one_bound(self):
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of above and below")
        return self


class Config(_Strict):
    # the run's name: outputs/<name> holds its checkpoints and logs (a folder name, not a path)
    name: str = Field("default", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.,=+-]*$")
    seed: int = 0
    steps: int = Field(100, ge=1)
    prompts_per_step: int = Field(64, ge=1)
    time_limit: float | None = Field(None, gt=0)  # seconds of training; then evaluate and stop
    eval_every: int = Field(0, ge=0)  # steps between evaluations (0: only before and after)
    eval_prompts: int | None = Field(None, ge=1)  # held-out prompts per evaluation (None: all)
    checkpoint_every: int = Field(25, ge=0)  # 0: only at the end
    keep_checkpoints: int = Field(2, ge=1)
    # Continue from the newest checkpoint in the output directory; a relaunch with a changed
    # config is refused unless "force".
    resume: bool | Literal["force"] = True
    output_dir: str | None = None  # default: Hydra's run directory
    model: ModelConfig = ModelConfig()
    data: DataConfig
    algorithm: AlgorithmConfig = AlgorithmConfig()
    rollout: RolloutConfig = RolloutConfig()
    learner: LearnerConfig = LearnerConfig()
    sft: SFTConfig | None = None
    reward: RewardConfig = RewardConfig()
    cluster: ClusterConfig = ClusterConfig()
    logging: LoggingConfig = LoggingConfig()
    # bounds on per-step metrics that warn or stop the run; by default a judge whose answers hold
    # no verdict on more than half of its comparisons for 5 steps stops it
    gates: list[GateConfig] = [GateConfig(metric="reward/judge/fallback_share", above=0.5, window=5)]

    @model_validator(mode="after")
    def _batch_sizes_divide(self):
        seqs, ranks = self.sequences_per_step, self.learner.num_ranks
        if seqs % ranks:
            raise ValueError(f"prompts_per_step x algorithm.group_size = {seqs} sequences do not split "
                             f"over learner.num_ranks = {ranks}")
        if self.algorithm.kl_in_reward and not self.algorithm.kl_coef:
            raise ValueError("algorithm.kl_in_reward needs algorithm.kl_coef > 0")
        if self.rollout.colocate and self.rollout.engine != "builtin":
            raise ValueError("rollout.colocate: needs rollout.engine=builtin (vLLM runs in processes of its own)")
        if self.rollout.colocate and self.learner.zero_stage == 3:
            raise ValueError("rollout.colocate: needs learner.zero_stage <= 2 (ZeRO-3 splits every parameter over "
                             "the ranks; the engine needs them whole)")
        if self.rollout.colocate and self.rollout.dtype not in (None, "bfloat16" if self.learner.bf16 else "float32"):
            raise ValueError(f"rollout.dtype: {self.rollout.dtype} differs from the learner's, but colocated rollouts "
                             "(rollout.colocate=true) sample from the learner's own weights")
        if self.rollout.colocate and self.algorithm.max_staleness:
            raise ValueError("algorithm.max_staleness: needs rollout workers of their own (rollout.colocate=true "
                             "samples on the learner's ranks: rollouts and learning cannot overlap there)")
        if self.rollout.prefill_gap_every and self.rollout.engine != "builtin":
            raise ValueError("rollout.prefill_gap_every: the prefill scores come from rollout.engine=builtin only")
        if self.algorithm.records_routing and self.rollout.engine != "builtin":
            raise ValueError("algorithm.routing_replay / routing_metrics: the expert choices come from "
                             "rollout.engine=builtin only (rlvr does not read vLLM's routed experts yet: "
                             "docs/training.md, MoE routing)")
        if self.rollout.sampling.temperature == 0:
            raise ValueError(f"rollout.sampling.temperature: 0 is greedy: the {self.algorithm.group_size} samples "
                             "of a group would be identical, their advantages zero, and nothing learnt")
        return self

    # -- derived
    @property
    def sequences_per_step(self) -> int:
        return self.prompts_per_step * self.algorithm.group_size

    @property
    def rollout_dtype(self) -> str:
        """The rollout engines' dtype: rollout.dtype, else model.dtype."""
        return self.rollout.dtype or self.model.dtype

    @property
    def sequences_per_rank(self) -> int:
        return self.sequences_per_step // self.learner.num_ranks


def load_config(data: dict[str, Any]) -> Config:
    """Validate a plain dict (a composed Hydra config); raise ``ConfigError`` naming each bad key."""
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err)) from None


def format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if p not in ("bool", "literal['force']")]
        key = ".".join(loc)
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unknown key (a typo?)"
        elif e["type"] == "string_pattern_mismatch" and key == "name":
            message = f"{e['input']!r} is not a folder name (letters, digits and _ . , = + - only; no '/')"
        elif key == "resume":
            message = f"expected true, false or force, got {e['input']!r}"
        elif e["type"] == "value_error" and (m := re.match(r"^([A-Za-z_][\w.]*): (.*)$", message, re.S)):
            # a model-level check naming its own key, relative to where it runs
            key, message = ".".join(filter(None, [key, m.group(1)])), m.group(2)
        lines.append(f"{key or 'config'}: {message}")
    lines = list(dict.fromkeys(lines))
    return lines[0] if len(lines) == 1 else "invalid configuration:\n  " + "\n  ".join(lines)
