"""The GRPO learner: one DeepSpeed engine per data-parallel rank, each rank a Ray actor.

``LearnerGroup`` (in the driver) places ``num_ranks`` ``LearnerRank`` actors in a Ray placement
group, joins them into one torch.distributed world (gloo on CPU, nccl on GPUs) and hands each
its contiguous share of every batch. The driver cuts every rank's share into micro-batches by a
token budget, short sequences packed into rows (``rlvr/training/packing.py``), with the same number of
micro-batches on every rank; DeepSpeed accumulates their gradients (ZeRO stage 0-3, optional
bf16, gradient clipping, the LR schedule) and averages them over ranks. The per-token loss
weights are computed over the whole batch before it is cut, so the loss is a plain sum over
micro-batches and ranks: N ranks with the same global batch give the same update as one, and
packing changes nothing but the speed.

The loss is ``rlvr.grpo.grpo_loss``: the learner only computes log-probabilities and wires them
in. MoE routers are frozen by default during RL (as NeMo RL does): routing that drifts under a
noisy policy gradient is a known source of instability in MoE RL.

On CPU (``DS_ACCELERATOR=cpu``) the optimiser is torch's AdamW (DeepSpeed's own CPU Adam compiles
for ~30 s) and DeepSpeed's shared-memory collective op, which only inference uses, is not built
(it would compile for ~50 s at start-up).
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlvr import grpo, runtime
from rlvr.model import build
from rlvr.model.checkpoint import CheckpointReader, load_weights
from rlvr.training import packing, sharded
from rlvr.training.precision import Fp32Params, clip_coefficient
from rlvr.config import Config
from rlvr.rollout.workers import EngineCalls
from rlvr.training.packing import MicroBatch


@dataclasses.dataclass
class TrainBatch:
    """B sequences (prompt + response, right-padded to L). Per-token tensors are (B, L - 1) and
    aligned with the targets ``input_ids[:, 1:]``."""

    input_ids: torch.Tensor  # (B, L) int64
    mask: torch.Tensor  # (B, L - 1): 1 on generated tokens that are trained
    advantages: torch.Tensor  # (B,)
    engine_logp: torch.Tensor  # (B, L - 1): the sampling engine's log-probabilities
    lengths: torch.Tensor  # (B,) real tokens of each sequence (the rest is padding)
    # (B, L - 1), when the proximal policy was recomputed (``algorithm.proximal``): its
    # log-probabilities and the importance weights computed against them; else the loss's own
    # forward is the proximal policy and the weights are token-level truncation.
    old_logp: torch.Tensor | None = None
    is_weights: torch.Tensor | None = None
    # (B, L - 1, MoE layers, top_k): the experts the engine chose for each input token (-1: no
    # record), when it recorded them (``algorithm.records_routing``)
    experts: torch.Tensor | None = None


def lr_lambda(schedule: str, warmup: int, total: int):
    """Multiplier of the base LR at optimiser step s: linear warm-up, then constant, linear
    decay or cosine decay to 0 at ``total``."""
    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return f


def deepspeed_config(lc, world_size: int) -> dict:
    """The DeepSpeed config of ``learner`` settings ``lc``. The number of micro-batches changes
    from step to step (a token budget): the learner marks the accumulation boundary itself and
    scales the loss, so DeepSpeed's own batch arithmetic is left at one micro-batch per step."""
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "zero_optimization": zero_buffers(lc.zero_stage, lc.zero_bucket_elements),
        "bf16": {"enabled": lc.bf16},
        "steps_per_print": 10**9,
        "zero_allow_untested_optimizer": True,
    }
    if lc.grad_clip is not None:
        config["gradient_clipping"] = lc.grad_clip
    return config


def zero_buffers(stage: int, elements: int) -> dict:
    """DeepSpeed's ``zero_optimization`` with every buffer of ``elements`` (config
    ``learner.zero_bucket_elements``; ``rlvr/training/plan.py`` counts them)."""
    config = {"stage": stage}
    if stage in (1, 2):
        config.update(reduce_bucket_size=elements, allgather_bucket_size=elements)
    elif stage == 3:
        config.update(reduce_bucket_size=elements, stage3_prefetch_bucket_size=elements,
                      stage3_max_live_parameters=elements, sub_group_size=elements)
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class LearnerRank(EngineCalls):
    """One data-parallel rank (runs as a Ray actor: ``_RemoteRank`` below). With
    ``rollout.colocate`` it also serves rollouts (``EngineCalls``) from a builtin engine over the
    very module it trains: no second copy of the weights and no weight sync."""

    def __init__(self, rank: int, world_size: int, config: dict, model_path: str):
        self.rank, self.world_size = rank, world_size
        self.cfg = Config.model_validate(config)
        self.model_path = model_path
        torch.set_num_threads(self.cfg.learner.threads)
        self.use_gpu = self.cfg.learner.gpus_per_rank > 0
        if not self.use_gpu:
            os.environ["DS_ACCELERATOR"] = "cpu"

    def address(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), _free_port()

    def setup(self, master_addr: str, master_port: int) -> int:
        """Join the torch.distributed world and build the DeepSpeed engine. Returns the number
        of trainable parameters."""
        import deepspeed

        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK="0",
                          MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # see the module docstring
        lc = self.cfg.learner
        backend = lc.dist_backend if lc.dist_backend != "auto" else ("nccl" if self.use_gpu else "gloo")
        deepspeed.init_distributed(dist_backend=backend)
        ds_config = deepspeed_config(lc, self.world_size)
        reader = CheckpointReader(self.model_path)
        model = self._load_model(reader, ds_config)
        # the peak of building and loading the model (a ZeRO-3 rank: its shard and one tensor)
        self._load_peak_rss = runtime.peak_resident_bytes(reset=True)
        params = [p for p in model.parameters() if p.requires_grad]

        def adamw(tensors):
            # fused: one kernel over every parameter (CPU and CUDA), where the default loops
            # over them in Python (0.77 -> 0.16 ms a step for the default job's policy)
            return torch.optim.AdamW(tensors, lr=lc.lr, betas=lc.betas, eps=lc.eps,
                                     weight_decay=lc.weight_decay, fused=True)

        optimizer = adamw(params)
        total = self.cfg.steps * self.cfg.algorithm.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(lc.lr_schedule, lc.warmup_steps, total))
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, dist_init_required=False)
        if self.fp32 is not None:
            self.fp32.start(adamw)
        # The KL anchor: the starting policy, frozen.
        self.reference = self._load_reference(reader, ds_config) if self.cfg.algorithm.kl_coef else None
        self.loss_config = grpo.LossConfig(
            clip_low=self.cfg.algorithm.clip_low, clip_high=self.cfg.algorithm.clip_high,
            aggregation=self.cfg.algorithm.aggregation, kl_estimator=self.cfg.algorithm.kl_estimator,
            kl_coef=grpo.kl_placement(self.cfg.algorithm.kl_coef, self.cfg.algorithm.kl_in_reward)[1],
            tis_cap=self.cfg.algorithm.tis_cap, is_level=self.cfg.algorithm.is_level,
            policy_ratio=self.cfg.algorithm.policy_ratio)
        self._sync_items = None  # (rank 0, ZeRO 0-2: the buckets of the next sync)
        self._sync_plan = None  # (ZeRO-3, every rank: the names in each bucket)
        self._sender = None  # (rank 0: its end of the weight-transfer group)
        self._grad_norm = None
        self._grad_norm_total = None  # (bf16: with the fp32 tensors' share)
        if self.cfg.rollout.colocate:
            from rlvr.rollout.builtin import BuiltinEngine
            from rlvr.tokenizer import make_tokenizer

            rc = self.cfg.rollout
            self.rollout = BuiltinEngine(self.engine.module, make_tokenizer(self.cfg.model.tokenizer),
                                         max_batch=rc.max_batch, max_model_len=rc.max_model_len)
        runtime.settle()  # what exists now lives as long as the rank
        return sum(p.numel() for p in params)

    def _load_model(self, reader: CheckpointReader, ds_config: dict):
        """The policy, in the dtype DeepSpeed trains (its bf16 mode would cast an fp32 model to
        bf16 anyway): under ZeRO-3 partitioned from construction, else whole; its weights
        streamed from the checkpoint."""
        from rlvr.model.layers import Router

        lc = self.cfg.learner
        dtype = torch.bfloat16 if lc.bf16 else torch.float32
        if lc.zero_stage == 3:
            model = sharded.build_partitioned(reader.config, dtype, ds_config)
        else:
            model = build(reader.config, dtype, "cuda" if self.use_gpu else "cpu")
        model.gradient_checkpointing_enable(self.cfg.model.gradient_checkpointing)
        if lc.freeze_router:
            for module in model.modules():
                if isinstance(module, Router):
                    module.weight.requires_grad_(False)
        # bf16: the SSM's A_log, D, dt_bias stay fp32, outside DeepSpeed (rlvr/training/precision.py);
        # taken out before the load, so they read the checkpoint's values in fp32
        self.fp32 = Fp32Params(model) if lc.bf16 else None
        sharded.load_partitioned(model, reader)
        return model

    def _load_reference(self, reader: CheckpointReader, ds_config: dict):
        """The frozen starting policy for the KL term: under ZeRO-3 partitioned like the policy
        and served by a DeepSpeed engine without an optimizer (it gathers each layer for its
        forward), else a whole fp32 copy."""
        import deepspeed

        if self.cfg.learner.zero_stage != 3:
            model = build(reader.config, torch.float32, "cuda" if self.use_gpu else "cpu")
            load_weights(model, reader)
            return model.eval().requires_grad_(False)
        dtype = torch.bfloat16 if self.cfg.learner.bf16 else torch.float32
        model = sharded.build_partitioned(reader.config, dtype, ds_config)
        sharded.load_partitioned(model, reader)
        model.eval().requires_grad_(False)
        config = {k: v for k, v in ds_config.items() if k not in ("gradient_clipping", "zero_allow_untested_optimizer")}
        engine, *_ = deepspeed.initialize(model=model, config=config, dist_init_required=False)
        engine.eval()  # (DeepSpeed's engine returns None here, not itself)
        return engine

    # -- log-probabilities
    @staticmethod
    def _logprobs(model, micro: MicroBatch, replay: bool = False, routing: list | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities and entropies (R, W - 1) of a micro-batch's next-token targets where
        its mask is set (the response tokens; zero elsewhere, where no loss or metric reads them):
        the model projects those positions only, and never holds a large vocabulary's logits
        whole (``LMHead``). ``replay``: with the engine's experts (routing replay); ``routing``:
        gets the model's own choices (``HybridLM.forward``)."""
        seq_idx = None if micro.seq_idx is None else micro.seq_idx[:, :-1]
        keep = micro.tokens["mask"] > 0
        experts = micro.tokens["experts"] if replay else None
        logp, entropy = model(micro.input_ids[:, :-1], seq_idx=seq_idx, keep=keep, targets=micro.input_ids[:, 1:][keep],
                              experts=experts, routing=routing)
        zeros = torch.zeros(keep.shape, dtype=logp.dtype, device=logp.device)
        return zeros.masked_scatter(keep, logp), zeros.masked_scatter(keep, entropy)

    def reference_logprobs(self, micros: list[MicroBatch]) -> list[torch.Tensor]:
        """Per-token log-probabilities under the reference policy (for KL in the reward)."""
        with torch.no_grad():
            return [self._logprobs(self.reference, m)[0].cpu() for m in (m.to(self.engine.device) for m in micros)]

    def policy_logprobs(self, micros: list[MicroBatch]) -> list[torch.Tensor]:
        """Per-token log-probabilities under the current policy: the proximal policy of the
        decoupled objective, recomputed before an update."""
        return [lp.cpu() for lp in self._old_logprobs([m.to(self.engine.device) for m in micros])]

    # -- training
    def train(self, micros: list[MicroBatch]) -> dict[str, float]:
        """One GRPO update from this rank's micro-batches: ``algorithm.epochs`` passes over them,
        one optimiser step per pass. Returns the loss (summed: it is already normalised over
        the whole batch) and metrics as sums over tokens with their ``tokens`` count."""
        micros = [m.to(self.engine.device) for m in micros]
        self.engine.train()
        if "old_logp" in micros[0].tokens:  # recomputed by the group before this update
            old_logp = [m.tokens["old_logp"] for m in micros]
        else:
            old_logp = self._old_logprobs(micros) if self.cfg.algorithm.epochs > 1 else None
        sums: dict[str, float] = {}
        old_mismatch = 0.0
        for epoch in range(self.cfg.algorithm.epochs):
            for k, micro in enumerate(micros):
                self.engine.set_gradient_accumulation_boundary(k == len(micros) - 1)
                metrics = self._micro_step(micro, None if old_logp is None else old_logp[k])
                if epoch == 0 and old_logp is not None:
                    # Nothing has stepped yet: the no-grad "old" log-probs (fused kernels) must
                    # be the ones the loss's forward (torch reference) computes.
                    old_mismatch = max(old_mismatch, metrics.pop("old_logprob_mismatch"))
                metrics.pop("old_logprob_mismatch", None)
                for name, value in metrics.items():
                    sums[name] = sums.get(name, 0.0) + value
        out = {k: v / self.cfg.algorithm.epochs for k, v in sums.items()}
        if old_logp is not None:
            out["old_logprob_mismatch"] = old_mismatch
        out["lr"] = self.scheduler.get_last_lr()[0]
        out["learner/load_peak_rss_gib"] = self._load_peak_rss / 1024**3
        out["learner/peak_rss_gib"] = runtime.peak_resident_bytes(reset=True) / 1024**3
        grad_norm = self._grad_norm if self.cfg.learner.zero_stage == 0 else self.engine.get_global_grad_norm()
        if self.fp32 is not None:
            grad_norm = self._grad_norm_total
        if grad_norm is not None:
            out["grad_norm"] = float(grad_norm)
        return out

    @property
    def _replay(self) -> bool:
        return self.cfg.algorithm.routing_replay == "rollout"

    def _old_logprobs(self, micros: list[MicroBatch]) -> list[torch.Tensor]:
        self.engine.eval()
        with torch.no_grad():
            parts = [self._logprobs(self.engine, m, self._replay)[0] for m in micros]
        self.engine.train()
        return parts

    def _micro_step(self, micro: MicroBatch, old_logp: torch.Tensor | None) -> dict[str, float]:
        t = micro.tokens
        routing = [] if "experts" in t else None
        logp, entropy = self._logprobs(self.engine, micro, self._replay, routing)
        # (read before the backward, whose recomputation under checkpointing records again)
        agreement = grpo.routing_agreement(torch.stack(routing, -2), t["experts"], t["mask"]) if routing else {}
        ref_logp = None
        if self.loss_config.kl_coef:
            with torch.no_grad():
                ref_logp = self._logprobs(self.reference, micro)[0]
        # One pass on fresh samples: the "old" policy is the current one (ratio 1, gradient of
        # the plain policy gradient); more epochs compare against the pre-update log-probs.
        old = logp.detach() if old_logp is None else old_logp
        mask_f = t["mask"].bool()
        old_mismatch = float((logp.detach() - old).abs()[mask_f].max()) if old_logp is not None and mask_f.any() else 0.0
        loss, metrics = grpo.grpo_loss(logp, old, t["advantages"], t["mask"], self.loss_config,
                                       engine_logp=t["engine_logp"], ref_logp=ref_logp, weights=t["weights"],
                                       is_weights=t.get("is_weights"),
                                       segments=None if micro.seq_idx is None else micro.seq_idx[:, :-1])
        # The weights normalise over the global batch; DeepSpeed averages gradients over ranks.
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
        boundary = self.engine.is_gradient_accumulation_boundary()
        if self.cfg.learner.zero_stage == 0 and boundary:
            # DeepSpeed reports the global norm only from its ZeRO optimisers: measure it here.
            grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
            self._grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        lr = self.scheduler.get_last_lr()[0]  # (the step's rate: DeepSpeed advances the schedule after it)
        self.engine.step()
        if boundary and self.fp32 is not None:
            self._step_fp32(lr)
        mask = t["mask"]
        n = float(mask.sum())
        diff = (logp.detach() - t["engine_logp"]) * mask
        metrics.update(entropy=float((entropy.detach() * mask).sum()) / max(n, 1),
                       logprob_mismatch=float(diff.abs().sum()) / max(n, 1),
                       # NeMo RL's token probability error: mean of max(p/q, q/p), 1 where they agree
                       token_prob_error=float((diff.abs().exp() * mask).sum()) / max(n, 1),
                       # KL(engine || trainer) on sampled tokens, k3 estimator
                       engine_trainer_kl=float((grpo.kl_k3(t["engine_logp"], logp.detach()) * mask).sum()) / max(n, 1),
                       **agreement)
        # Token means -> token sums, so that the group can average over all ranks' tokens.
        out = {k: v * n for k, v in metrics.items()}
        out.update(loss=float(loss.detach()), tokens=n, old_logprob_mismatch=old_mismatch)
        return out

    def _step_fp32(self, lr: float) -> None:
        """The fp32 tensors' update after DeepSpeed's: averaged over ranks, clipped with the norm
        of every gradient (DeepSpeed clipped its own by theirs: the two differ by these few
        numbers' share), stepped at the same rate."""
        self.fp32.average_grads(self.world_size)
        ds_norm = self._grad_norm if self.cfg.learner.zero_stage == 0 else self.engine.get_global_grad_norm()
        total, coef = clip_coefficient(self.cfg.learner.grad_clip, float(ds_norm or 0.0) ** 2, self.fp32.grad_norm_sq())
        self.fp32.step(lr, coef)
        self._grad_norm_total = total

    # -- weight sync over the transfer group (rank 0 sends; under ZeRO-3 every rank gathers)
    def sync_endpoint(self, chunk_bytes: int) -> dict:
        """Rank 0: where the rollout engines reach this rank's sender (made once per chunk size)."""
        from rlvr.rollout.weights import WeightSender

        if self._sender is None or chunk_bytes and self._sender.chunk_bytes != chunk_bytes:
            if self._sender is not None:
                self._sender.close()
            backend = "nccl" if self.use_gpu else "gloo"
            self._sender = WeightSender(chunk_bytes, ray.util.get_node_ip_address(), backend=backend,
                                        device="cuda" if self.use_gpu else "cpu")
        return self._sender.endpoint.to_dict()

    def sync_layout(self, chunk_bytes: int) -> dict:
        """Rank 0: the update's layout, from the parameters' metadata (no gather)."""
        from rlvr.model.names import checkpoint_items
        from rlvr.rollout.weights import Layout

        metas = ((n, torch.empty(getattr(t, "ds_shape", t.shape), dtype=t.dtype, device="meta"))
                 for n, t in self.engine.module.state_dict(keep_vars=True).items())
        return Layout.of(((n, t.dtype, t.shape) for n, t in checkpoint_items(metas)), chunk_bytes).to_dict()

    def sync_connect(self, size: int, group: str, mode: str) -> None:
        self._sender.connect(size, group, mode)

    def sync_can_map(self, endpoint: dict) -> bool:
        """Whether this rank can serve the mapped channel: it maps rank 0's buffers (so it shares
        the engines' node), and /dev/shm, where its storages would move, has room for them (a
        container's default of 64 MiB would end in SIGBUS at the first touch past it)."""
        import shutil

        from rlvr.rollout.weights import Endpoint, can_map

        storages = {t.untyped_storage().data_ptr(): t.untyped_storage()
                    for _, _, t in sharded.partition_pieces(self.engine.module, self.rank) if t.numel()}
        need = sum(s.nbytes() for s in storages.values() if not s.is_shared())
        room = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
        return need < room and can_map(Endpoint(**endpoint))

    def sync_map(self) -> tuple[list, dict]:
        """The mapped channel: where this rank's pieces of the weights lie in shared memory (its
        storages moved there in place, the first time): (pieces, {handle: size})."""
        from rlvr.rollout.weights import mapped_piece

        pieces, storages = [], {}
        for name, start, tensor in sharded.partition_pieces(self.engine.module, self.rank):
            if tensor.numel():
                piece, handle, size = mapped_piece(name, start, tensor)
                pieces.append(piece)
                storages[handle] = size
        return pieces, storages

    def sync_send(self, layout: dict) -> None:
        """Every rank: rank 0 streams its tensors into the group; under ZeRO-3 each parameter is
        first gathered to rank 0 alone, the other ranks sending their partitions."""
        from rlvr.model.names import checkpoint_items
        from rlvr.rollout.weights import Layout

        module = self.engine.module
        if self.cfg.learner.zero_stage == 3:
            items = sharded.gathered_to_first(module, self.rank)
        elif self.rank == 0:
            items = module.state_dict().items()
        else:
            return
        if self.rank == 0:
            self._sender.send(Layout.from_dict(layout), checkpoint_items((n, t.detach()) for n, t in items))
        else:
            for _ in items:  # (take part in every gather)
                pass

    # -- weight sync, the disk path (bucketed: one bucket in flight at a time)
    def prepare_sync(self, bucket_bytes: int) -> int:
        """Plan the export of the weights in buckets; returns how many there are. Under ZeRO-3
        every rank plans the same buckets and gathers each together when it is asked for
        (``get_bucket`` on every rank); else rank 0 hands out its own module's tensors."""
        from rlvr.model.names import checkpoint_items
        from rlvr.rollout.weights import buckets

        module = self.engine.module
        if self.cfg.learner.zero_stage == 3:
            self._sync_plan = sharded.bucket_plan(module, bucket_bytes)
            return len(self._sync_plan)
        if self.rank != 0:
            return 0
        self._sync_items = list(buckets(checkpoint_items(module.state_dict()), bucket_bytes))
        return len(self._sync_items)

    def get_bucket(self, index: int) -> list[tuple] | None:
        """Bucket ``index``, packed (rank 0; other ranks take part in a ZeRO-3 gather and return
        None)."""
        from rlvr.model.names import checkpoint_items
        from rlvr.rollout.weights import pack_bucket

        if self._sync_plan is not None:
            items = sharded.gathered_items(self.engine.module, self._sync_plan[index])
            if index == len(self._sync_plan) - 1:
                self._sync_plan = None
            if self.rank != 0:
                for _ in items:  # (take part in every gather)
                    pass
                return None
            # each gathered tensor copied out before the next gather frees it
            return pack_bucket(list(checkpoint_items((n, t.to("cpu", copy=True)) for n, t in items)))
        bucket = self._sync_items[index]
        if index == len(self._sync_items) - 1:
            self._sync_items = None
        return pack_bucket(bucket)

    # -- checkpoints
    def save(self, directory: str, tag: str) -> None:
        extra = {} if self.fp32 is None else {"fp32_params": self.fp32.state_dict()}
        self.engine.save_checkpoint(directory, tag=tag, client_state=extra)

    def load(self, directory: str, tag: str) -> None:
        path, extra = self.engine.load_checkpoint(directory, tag=tag)
        if path is None:
            raise FileNotFoundError(f"no learner checkpoint {tag!r} in {directory}")
        if self.fp32 is not None:
            self.fp32.load_state_dict(extra["fp32_params"])  # (values and moments: an exact resume)

    def save_model(self, directory: str) -> None:
        """A Hugging Face style checkpoint of the current policy (rank 0 writes)."""
        if self.cfg.learner.zero_stage == 3:
            # each module holds its partition only: gathered one parameter at a time, streamed
            # into the files by rank 0
            sharded.export(self.engine.module, self.rank, directory)
        elif self.rank == 0:
            self.engine.module.save(directory)

    def shutdown(self) -> None:
        # Leave the process group before the actor dies: ranks killed inside a ZeRO-3 world
        # otherwise abort in the gloo teardown.
        import torch.distributed as dist

        if getattr(self, "_sender", None) is not None:
            self._sender.close()
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


# Made remote here rather than with a class decorator: the module attribute then stays the plain
# class, which Ray's pickler finds by name, so the actor class travels by reference (by value,
# its methods' globals drag in torch internals that do not pickle).
_RemoteRank = ray.remote(LearnerRank)


class LearnerGroup:
    """The driver's handle on all learner ranks."""

    def __init__(self, config: Config, model_path: str):
        self.cfg = config
        lc = config.learner
        bundle = {"CPU": lc.cpus_per_rank, **({"GPU": lc.gpus_per_rank} if lc.gpus_per_rank else {}), **lc.resources}
        self.pg = placement_group([bundle] * lc.num_ranks, strategy=lc.placement)
        ray.get(self.pg.ready(), timeout=300)
        dumped = config.model_dump()
        self.ranks = [
            _RemoteRank.options(
                num_cpus=lc.cpus_per_rank, num_gpus=lc.gpus_per_rank, resources=lc.resources or None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
            ).remote(i, lc.num_ranks, dumped, model_path)
            for i in range(lc.num_ranks)
        ]
        addr, port = ray.get(self.ranks[0].address.remote())
        self.num_parameters = ray.get([r.setup.remote(addr, port) for r in self.ranks])[0]
        self._exported = None  # (bucket bytes, ref of the bucket count, ref of bucket 0) after a step
        self._gathering = []  # refs of the other ranks' part in the buckets asked for (ZeRO-3)
        self._mapped = False  # whether the engines read the ranks' own memory (the mapped channel)

    def _all(self, method: str, *args):
        return ray.get([getattr(r, method).remote(*args) for r in self.ranks])

    def node_ids(self) -> list[str]:
        return self._all("node_id")

    def micro_batches(self, batch: TrainBatch, shares: list[list[int]], weights: torch.Tensor | None = None
                      ) -> list[list[MicroBatch]]:
        """Each share of the batch (sequence indices) as packed micro-batches of at most
        ``learner.max_tokens_per_micro_batch`` tokens, as many for every share."""
        tokens = {"mask": batch.mask, "engine_logp": batch.engine_logp,
                  "advantages": batch.advantages[:, None].expand_as(batch.mask)}
        if weights is not None:
            tokens["weights"] = weights
        for key in ("old_logp", "is_weights", "experts"):
            if getattr(batch, key) is not None:
                tokens[key] = getattr(batch, key)
        plans = packing.plan(batch.lengths.tolist(), shares, self.cfg.learner.max_tokens_per_micro_batch)
        return [[packing.pack(batch.input_ids, batch.lengths, tokens, rows) for rows in rank_plan] for rank_plan in plans]

    def train(self, batch: TrainBatch) -> dict[str, float]:
        """One update from the whole batch: each rank takes a contiguous share."""
        B, n = batch.input_ids.shape[0], len(self.ranks)
        alg = self.cfg.algorithm
        weights = grpo.loss_weights(batch.mask, alg.aggregation, max_len=self.cfg.rollout.sampling.max_tokens)
        micros = self.micro_batches(batch, [list(range(r * B // n, (r + 1) * B // n)) for r in range(n)], weights)
        calls = [r.train.remote(m) for r, m in zip(self.ranks, micros)]
        if self.cfg.rollout.weight_transfer == "disk" and not self.cfg.rollout.colocate:
            # The new weights, packed for the rollout workers as soon as each rank has stepped
            # (an actor runs one caller's calls in order), so the sync that follows
            # (weight_buckets) waits for neither: two round trips fewer.
            bucket_bytes = self.cfg.rollout.sync_bucket_bytes
            counts = [r.prepare_sync.remote(bucket_bytes) for r in self.ranks]
            self._exported = (bucket_bytes, counts[0], self._bucket(0))
        results = ray.get(calls)
        tokens = sum(m.pop("tokens") for m in results)
        out = {"loss": sum(m.pop("loss") for m in results)}
        for key in ("lr", "grad_norm"):
            if key in results[0]:
                out[key] = results[0].pop(key)
                for m in results[1:]:
                    m.pop(key, None)
        for key in ("old_logprob_mismatch", "learner/load_peak_rss_gib", "learner/peak_rss_gib"):  # the worst rank's
            if key in results[0]:
                out[key] = max(m.pop(key) for m in results)
        out.update({k: sum(m[k] for m in results) / max(tokens, 1) for k in results[0]})
        computed = sum(m.num_tokens for rank in micros for m in rank)
        out["micro_batches"] = len(micros[0])
        out["padding_fraction"] = 1 - float(batch.lengths.sum()) / computed
        return out

    def reference_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        """(B, L - 1) log-probabilities of the targets under the reference policy, each rank
        computing its share (a ZeRO-3 reference is partitioned: every rank takes part in each
        forward, so every rank gets as many micro-batches)."""
        return self._logprobs_of(batch, "reference_logprobs")

    def proximal_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        """(B, L - 1) log-probabilities of the targets under the current policy, as
        ``reference_logprobs`` computes the reference's."""
        return self._logprobs_of(batch, "policy_logprobs")

    def _logprobs_of(self, batch: TrainBatch, method: str) -> torch.Tensor:
        B, n = batch.input_ids.shape[0], len(self.ranks)
        micros = self.micro_batches(batch, [list(range(r * B // n, (r + 1) * B // n)) for r in range(n)])
        values = ray.get([getattr(r, method).remote(m) for r, m in zip(self.ranks, micros)])
        out = torch.zeros_like(batch.engine_logp)
        for rank_values, rank_micros in zip(values, micros):
            for v, m in zip(rank_values, rank_micros):
                packing.unpack(v, m, batch.lengths, out)
        return out

    # The rollout pool's WeightSource (rlvr/rollout/workers.py): rank 0 sends, every rank gathers.
    def weight_endpoint(self, chunk_bytes: int) -> dict:
        """(``chunk_bytes`` 0: the current one's)"""
        return ray.get(self.ranks[0].sync_endpoint.remote(chunk_bytes))

    def weight_layout(self, chunk_bytes: int) -> dict:
        """The next update: where the ranks' pieces lie in shared memory (the mapped channel), or
        the stream's layout."""
        if self._mapped:
            from rlvr.rollout.weights import Layout, mapped_update

            layout = Layout.from_dict(ray.get(self.ranks[0].sync_layout.remote(chunk_bytes)))
            maps = self._all("sync_map")
            return mapped_update(((s.name, getattr(torch, s.dtype), s.shape) for s in layout.slots),
                                 [p for pieces, _ in maps for p in pieces],
                                 {h: n for _, storages in maps for h, n in storages.items()})
        return ray.get(self.ranks[0].sync_layout.remote(chunk_bytes))

    def connect_weights(self, size: int, group: str, mode: str) -> None:
        """Rank 0 joins the group. Where the engines map rank 0's buffers (the shared channel) and
        every rank can too, on CPUs, the engines read the ranks' own memory instead: the mapped
        channel (``rlvr/rollout/weights.py``)."""
        endpoint = self.weight_endpoint(0)
        ray.get(self.ranks[0].sync_connect.remote(size, group, mode))
        self._mapped = mode == "shared" and not self.cfg.learner.gpus_per_rank and all(
            ray.get([r.sync_can_map.remote(endpoint) for r in self.ranks]))

    def send_weights(self, layout: dict) -> None:
        if layout.get("kind") != "mapped":  # (mapped: the engines read; nothing to send)
            self._all("sync_send", layout)

    def weight_buckets(self, bucket_bytes: int = 64 * 1024**2):
        """Yield object refs of packed weight buckets, one at a time (checkpoint names): those
        the last ``train`` exported, once, or else gathered now."""
        exported, self._exported = self._exported, None
        if exported is not None and exported[0] == bucket_bytes:
            count, first = ray.get(exported[1]), exported[2]
        else:
            count, first = self._all("prepare_sync", bucket_bytes)[0], None
        for i in range(count):
            yield first if i == 0 and first is not None else self._bucket(i)
        ray.get(self._gathering)  # (the other ranks' part: raises what failed there)
        self._gathering = []

    def _bucket(self, index: int):
        """The ref of rank 0's bucket ``index``; under ZeRO-3 every rank is asked for it, as each
        takes part in gathering it."""
        if self.cfg.learner.zero_stage == 3:
            self._gathering += [r.get_bucket.remote(index) for r in self.ranks[1:]]
        return self.ranks[0].get_bucket.remote(index)

    def save(self, directory: str, tag: str) -> None:
        self._all("save", directory, tag)

    def load(self, directory: str, tag: str) -> None:
        self._exported = None  # (weights of before the load)
        self._all("load", directory, tag)

    def save_model(self, directory: str) -> None:
        self._all("save_model", directory)

    def shutdown(self) -> None:
        try:
            self._all("shutdown")
        finally:
            for r in self.ranks:
                ray.kill(r, no_restart=True)
            remove_placement_group(self.pg)
