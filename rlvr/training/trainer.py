"""The single-controller GRPO loop.

One driver process owns the plan; the work runs elsewhere:

    prompts (PromptStream) -> rollouts (RolloutPool: Ray actors) -> rewards (environment scorers:
    worker processes with hard timeouts) -> advantages (rlvr.grpo) -> update (LearnerGroup:
    DeepSpeed ranks in Ray actors) -> weight sync (learner -> rollout workers, bucketed)
    -> metrics (JSONL, TensorBoard, W&B) -> checkpoint

Every step's sampling seed derives from (seed, step), and a checkpoint holds the learner's
DeepSpeed state (model, optimizer, LR schedule) plus the prompt stream's position and the
driver's RNG states, so a run killed with ``kill -9`` and launched again continues from its last
checkpoint and produces the same numbers an uninterrupted run would.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import ray
import torch

from rlvr import grpo, runtime
from rlvr.config import Config, ConfigError
from rlvr.data import Prompt, PromptStream, fitting_prompts, split_prompts
from rlvr.training.ahead import PoolGate, RolloutsAhead, StepRollouts, fresh_groups, staleness, staleness_metrics
from rlvr.training.gates import Gates, GateTripped
from rlvr.training.interrupt import Interrupted, StopRequest
from rlvr.training.learner import LearnerGroup, TrainBatch
from rlvr.training.packing import right_pad
from rlvr.collect import Collector, episode_metrics, eval_seed, sampling_seed
from rlvr.rollout.engine import Completion
from rlvr.rollout.workers import EngineSpec, RolloutPool
from rlvr.scoring import open_scorer
from rlvr.tokenizer import make_tokenizer
from rlvr.training.tracking import MetricsLogger, plot_reward_curve

log = logging.getLogger(__name__)


def build_batch(completions: list[Completion], pad_id: int, masks: list[list[int]] | None = None) -> TrainBatch:
    """Completions -> right-padded (prompt + response) ids, the mask of generated tokens and the
    engine's log-probabilities, aligned with the next-token targets. Advantages are zero here.
    ``masks``: per response token, 1 where the model generated it (an episode's observations are
    0: no loss, no KL there); default all ones."""
    ids, mask, lengths = right_pad([c.prompt_ids for c in completions], [c.token_ids for c in completions], pad_id,
                                   masks)
    masks = masks or [[1] * len(c.token_ids) for c in completions]
    generated = [lp for c, m in zip(completions, masks) for lp, keep in zip(c.logprobs, m) if keep]
    engine_logp = torch.zeros_like(mask).masked_scatter_(mask.bool(), torch.tensor(generated, dtype=mask.dtype))
    return TrainBatch(ids, mask, torch.zeros(len(completions)), engine_logp, lengths,
                      experts=routing_records(completions, mask.shape[1]))


def routing_records(completions: list[Completion], width: int) -> torch.Tensor | None:
    """The engines' expert choices in the batch's token layout, (B, width, MoE layers, top_k):
    position j holds the experts of input token j (-1 where there is no record), or None when
    no completion has them."""
    recorded = [c.experts for c in completions if c.experts is not None]
    if not recorded:
        return None
    out = torch.full((len(completions), width, *recorded[0].shape[1:]), -1, dtype=recorded[0].dtype)
    for row, c in enumerate(completions):
        if c.experts is not None:
            n = min(len(c.experts), width)
            out[row, :n] = c.experts[:n]
    return out


def prefill_gap(completions: list[Completion]) -> dict[str, float]:
    """|prefill - decode| log-probabilities of the samples an engine scored both ways
    (``SamplingParams.prefill_logprobs``): mean and max over their tokens; {} when none was."""
    gaps = [abs(p - d) for c in completions if c.prefill_logprobs is not None
            for p, d in zip(c.prefill_logprobs, c.logprobs)]
    if not gaps:
        return {}
    return {"rollout/prefill_decode_gap": sum(gaps) / len(gaps), "rollout/prefill_decode_gap_max": max(gaps)}


def longest_turn(mask: list[int]) -> int:
    """The most tokens the model generated in one turn (a run of ones in an episode's mask)."""
    best = run = 0
    for m in mask:
        run = run + 1 if m else 0
        best = max(best, run)
    return best


def _open_scorer(env: str, env_kwargs: dict, workers: int, timeout: float):
    return open_scorer(env, workers=workers, timeout=timeout, env_kwargs=env_kwargs)


def context_length(cfg: Config) -> int:
    """Prompt + response tokens an engine holds: rollout.max_model_len, else the model's
    max_position_embeddings (of model.path's checkpoint, or of the preset)."""
    if cfg.rollout.max_model_len is not None:
        return cfg.rollout.max_model_len
    if "max_position_embeddings" in cfg.model.overrides:
        return int(cfg.model.overrides["max_position_embeddings"])
    if cfg.model.path is not None:
        return int(json.loads((Path(cfg.model.path).expanduser() / "config.json").read_text())["max_position_embeddings"])
    from rlvr.model.config import PRESETS

    return PRESETS[cfg.model.preset]().max_position_embeddings


class Trainer:
    def __init__(self, cfg: Config, output_dir: Path):
        self.cfg = cfg
        self.out = Path(output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir = self.out / "checkpoints"
        self.started = time.monotonic()
        self.wall_before = 0.0  # wall seconds of earlier launches of this run (from its checkpoint)
        self.step = 0
        self.evals: list[tuple[int, float]] = []
        self.train_seconds = 0.0
        self.stop = StopRequest()
        self.gates = Gates(cfg.gates)
        # Made by setup() (data, warm start, Ray actors); None until then, so shutdown() after a
        # failed setup closes what exists.
        self.tokenizer = None
        self.pad_id: int | None = None
        self.stream: PromptStream | None = None
        self.eval_prompts: list[Prompt] = []
        self.eval_source = ""  # where the held-out prompts come from (data.eval_plan)
        self.start_checkpoint: str | None = None
        self.collector: Collector | None = None
        self.learner: LearnerGroup | None = None
        self.pool: RolloutPool | None = None
        self.gate: PoolGate | None = None  # the pool, one caller at a time (rollouts ahead vs weight updates)
        self.collect_lock = threading.Lock()  # one collection at a time (the scorers serve one)
        self.ahead: RolloutsAhead | None = None  # (algorithm.max_staleness >= 1)
        self.metrics: MetricsLogger | None = None

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Everything that can fail on the user's input (data, warm start) runs before Ray."""
        cfg = self.cfg
        self.tokenizer = make_tokenizer(cfg.model.tokenizer)
        self.pad_id = getattr(self.tokenizer, "pad_token_id", None) or self.tokenizer.eos_token_id
        self._load_prompts()
        self.start_checkpoint = self._starting_checkpoint()
        self.stop.check("before Ray started")
        self._start_ray()
        self.stop.install()
        keys = {p.scorer_key for source in self.stream.sources for p in source} | {p.scorer_key for p in self.eval_prompts}
        scorer = functools.partial(_open_scorer, workers=cfg.reward.workers, timeout=cfg.reward.timeout)
        rc = cfg.rollout
        spec = EngineSpec(self.start_checkpoint, backend=rc.engine, tokenizer=cfg.model.tokenizer, max_batch=rc.max_batch,
                          max_model_len=rc.max_model_len,
                          dtype=cfg.rollout_dtype, threads=rc.threads, vllm_kwargs=tuple(rc.vllm_kwargs.items()))
        self.learner = LearnerGroup(cfg, self.start_checkpoint)
        self.stop.check("while the actors started")
        self.pool = RolloutPool(spec, num_workers=rc.num_workers, num_cpus=rc.cpus_per_worker,
                                num_gpus=rc.gpus_per_worker, resources=rc.resources,
                                weights=self.learner, transport=rc.weight_transfer, bucket_bytes=rc.sync_bucket_bytes,
                                colocated=self.learner.ranks if rc.colocate else None)
        self.gate = PoolGate(self.pool)
        self.collector = Collector(self.gate, keys, scorer)
        resumed = self._resume()
        self.metrics = MetricsLogger(cfg.logging, self.out, cfg.name, cfg.model_dump(), resume_step=self.step)
        if resumed:
            self.gate.update_weights()

    def _load_prompts(self) -> None:
        cfg = self.cfg
        train, evals, self.eval_source = split_prompts(cfg)
        context = context_length(cfg)
        fit = functools.partial(fitting_prompts, tokenizer=self.tokenizer, context=context, strict=cfg.data.long_prompts == "error")
        train = [fit(prompts, budget=cfg.rollout.sampling.max_tokens, where=f"data.train.{i}",
                     setting="rollout.sampling.max_tokens") for i, prompts in enumerate(train)]
        self.eval_prompts = fit(evals, budget=cfg.rollout.eval_sampling.max_tokens, where="held-out",
                                setting="rollout.eval_sampling.max_tokens") if evals else []
        self.stream = PromptStream(train, [s.weight for s in self.cfg.data.train], self.cfg.seed)

    def _start_ray(self) -> None:
        from rlvr.training.preflight import check_cluster_resources

        if ray.is_initialized():
            return
        c = self.cfg.cluster
        kwargs = dict(namespace=c.namespace, include_dashboard=False, log_to_driver=False, configure_logging=False)
        if c.address is None:
            kwargs["num_cpus"] = c.num_cpus
        elif c.num_cpus is not None:
            log.info("cluster.num_cpus=%s is not used: the Ray cluster at %s has its own resources", c.num_cpus, c.address)
        try:
            # "local": a Ray of this job's own, even when a `ray start` cluster runs on this machine
            # (plain ray.init() would join that one, and refuse num_cpus)
            ray.init(address=c.address or "local", **kwargs)
        except (ConnectionError, TimeoutError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"cluster.address: no Ray cluster reachable at {c.address!r} ({first}). Start one with "
                              "`ray start --head`, or leave cluster.address unset to start Ray inside the job") from None
        if c.address is not None:
            check_cluster_resources(self.cfg, ray.nodes())

    def _starting_checkpoint(self) -> str:
        """model.path, or the SFT warm start (run now unless an earlier launch already did), or
        a fresh model of model.preset. The log says which."""
        cfg = self.cfg
        if cfg.model.path is not None:
            log.info("starting from model.path=%s (no warm start)", cfg.model.path)
            return cfg.model.path
        from rlvr.training.sft import build_model, run_sft

        if cfg.sft is None:
            log.info("no warm start (sft is unset): starting from a fresh %r model", cfg.model.preset)
            # Saved once (in initial/: no SFT ran), so that every actor and every relaunch loads
            # the same weights.
            initial = self.out / "initial"
            if not (initial / "config.json").exists():
                torch.manual_seed(cfg.seed)
                build_model(cfg.model, self.tokenizer).save(initial)
            return str(initial)
        target = self.out / "sft"
        if (target / "sft.json").exists():
            log.info("warm start: the SFT checkpoint of an earlier launch, %s", target)
            return str(target)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, self.tokenizer)
        log.info("warm start: SFT of a fresh %r model (%s parameters) on sft.data, %s", cfg.model.preset,
                 f"{model.num_parameters():,}", f"{cfg.sft.seconds:.0f} s" if cfg.sft.seconds else f"{cfg.sft.steps} steps")
        stats = run_sft(model, cfg.sft, self.tokenizer, target, cfg.seed, progress=cfg.logging.progress,
                        stop=self.stop.check)
        log.info("SFT done: %s", stats)
        return str(target)

    def _start_kind(self) -> str:
        if self.cfg.model.path is not None:
            return "model.path"
        return "fresh model.preset (no warm start)" if self.cfg.sft is None else "SFT warm start"

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        """The whole run; raises ``Interrupted`` after a SIGINT/SIGTERM, with a checkpoint of the
        last finished step written."""
        from tqdm import tqdm

        finished = self._finished_summary()
        if finished is not None:
            return finished
        with self.stop:
            try:
                self.setup()
                runtime.settle()  # what setup built lives as long as the run
                if not self.evals:
                    self.evals.append((self.step, self.evaluate()["eval/accuracy"]))
                if self.cfg.algorithm.max_staleness:
                    self.ahead = RolloutsAhead(self._collect, self._driver_state, self.step, self.cfg.steps,
                                               self.cfg.algorithm.max_staleness)
                with tqdm(total=self.cfg.steps, initial=self.step, desc="GRPO", unit="step",
                          disable=not self.cfg.logging.progress) as bar:  # closed on a stop too: no glued lines
                    while self.step < self.cfg.steps and not self._out_of_time():
                        self.stop.check(f"step {self.step}")
                        self._one_step(bar)
                if self.evals[-1][0] != self.step:
                    final = self.evaluate()
                    self.evals.append((self.step, final["eval/accuracy"]))
                    self.metrics.log(self.step, final)
                self.save_checkpoint()
                return self.finish()
            except (Interrupted, GateTripped):
                if self.step > 0 and self.learner is not None:
                    self.save_checkpoint()
                raise
            finally:
                self.shutdown()

    def _one_step(self, bar) -> None:
        started = time.monotonic()
        metrics = self.train_step()
        self.train_seconds += time.monotonic() - started
        self.step += 1
        if self.cfg.eval_every and self.step % self.cfg.eval_every == 0 and self.step < self.cfg.steps:
            metrics.update(self.evaluate())
            self.evals.append((self.step, metrics["eval/accuracy"]))
        self.metrics.log(self.step, metrics)
        self.gates.check(self.step, metrics)
        bar.update(1)
        # the held-out accuracy shown is the last evaluation's, labelled by its step
        bar.set_postfix({"reward": f"{metrics['reward/mean']:.3f}",
                         f"held-out@{self.evals[-1][0]}": f"{self.evals[-1][1]:.3f}"})
        if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
            self.save_checkpoint()

    def _finished_summary(self) -> dict | None:
        """The summary of this run if an earlier launch already finished it (same config): a
        relaunch then changes nothing, its record included."""
        path, pointer = self.out / "summary.json", self.ckpt_dir / "resume_from"
        if not (self.cfg.resume and path.exists() and pointer.exists()):
            return None
        summary = json.loads(path.read_text())
        if pointer.read_text().strip() != f"step_{summary['steps']:06d}":
            return None
        limit = self.cfg.time_limit
        done = summary["steps"] >= self.cfg.steps or (limit is not None and summary["train_seconds"] >= limit)
        if done:
            log.info("%s finished earlier (%d steps): nothing to do", self.out, summary["steps"])
        return summary if done else None

    def _out_of_time(self) -> bool:
        return self.cfg.time_limit is not None and self.train_seconds >= self.cfg.time_limit

    def train_step(self) -> dict[str, float]:
        t = {"start": time.monotonic()}
        busy = self.gate.busy
        got = self._rollouts()
        t["wait"] = time.monotonic() - t["start"]
        t["rollout"] = got.stats.pop("rollout_seconds")
        t["reward"] = got.stats.pop("reward_seconds")
        got = self._fresh(got)
        completions, masks, rewards, stats = got.completions, got.masks, got.rewards, got.stats
        batch = build_batch(completions, self.pad_id, masks)
        alg = self.cfg.algorithm
        truncated = torch.tensor([c.finish_reason == "length" for c in completions])
        # the overlong shaping looks at one generation: an episode's longest turn
        lengths = torch.tensor([longest_turn(m) for m in masks])
        beta, _ = grpo.kl_placement(alg.kl_coef, alg.kl_in_reward)
        kl = grpo.KL_ESTIMATORS[alg.kl_estimator](batch.engine_logp, self.learner.reference_logprobs(batch)) if beta else None
        shaped, batch.mask = grpo.shape_rewards(
            rewards, lengths, truncated, batch.mask, self.cfg.rollout.sampling.max_tokens,
            overlong_buffer=alg.overlong_buffer, overlong_mask=alg.overlong_mask, kl_per_token=kl, kl_beta=beta)
        batch.advantages = grpo.ADVANTAGE_ESTIMATORS[alg.advantage](shaped, alg.group_size)
        before = time.monotonic()
        if alg.proximal:
            stats.update(self._proximal(batch))
        learner_metrics = self.learner.train(batch)
        t["learn"] = time.monotonic() - before
        before = time.monotonic()
        self.gate.update_weights()
        if self.ahead is not None:
            self.ahead.synced(self.step)
        t["sync_wait"] = self.gate.waited
        t["sync"] = time.monotonic() - before - t["sync_wait"]
        t["step"] = time.monotonic() - t["start"]
        metrics = self._step_metrics(got.prompts, rewards, lengths, truncated, learner_metrics, stats, t)
        # The overlap achieved: the shares of this step's wall time the engines spent generating
        # and the learner spent learning (both near 1: each waits for nothing).
        metrics["overlap/rollout_busy"] = (self.gate.busy - busy) / max(t["step"], 1e-9)
        metrics["overlap/learner_busy"] = t["learn"] / max(t["step"], 1e-9)
        return metrics

    def _rollouts(self) -> StepRollouts:
        """This step's samples: collected now (synchronous), or taken from the rollouts ahead."""
        if self.ahead is not None:
            return self.ahead.take(self.step, lambda: self.stop.check(f"step {self.step}"))
        before_step = self._driver_state()
        got = self._collect(self.step)
        if self.stop.requested:
            # Nothing has reached the learner: abandon the step, as if it had not begun.
            self._load_driver_state(before_step)
            self.stop.check(f"step {self.step}")
        return got

    def _fresh(self, got: StepRollouts) -> StepRollouts:
        """The groups whose samples are at most ``max_staleness`` weight updates old (the rest
        are dropped, counted) and, with rollouts ahead, the staleness of those trained on."""
        k, G = self.cfg.algorithm.max_staleness, self.cfg.algorithm.group_size
        if not k:
            return got
        lag = staleness(got.completions, self.gate.version)
        keep = fresh_groups(lag, G, k)
        if not keep.any():
            raise RuntimeError(f"step {self.step}: every sample is more than {k} weight updates old")
        rows = keep.repeat_interleave(G)
        kept = [i for i in range(len(rows)) if rows[i]]
        got.stats.update(staleness_metrics(lag[rows], int((~rows).sum()), k))
        return StepRollouts(got.step, [p for p, on in zip(got.prompts, keep) if on], [got.completions[i] for i in kept],
                            [got.masks[i] for i in kept], got.rewards[rows], got.stats)

    def _proximal(self, batch) -> dict[str, float]:
        """The decoupled objective: the learner's current log-probabilities (the proximal policy)
        and the importance weights against the engine's; rejected tokens leave the mask before
        the loss is normalised. Returns the ratios' statistics."""
        alg = self.cfg.algorithm
        prox = self.learner.proximal_logprobs(batch)
        ratio = grpo.importance_ratios(prox, batch.engine_logp, batch.mask, alg.is_level)
        # (masked IS: the config guarantees tis_cap, its upper threshold)
        weights, keep = grpo.importance_weights(prox, batch.engine_logp, batch.mask, alg.is_mode, alg.is_level,
                                                alg.is_low, alg.tis_cap)
        out = grpo.importance_metrics(ratio, weights, keep, batch.mask, alg.is_mode, alg.tis_cap)
        batch.mask = batch.mask * keep.to(batch.mask.dtype)
        batch.old_logp, batch.is_weights = prox, weights
        return out

    def _collect(self, step: int) -> StepRollouts:
        """Prompts x group_size samples (completions or episodes), their masks and rewards, for
        ``step``. With dynamic sampling, groups whose rewards are all equal are dropped and more
        prompts drawn (up to ``max_refills`` rounds); if still short, uninformative groups fill
        the batch (their advantage is zero)."""
        cfg, G = self.cfg, self.cfg.algorithm.group_size
        want = cfg.prompts_per_step
        kept, spare, episodes = [], [], []
        stats = {"rollout_seconds": 0.0, "reward_seconds": 0.0, "rounds": 0, "scoring_failures": 0}
        for round_ in range(cfg.algorithm.max_refills + 1 if cfg.algorithm.dynamic_sampling else 1):
            with self.collect_lock:
                prompts = self.stream.next(want - len(kept))
                got = self.collector.collect(prompts, G, cfg.rollout.sampling, sampling_seed(cfg.seed, step, round_),
                                             **self._records(step))
            samples, masks, rewards = got.samples, got.masks, got.rewards
            for key in ("rollout_seconds", "reward_seconds", "scoring_failures"):
                stats[key] += getattr(got, key)
            for name, values in got.info_metrics.items():
                stats.setdefault("info", {}).setdefault(name, []).extend(values)
            episodes += got.episodes
            stats["rounds"] += 1
            informative = grpo.informative_groups(rewards, G) if cfg.algorithm.dynamic_sampling else None
            for g, prompt in enumerate(prompts):
                part = slice(g * G, (g + 1) * G)
                group = (prompt, samples[part], masks[part], rewards[part])
                (kept if informative is None or informative[g] else spare).append(group)
            if len(kept) >= want:
                break
        stats["informative_groups"] = len(kept) / want
        stats.update(episode_metrics(episodes))
        kept = (kept + spare)[:want]
        stats.update(prefill_gap([c for _, cs, _, _ in kept for c in cs]))
        return StepRollouts(step, [p for p, _, _, _ in kept], [c for _, cs, _, _ in kept for c in cs],
                            [m for _, _, ms, _ in kept for m in ms], torch.cat([r for _, _, _, r in kept]), stats)

    def _records(self, step: int) -> dict[str, bool]:
        """What the engines return with this step's samples besides them."""
        every = self.cfg.rollout.prefill_gap_every
        return {"routed_experts": self.cfg.algorithm.records_routing,
                "prefill_logprobs": bool(every) and (step - 1) % every == 0}

    def _step_metrics(self, prompts, rewards, lengths, truncated, learner_metrics, stats, t) -> dict[str, float]:
        G = self.cfg.algorithm.group_size
        grouped = rewards.view(-1, G)
        m = {"reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()),
             "reward/pass_at_group": float((grouped.max(1).values > 0).float().mean()),
             "response/length_mean": float(lengths.float().mean()),
             "response/truncated": float(truncated.float().mean()),
             "rollout/rounds": stats["rounds"], "rollout/informative_groups": stats["informative_groups"],
             "reward/scoring_failures": stats["scoring_failures"],
             **{k: v for k, v in stats.items() if k.startswith(("episode/", "staleness/", "is/", "rollout/"))},
             "throughput/generated_tokens_per_s": float(lengths.sum()) / max(t["rollout"], 1e-9),
             "throughput/tokens_per_s": float(lengths.sum()) / max(t["step"], 1e-9)}
        for env in sorted({p.env for p in prompts}):
            rows = torch.tensor([p.env == env for p in prompts]).repeat_interleave(G)
            m[f"reward/{env}/mean"] = float(rewards[rows].mean())
        m.update({f"reward/{name}": sum(values) / len(values) for name, values in stats.get("info", {}).items()})
        m.update({k if k.startswith("learner/") else f"train/{k}": v for k, v in learner_metrics.items()})
        m.update({f"time/{k}": v for k, v in t.items() if k != "start"})
        return m

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Greedy (``rollout.eval_sampling``) accuracy on the held-out prompts."""
        if not self.eval_prompts:
            return {"eval/accuracy": float("nan")}
        with self.collect_lock:
            got = self.collector.collect(self.eval_prompts, 1, self.cfg.rollout.eval_sampling, eval_seed(self.cfg.seed))
        rewards = got.rewards
        out = {"eval/accuracy": float(rewards.mean())}
        out.update({f"eval/{k}": v for k, v in episode_metrics(got.episodes).items()})
        out.update({f"eval/{name}": sum(values) / len(values) for name, values in got.info_metrics.items()})
        for env in sorted({p.env for p in self.eval_prompts}):
            rows = torch.tensor([p.env == env for p in self.eval_prompts])
            out[f"eval/{env}/accuracy"] = float(rewards[rows].mean())
        return out

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        tag = f"step_{self.step:06d}"
        if (self.ckpt_dir / "resume_from").exists() and (self.ckpt_dir / "resume_from").read_text() == tag:
            return
        self.learner.save(str(self.ckpt_dir), tag)
        # (rollouts ahead: the prompt stream from before the oldest untrained step drew its prompts)
        driver = self.ahead.checkpoint_state() if self.ahead is not None else self._driver_state()
        state = {"step": self.step, "evals": self.evals, "train_seconds": self.train_seconds,
                 "wall_seconds": self._wall_seconds(), **driver}
        torch.save(state, self.ckpt_dir / tag / "trainer_state.pt")
        pointer = self.ckpt_dir / "resume_from.tmp"
        pointer.write_text(tag)
        pointer.replace(self.ckpt_dir / "resume_from")  # atomic: a kill leaves the previous one
        tags = sorted(p.name for p in self.ckpt_dir.glob("step_*") if p.is_dir())
        for old in tags[:-self.cfg.keep_checkpoints]:
            shutil.rmtree(self.ckpt_dir / old, ignore_errors=True)

    def _resume(self) -> bool:
        pointer = self.ckpt_dir / "resume_from"
        if not pointer.exists():
            return False
        if not self.cfg.resume:
            raise ConfigError(f"resume=false, but {self.ckpt_dir} holds checkpoints of an earlier run: remove it, or "
                              "run under another name=... (or hydra.run.dir=...)")
        tag = pointer.read_text().strip()
        self.learner.load(str(self.ckpt_dir), tag)
        state = torch.load(self.ckpt_dir / tag / "trainer_state.pt", weights_only=False)
        self.step, self.evals, self.train_seconds = state["step"], [tuple(e) for e in state["evals"]], state["train_seconds"]
        self.wall_before = state.get("wall_seconds", 0.0)
        self._load_driver_state(state)
        log.info("resumed from %s (step %d)", self.ckpt_dir / tag, self.step)
        return True

    def _driver_state(self) -> dict:
        """What the driver needs to continue exactly: the prompt stream's position and the RNGs."""
        return {"stream": self.stream.state_dict(), "python_rng": random.getstate(),
                "numpy_rng": np.random.get_state(), "torch_rng": torch.get_rng_state()}

    def _load_driver_state(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        random.setstate(state["python_rng"])
        np.random.set_state(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])

    def _wall_seconds(self) -> float:
        """Wall time of the whole run, over every launch of it."""
        return self.wall_before + time.monotonic() - self.started

    # ------------------------------------------------------------------ the end
    def finish(self) -> dict:
        self.learner.save_model(str(self.out / "final"))
        rows = self.metrics.rows
        rewards = [r["reward/mean"] for r in rows if "reward/mean" in r]
        k = max(1, min(10, len(rewards) // 4))
        summary = {
            # None, not NaN, when no evaluation ran (summary.json stays strict JSON)
            "eval_accuracy_before": self.evals[0][1] if self.eval_prompts else None,
            "eval_accuracy_after": self.evals[-1][1] if self.eval_prompts else None,
            "eval_prompts": len(self.eval_prompts), "eval_source": self.eval_source, "steps": self.step,
            "wall_seconds": round(self._wall_seconds(), 1), "train_seconds": round(self.train_seconds, 1),
            "reward_first_steps": sum(rewards[:k]) / k if rewards else None,
            "reward_last_steps": sum(rewards[-k:]) / k if rewards else None,
            "evals": self.evals, "starting_checkpoint": self.start_checkpoint, "start": self._start_kind(),
            "final_model": str(self.out / "final"),
            "placement": {"rollout_nodes": self.pool.node_ids(), "learner_nodes": self.learner.node_ids()},
        }
        for phase in ("rollout", "reward", "learn", "sync", "step"):
            values = [r[f"time/{phase}"] for r in rows if f"time/{phase}" in r]
            if values:
                summary[f"seconds_per_step/{phase}"] = round(sum(values) / len(values), 3)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        if self.cfg.logging.plot:
            plot_reward_curve(rows, self.evals, self.out / "reward_curve.png", f"rlvr-train: {self.cfg.name}")
        return summary

    def shutdown(self) -> None:
        if self.ahead is not None:
            self.ahead.close()
        if self.collector is not None:
            self.collector.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.pool is not None:
            self.pool.shutdown()
        if self.learner is not None:
            self.learner.shutdown()
