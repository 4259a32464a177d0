"""Weight transport: from the learner's parameters to the rollout engines, one bucket at a time.

A weight update is a *transaction* on the engine side: ``begin_weight_update()``, then any
number of ``load_weight_bucket(named_tensors)`` calls (each a slice of the checkpoint, in
checkpoint names), then ``finish_weight_update(version)``, after which the engine serves the new
weights. The split matters for engines that cannot load a slice in place: vLLM reloads a whole
checkpoint, so it writes each bucket as a shard and reloads once at the end (reloading after
every bucket from a partial checkpoint gave NaN log-probs). ``update_weights`` runs the three
steps over a stream of pairs for callers that hold the weights in one process.

Buckets bound the memory in flight: neither side ever holds a full second copy of the weights.
Across Ray they travel as raw byte arrays (``pack_bucket``), which the object store moves
without pickling the tensors.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import Protocol

import torch

NamedTensors = Iterable[tuple[str, torch.Tensor]]


class WeightReceiver(Protocol):
    """The engine side of a weight update (implemented by every rollout engine)."""

    weights_version: int

    def begin_weight_update(self) -> None: ...

    def load_weight_bucket(self, named_tensors: NamedTensors) -> None: ...

    def finish_weight_update(self, version: int | None = None) -> None: ...


def update_weights(engine: WeightReceiver, named_tensors: NamedTensors, version: int | None = None,
                   bucket_bytes: int = 64 * 1024**2) -> None:
    """One whole update of ``engine`` from (name, tensor) pairs, in buckets of ``bucket_bytes``."""
    engine.begin_weight_update()
    for bucket in buckets(named_tensors, bucket_bytes):
        engine.load_weight_bucket(bucket)
    engine.finish_weight_update(version)


def next_version(current: int, version: int | None) -> int:
    return current + 1 if version is None else version


def buckets(named_tensors: NamedTensors, bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group (name, tensor) pairs into lists of at most ``bucket_bytes`` (a larger tensor
    travels alone)."""
    bucket, size = [], 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor.detach().cpu()))
        size += nbytes
    if bucket:
        yield bucket


def pack_bucket(bucket: list[tuple[str, torch.Tensor]]) -> list[tuple]:
    """Tensors as raw byte arrays: Ray moves numpy buffers zero-copy through its object store,
    while pickling torch tensors copies them (measured: 518 MiB took 14 s pickled, see README)."""
    return [(name, str(t.dtype).removeprefix("torch."), tuple(t.shape), t.contiguous().view(torch.uint8).numpy())
            for name, t in bucket]


def unpack_bucket(packed: list[tuple]) -> Iterator[tuple[str, torch.Tensor]]:
    """Views of the received buffers, no copy. Ray hands them out read-only; the tensors are
    only read (copied into the model's parameters or written to a shard), so torch's warning
    about that is muted."""
    for name, dtype, shape, raw in packed:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            flat = torch.frombuffer(raw, dtype=torch.uint8)
        yield name, flat.view(getattr(torch, dtype)).reshape(shape)
