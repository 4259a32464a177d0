"""A ZeRO-3 learner's model, never whole in one process: built partitioned, loaded into its
partitions, exported by streaming.

Built: under ``deepspeed.zero.Init`` each module's parameters are cut into the ranks' partitions as
soon as the module exists, so a rank holds its shard plus the one module being built; the
``torch.nn.init`` functions do nothing meanwhile (the checkpoint overwrites every weight), so that
module's full tensors are allocated but never written (on CPU, pages never touched cost no memory).

Loaded: every rank reads, from the memory-mapped safetensors files, only the rows its partition
of each parameter covers (``CheckpointReader.read_flat``: for Nano on 8 ranks, 1/8 of the 63 GB
each, no communication); buffers and anything not partitioned are read whole.

Exported: the Hugging Face ``final/`` folder is written from one gathered parameter at a time
(``gathered_items``), shard by shard, by rank 0, and the weight sync gathers one bucket at a time
when a rollout worker asks for it (``bucket_plan``): never a full state on one rank, where
DeepSpeed's ``_zero3_consolidated_16bit_state_dict`` gathers every parameter into rank 0's memory
(and broadcasts each back to every rank).

The partition layout is DeepSpeed's (``partition_parameters.py``): parameter ``p`` flattened and
padded to a multiple of the world size, rank ``r`` holding elements ``[r * s, (r + 1) * s)`` of it,
``s = p.ds_tensor.ds_numel``; ``tests/rlvr/training/test_sharded.py`` checks the loaded partitions
against the gathered parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from rlvr.model.checkpoint import CheckpointReader, check_matches, keep_fp32
from rlvr.model.config import HybridConfig

# The initialisers modules call from their own __init__ (nn.Linear, nn.Embedding, nn.Conv1d).
_INITIALISERS = ("normal_", "uniform_", "kaiming_uniform_", "zeros_", "ones_", "constant_", "trunc_normal_")


def is_partitioned(tensor: torch.Tensor) -> bool:
    """A ZeRO-3 parameter (its data lives in ``ds_tensor``, this rank's partition)."""
    return hasattr(tensor, "ds_tensor")


@contextlib.contextmanager
def no_init():
    """``torch.nn.init``'s in-place initialisers do nothing inside (as transformers' loading
    does): weights a checkpoint will fill are never written twice."""
    saved = {name: getattr(nn.init, name) for name in _INITIALISERS}
    try:
        for name in _INITIALISERS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def build_partitioned(config: HybridConfig, dtype: torch.dtype, ds_config: dict) -> nn.Module:
    """The model of ``config``, uninitialised, its parameters ZeRO-3 partitions in ``dtype``
    (buffers whole; the router's correction bias fp32)."""
    import deepspeed

    from rlvr.model.model import HybridLM

    # dtype from the config: zero.Init's own dtype argument is ignored where the accelerator lacks
    # fp16 (CPU: bf16 whatever is asked, DeepSpeed 0.19); and torch's linear left alone (its
    # default replaces F.linear process-wide)
    with no_init(), deepspeed.zero.Init(config_dict_or_path=ds_config, mem_efficient_linear=False):
        model = HybridLM(config, init_weights=False)
    if next(model.parameters()).dtype != dtype:
        raise RuntimeError(f"zero.Init built {next(model.parameters()).dtype}, expected {dtype}")
    keep_fp32(model)  # (buffers; zero.Init made every floating tensor ``dtype``)
    return model


@torch.no_grad()
def load_partitioned(model: nn.Module, reader: CheckpointReader) -> None:
    """The checkpoint into ``model``: each partitioned parameter's rows for this rank only, the
    rest whole."""
    for name, target in check_matches(model, reader).items():
        if not is_partitioned(target):
            target.copy_(reader.read(name))
            continue
        part = target.ds_tensor
        size = part.ds_numel
        start = size * dist.get_rank(group=target.ds_process_group)
        end = min(start + size, target.ds_numel)
        if start < end:  # (the last ranks' partitions may be padding only)
            part[:end - start].copy_(reader.read_flat(name, start, end))


def gathered_items(module: nn.Module, names: set[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole tensor) in ``state_dict`` order (only ``names``, if given), one parameter
    gathered at a time; every rank must run through it (each gather is a collective). A tensor is
    valid until the next is asked for."""
    from deepspeed import zero

    params = dict(module.named_parameters())
    for name, tensor in module.state_dict(keep_vars=True).items():
        if names is not None and name not in names:
            continue
        param = params.get(name)
        if param is None or not is_partitioned(param):
            yield name, tensor.detach()
            continue
        # modifier_rank None: nothing written back, so leaving the context frees the gathered copy
        with zero.GatheredParameters([param], modifier_rank=None):
            yield name, param.detach()


def gathered_to_first(module: nn.Module, rank: int) -> Iterator[tuple[str, torch.Tensor | None]]:
    """(name, whole tensor) in ``state_dict`` order on rank 0, (name, None) on the others: each
    partitioned parameter gathered to rank 0 alone (``dist.gather`` of the partitions), where
    ``gathered_items`` all-gathers it to every rank. Every rank must run through it. A tensor is
    valid until the next is asked for."""
    world = dist.get_world_size()
    params = dict(module.named_parameters())
    for name, tensor in module.state_dict(keep_vars=True).items():
        param = params.get(name)
        if param is None or not is_partitioned(param):
            yield name, tensor.detach() if rank == 0 else None
            continue
        part = param.ds_tensor.data  # (s,) this rank's slice of the flattened, padded parameter
        if rank != 0:
            dist.gather(part, None, dst=0)
            yield name, None
            continue
        flat = torch.empty(part.numel() * world, dtype=part.dtype, device=part.device)
        dist.gather(part, list(flat.chunk(world)), dst=0)
        yield name, flat[:param.ds_numel].view(param.ds_shape)


def partition_pieces(module: nn.Module, rank: int) -> Iterator[tuple[str, int, torch.Tensor]]:
    """What this rank holds of the module's weights in checkpoint names, as (checkpoint name,
    first element, flat contiguous tensor) in ``state_dict`` order: the pieces of its own
    partitions, and on rank 0 also every tensor that is not partitioned, whole. Together the
    ranks' pieces cover every tensor once, with nothing gathered. A parameter's checkpoint tensors
    (the per-expert ones of a stacked parameter) are consecutive blocks of it, flattened, so each
    piece of a partition is contiguous in one of them."""
    from rlvr.model.names import checkpoint_items

    params = dict(module.named_parameters())
    for name, tensor in module.state_dict(keep_vars=True).items():
        param = params.get(name)
        if param is None or not is_partitioned(param):
            if rank == 0:
                for piece_name, piece in checkpoint_items([(name, tensor.detach())]):
                    yield piece_name, 0, piece.view(-1)  # (contiguous: a module's own tensor, or an expert of one)
            continue
        part = param.ds_tensor.data.view(-1)
        lo = rank * part.numel()
        hi = min(lo + part.numel(), param.ds_numel)
        start = 0  # of the current checkpoint tensor, in elements of the flattened parameter
        for piece_name, piece in checkpoint_items([(name, torch.empty(param.ds_shape, dtype=part.dtype, device="meta"))]):
            a, b = max(lo, start), min(hi, start + piece.numel())
            if a < b:
                yield piece_name, a - start, part[a - lo:b - lo]
            start += piece.numel()


def bucket_plan(module: nn.Module, bucket_bytes: int) -> list[set[str]]:
    """The module's tensors (``state_dict`` names) grouped into buckets of at most
    ``bucket_bytes`` whole (a larger tensor alone), from their unpartitioned sizes: the same on
    every rank, so that all gather bucket i together when the weight sync asks for it."""
    plan, bucket, size = [], set(), 0
    for name, tensor in module.state_dict(keep_vars=True).items():
        nbytes = getattr(tensor, "ds_numel", tensor.numel()) * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            plan.append(bucket)
            bucket, size = set(), 0
        bucket.add(name)
        size += nbytes
    return plan + [bucket] if bucket else plan


def export(module: nn.Module, rank: int, path: str) -> None:
    """A Hugging Face checkpoint of a ZeRO-3 module, written by rank 0 tensor by tensor (all
    ranks call this)."""
    from rlvr.model.checkpoint import save_state

    items = gathered_items(module)
    if rank == 0:
        save_state(module.config, items, path)
    else:
        for _ in items:  # (take part in every gather)
            pass
