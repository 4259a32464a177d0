"""Weight transport: from the learner's parameters to the rollout engines.

Two ways, one per ``rollout.weight_transfer`` (the pool in ``rlvr/rollout/workers.py`` drives them):

- **collective** (the default; the second half of this file): a ``torch.distributed`` process
  group of the sender (learner rank 0) and every engine process, gloo on CPUs and NCCL on GPUs,
  built once and rebuilt when a worker is replaced. An update is one byte stream in chunks,
  double-buffered, loaded by each engine as it arrives: no file, no object store, and under
  ZeRO-3 each parameter gathered to the sender alone. Where every receiver shares the sender's
  node, the chunk buffers are shared memory and the group carries only signals; where the
  learner's ranks share it too, the engines read the ranks' own memory and nothing is streamed
  (the mapped channel, at the end of this file).
- **disk** (the slow path, for engines that cannot join a group): a *transaction* on the engine
  side: ``begin_weight_update()``, any number of ``load_weight_bucket(named_tensors)`` calls
  (each a slice of the checkpoint, in checkpoint names), then ``finish_weight_update(version)``.
  vLLM writes each bucket as a shard and reloads once at the end (reloading after every bucket
  from a partial checkpoint gave NaN log-probs). Buckets cross Ray as raw byte arrays
  (``pack_bucket``), which the object store moves without pickling the tensors.
  ``update_weights`` runs the same three steps in-process, for callers that hold an engine.

Either way neither side ever holds a full second copy of the weights.
"""

from __future__ import annotations

import dataclasses
import datetime
import base64
import math
import mmap
import os
import pickle
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import torch
import torch.distributed as dist

NamedTensors = Iterable[tuple[str, torch.Tensor]]


class WeightReceiver(Protocol):
    """The engine side of a weight update (implemented by every rollout engine): through the
    transfer group (``join_weight_group`` once per group generation, then ``receive_weights`` per
    update), or bucket by bucket from the caller (the disk path, and in-process updates)."""

    weights_version: int

    def weight_group_ranks(self) -> int: ...  # the processes of the engine that join the group

    def can_map_weights(self, endpoint: dict) -> bool: ...

    def join_weight_group(self, endpoint: dict, first_rank: int, size: int, group: str, mode: str) -> None: ...

    def receive_weights(self, update: dict, version: int) -> None: ...  # a Layout's dict, or a mapped update

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


# -- The collective transport: a process group between the sender and every engine process.
#
# A weight update travels as one byte stream: the tensors laid end to end in ``Layout`` order
# (each at a 64-byte offset, so every one is a valid view of the stream), cut into chunks of
# ``chunk_bytes``. A tensor may span chunks (the embedding of Nano is 11 chunks of 64 MiB): the
# sender's two chunk buffers stay the same size whatever the model, and the receiver assembles a
# spanning tensor in a staging copy. The sender fills chunk k+1 while chunk k is in flight.
#
# The stream takes one of two channels, chosen once per group (``RolloutPool`` asks every
# receiver whether it can map the sender's memory; the third channel, mapped, is at the end):
# - "broadcast": the chunk itself goes through the group's broadcast (gloo on CPUs, NCCL on GPUs).
# - "shared": the two chunk buffers are shared memory that every receiver maps (an anonymous
#   ``memfd`` on a CPU node, a CUDA-IPC handle on one GPU: docs/weight-sync.md), so
#   the group carries only "chunk k is ready" and "chunk k is consumed" signals and the bytes are
#   copied once, from the buffer into the engine's parameters.
# Both run the same collective sequence on every rank: A0, then for each k: A(k+1), R(k), where
# A(k) = "chunk k ready" (a broadcast from the sender: the data, or a 1-element signal) and R(k) =
# "chunk k consumed" (shared only: an all-reduce of one element; with broadcast the receive into
# a buffer is its own release). gloo and NCCL match collectives by their order, so the order is
# the protocol.

ALIGN = 64


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one tensor lies in the update's byte stream."""

    name: str
    dtype: str  # torch dtype name without the "torch." prefix
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class Layout:
    """Every tensor of an update in order, and the chunking of their byte stream; the sender
    computes it from metadata alone, the receivers follow it."""

    slots: tuple[Slot, ...]
    chunk_bytes: int

    @classmethod
    def of(cls, metas: Iterable[tuple[str, torch.dtype, tuple[int, ...]]], chunk_bytes: int) -> Layout:
        if chunk_bytes < ALIGN or chunk_bytes % ALIGN:
            raise ValueError(f"rollout.sync_bucket_bytes: {chunk_bytes} is not a positive multiple of {ALIGN}")
        slots, offset = [], 0
        for name, dtype, shape in metas:
            slot = Slot(name, str(dtype).removeprefix("torch."), tuple(shape), offset)
            slots.append(slot)
            offset += -(-slot.nbytes // ALIGN) * ALIGN
        return cls(tuple(slots), chunk_bytes)

    @property
    def total_bytes(self) -> int:
        last = self.slots[-1] if self.slots else None
        return 0 if last is None else last.offset + last.nbytes

    @property
    def num_chunks(self) -> int:
        return -(-self.total_bytes // self.chunk_bytes)

    def chunk_size(self, k: int) -> int:
        return min(self.chunk_bytes, self.total_bytes - k * self.chunk_bytes)

    def to_dict(self) -> dict:  # (plain values: they cross vLLM's RPC, which takes no dataclasses)
        return {"chunk_bytes": self.chunk_bytes, "slots": [[s.name, s.dtype, list(s.shape), s.offset] for s in self.slots]}

    @classmethod
    def from_dict(cls, d: dict) -> Layout:
        return cls(tuple(Slot(n, dt, tuple(shape), off) for n, dt, shape, off in d["slots"]), d["chunk_bytes"])


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """How a receiver reaches the sender: its store, and (same node) its shared chunk buffers."""

    host: str
    port: int
    shared: str  # the handle of the sender's shared chunk buffers ("pid:fd" of a memfd, or CUDA IPC)
    nonce: str  # (hex) written at the start of the shared buffers: a receiver that reads it maps them
    backend: str  # "gloo" | "nccl"
    chunk_bytes: int  # the size of each of the sender's two chunk buffers

    def to_dict(self) -> dict:  # (plain values: they cross vLLM's RPC, which takes no dataclasses)
        return dataclasses.asdict(self)


def _broadcast_options() -> dist.BroadcastOptions:
    opts = dist.BroadcastOptions()
    opts.rootRank, opts.rootTensor = 0, 0
    return opts


class _Group:
    """One generation of the transfer group (rank 0: the sender); rebuilt, never repaired, when
    a member is replaced."""

    def __init__(self, store: dist.Store, endpoint: Endpoint, rank: int, size: int, group: str,
                 timeout_s: float):
        prefixed = dist.PrefixStore(f"rlvr-weights/{group}", store)
        timeout = datetime.timedelta(seconds=timeout_s)
        if endpoint.backend == "nccl":
            self.pg = dist.ProcessGroupNCCL(prefixed, rank, size, dist.ProcessGroupNCCL.Options())
        else:
            self.pg = dist.ProcessGroupGloo(prefixed, rank, size, timeout)
        # the signals of the shared channel travel on the CPU even where the data is on a GPU
        self.signals = self.pg if endpoint.backend == "gloo" else dist.ProcessGroupGloo(
            dist.PrefixStore("signals", prefixed), rank, size, timeout)
        self.rank, self.size = rank, size

    def ready(self, tensor: torch.Tensor):  # A(k)
        return self.pg.broadcast([tensor], _broadcast_options())

    def signal(self, k: int, written: torch.Tensor | None = None):  # A(k) on the shared channel
        if written is not None:  # (the sender: the chunk is complete in the buffer first)
            _settle(written)
        return self.signals.broadcast([torch.tensor([k], dtype=torch.int64)], _broadcast_options())

    def abort(self) -> None:
        """Close every connection now: the other members' pending collectives fail at once,
        rather than at the timeout (each failed member aborts in turn)."""
        for pg in {id(self.pg): self.pg, id(self.signals): self.signals}.values():
            try:
                pg.abort()
            except RuntimeError:  # (a backend without abort: its connections go with the object)
                pass

    def consumed(self, read: torch.Tensor | None = None):  # R(k)
        if read is not None:  # (a receiver: its reads of the chunk are complete first)
            _settle(read)
        return self.signals.allreduce([torch.zeros(1)])


class _SharedBuffers:
    """Two chunk buffers (after an ALIGN-byte header) that receivers on the sender's node map:
    - host: an anonymous ``memfd``, opened by receivers through /proc/<pid>/fd/<fd> (no file in
      any folder; the memory goes when the last process unmaps it);
    - CUDA: one device allocation, opened by receivers on the same GPU from its CUDA-IPC handle
      (``torch.multiprocessing``'s, pickled), so chunks go device to device with no host copy.
    The header holds a nonce, which a receiver reads back to prove that it mapped this sender's
    buffers. ``handle`` (a receiver's): the sender's ``self.handle``."""

    def __init__(self, chunk_bytes: int, device: torch.device, handle: str | None = None):
        size = ALIGN + 2 * chunk_bytes
        self.fd = self.map = None
        if device.type == "cuda":
            from torch.multiprocessing.reductions import rebuild_cuda_tensor, reduce_tensor

            if handle is None:
                raw = torch.empty(size, dtype=torch.uint8, device=device)
                handle = "cuda:" + base64.b64encode(pickle.dumps(reduce_tensor(raw)[1])).decode()
            else:
                raw = rebuild_cuda_tensor(*pickle.loads(base64.b64decode(handle.removeprefix("cuda:"))))
        else:
            if handle is None:
                self.fd = os.memfd_create("rlvr-weights", os.MFD_CLOEXEC)
                os.ftruncate(self.fd, size)
                handle = f"{os.getpid()}:{self.fd}"
            else:
                pid, fd = handle.split(":")
                self.fd = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR)
            self.map = mmap.mmap(self.fd, size)
            raw = torch.frombuffer(self.map, dtype=torch.uint8)
        self.handle = handle
        self.header = raw[:ALIGN]
        self.chunks = [raw[ALIGN + i * chunk_bytes:ALIGN + (i + 1) * chunk_bytes] for i in range(2)]

    def close(self) -> None:
        self.header = self.chunks = None
        if self.fd is not None:
            os.close(self.fd)
            try:
                self.map.close()
            except BufferError:  # a view of the buffers is still alive: unmapped when it goes
                pass


def _handle_device(handle: str) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if handle.startswith("cuda:") else torch.device("cpu")


def _settle(tensor: torch.Tensor) -> None:
    """Wait for the device's work on ``tensor``: a shared buffer's readers and writers are in
    other processes, which see only what has completed."""
    if tensor.is_cuda:
        torch.cuda.current_stream(tensor.device).synchronize()


class WeightSender:
    """The sending end, in the process that holds the weights (learner rank 0, or a driver)."""

    def __init__(self, chunk_bytes: int, host: str, backend: str = "gloo", device: str = "cpu",
                 timeout_s: float = 60.0):
        self.chunk_bytes, self.device, self.timeout_s = chunk_bytes, torch.device(device), timeout_s
        self.store = dist.TCPStore("0.0.0.0", 0, is_master=True, wait_for_workers=False,
                                   timeout=datetime.timedelta(seconds=timeout_s))
        self.shared = _SharedBuffers(chunk_bytes, self.device)
        nonce = os.urandom(16)
        if self.shared is not None:
            self.shared.header[:16].copy_(torch.frombuffer(bytearray(nonce), dtype=torch.uint8).to(self.device))
        nonce = nonce.hex()
        self.endpoint = Endpoint(host, self.store.port, self.shared.handle, nonce, backend, chunk_bytes)
        # chunk buffers of the broadcast channel: on the GPU under NCCL; pinned host memory where a
        # GPU exists but the data is on the host; else plain
        pin = self.device.type == "cpu" and torch.cuda.is_available()
        self.buffers = [torch.empty(chunk_bytes, dtype=torch.uint8, device=self.device, pin_memory=pin)
                        for _ in range(2)]
        self.group, self.mode = None, None

    def connect(self, size: int, group: str, mode: str) -> None:
        """Join the group named ``group`` as rank 0 (every receiver joins at the same
        time: the group's construction is a rendezvous)."""
        self.group = _Group(self.store, self.endpoint, 0, size, group, self.timeout_s)
        self.mode = mode

    def send(self, layout: Layout, items: Iterable[tuple[str, torch.Tensor]]) -> None:
        """One update: ``items`` (name, tensor) in ``layout`` order. Every item is consumed even
        when the transport fails (they may be collectives of the learner's ranks, which must not
        be left waiting), and the first failure is raised at the end."""
        chunks = _fill(layout, _runs(layout, items), self.shared.chunks if self.mode == "shared" else self.buffers)
        try:
            _send(self.group, layout, chunks, self.mode == "shared")
        except Exception:
            # closing the group's connections makes the receivers fail now rather than at the
            # timeout; the pool builds a new group
            self.group.abort()
            self.group = None
            for _ in chunks:  # drain: the remaining gathers still run on every learner rank
                pass
            raise

    def close(self) -> None:
        self.group = None
        if self.shared is not None:
            self.shared.close()


Run = tuple[int, torch.Tensor]  # (offset in the stream, raw bytes: a flat uint8 tensor)


def _runs(layout: Layout, items: Iterable[tuple[str, torch.Tensor]]) -> Iterator[Run]:
    """Whole tensors, checked against the layout, as runs of the stream."""
    slots = iter(layout.slots)
    for name, tensor in items:
        slot = next(slots, None)
        if slot is None or slot.name != name or tuple(tensor.shape) != slot.shape or str(tensor.dtype) != f"torch.{slot.dtype}":
            raise RuntimeError(f"weight sync: got {name} {tuple(tensor.shape)} {tensor.dtype}, the layout has {slot}")
        yield slot.offset, tensor.detach().contiguous().view(-1).view(torch.uint8)
    if next(slots, None) is not None:
        raise RuntimeError("weight sync: the sender ran out of tensors before the layout did")


def _fill(layout: Layout, runs: Iterable[Run], buffers: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The stream's chunks, chunk k written into ``buffers[k % 2]`` from ``runs`` (in offset
    order: all of the stream, or one writer's share of it); the caller must be done with a
    buffer's last chunk before asking for the next chunk into it."""
    chunk, k = layout.chunk_bytes, 0
    for position, raw in runs:
        done = 0
        while done < raw.numel():
            while position >= (k + 1) * chunk:  # this chunk is full: hand it over
                yield buffers[k % 2][:chunk]
                k += 1
            start = position - k * chunk
            n = min(chunk - start, raw.numel() - done)
            buffers[k % 2][start:start + n].copy_(raw[done:done + n])
            done, position = done + n, position + n
    while k < layout.num_chunks:
        yield buffers[k % 2][:layout.chunk_size(k)]
        k += 1


def _send(group: _Group, layout: Layout, chunks: Iterator[torch.Tensor], shared: bool) -> None:
    """The sender's half of the sequence A0, then A(k+1), R(k) for each k."""
    n = layout.num_chunks
    if n == 0:
        return
    if shared:
        ready = lambda k, chunk: group.signal(k, chunk)  # noqa: E731
    else:
        ready = lambda k, chunk: group.ready(chunk)  # noqa: E731
    sent = [ready(0, next(chunks))]
    consumed = []
    for k in range(n):
        if k + 1 < n:
            if shared and k >= 1:
                consumed.pop(0).wait()  # R(k-1): buffer (k+1) % 2 is free again
            elif not shared and k >= 1:
                sent.pop(0).wait()  # A(k-1) sent: buffer (k+1) % 2 is free again
            sent.append(ready(k + 1, next(chunks)))
        if shared:
            consumed.append(group.consumed())
    for work in sent + consumed:
        work.wait()


class GroupReceiver:
    """The receiving end, in each engine process (a builtin rollout worker, each vLLM worker)."""

    def __init__(self, endpoint: Endpoint, rank: int, size: int, group: str, mode: str,
                 device: str = "cpu", timeout_s: float = 60.0):
        chunk_bytes = endpoint.chunk_bytes
        self.store = dist.TCPStore(endpoint.host, endpoint.port, is_master=False,
                                   timeout=datetime.timedelta(seconds=timeout_s))
        self.mode, self.device = mode, torch.device(device)
        self.shared = _SharedBuffers(chunk_bytes, self.device, endpoint.shared) if mode == "shared" else None
        self.buffers = None if self.shared else [torch.empty(chunk_bytes, dtype=torch.uint8, device=self.device)
                                                 for _ in range(2)]
        self.group = _Group(self.store, endpoint, rank, size, group, timeout_s)

    def receive(self, layout: Layout, load: Callable[[list[tuple[str, torch.Tensor]]], None]) -> int:
        """One update into ``load`` (called with the tensors each chunk completes; views of a
        buffer that will be overwritten, so ``load`` copies what it keeps). Returns the bytes
        received."""
        n = layout.num_chunks
        buffers = self.shared.chunks if self.shared else self.buffers
        assemble = _Assembler(layout)
        self.wait_s = 0.0  # (of this update: the time spent waiting for the sender's chunks)
        try:
            posted = [self._ready(0, layout, buffers)] if n else []
            for k in range(n):
                start = time.perf_counter()
                posted.pop(0).wait()
                self.wait_s += time.perf_counter() - start
                if k + 1 < n:
                    posted.append(self._ready(k + 1, layout, buffers))
                load(assemble.chunk(k, buffers[k % 2][:layout.chunk_size(k)]))
                if self.shared:
                    self.group.consumed(buffers[k % 2]).wait()
        except Exception:  # (a member is gone: the others must not wait for this one either)
            self.group.abort()
            raise
        return layout.total_bytes

    def _ready(self, k: int, layout: Layout, buffers: list[torch.Tensor]):
        if self.shared:
            return self.group.signal(k)
        return self.group.ready(buffers[k % 2][:layout.chunk_size(k)])

    def close(self) -> None:
        self.group = None
        if self.shared is not None:
            self.shared.close()


def can_map(endpoint: Endpoint) -> bool:
    """Whether this process can map the sender's shared buffers (same node, same PID namespace,
    allowed to open its fds): the test is to read the nonce back."""
    try:
        shared = _SharedBuffers(endpoint.chunk_bytes, _handle_device(endpoint.shared), endpoint.shared)
    except (OSError, RuntimeError, ValueError):  # (another node, PID namespace or GPU)
        return False
    try:
        return bytes(shared.header[:16].cpu().tolist()).hex() == endpoint.nonce
    finally:
        shared.close()


class _Assembler:
    """Turns chunks back into tensors: views of the chunk where a tensor lies inside it, a
    staging copy for one that spans chunks."""

    def __init__(self, layout: Layout):
        self.layout, self.next = layout, 0
        self.staging: torch.Tensor | None = None  # the bytes of the tensor being assembled

    def chunk(self, k: int, data: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        lo, hi = k * self.layout.chunk_bytes, k * self.layout.chunk_bytes + data.numel()
        out = []
        slots = self.layout.slots
        while self.next < len(slots) and (slots[self.next].offset < hi or
                                          slots[self.next].nbytes == 0 and slots[self.next].offset <= hi):
            slot = slots[self.next]
            start, end = max(slot.offset, lo), min(slot.offset + slot.nbytes, hi)
            if slot.offset >= lo and slot.offset + slot.nbytes <= hi:
                out.append((slot.name, _typed(data[slot.offset - lo:slot.offset - lo + slot.nbytes], slot)))
            else:
                if self.staging is None:
                    self.staging = torch.empty(slot.nbytes, dtype=torch.uint8, device=data.device)
                self.staging[start - slot.offset:end - slot.offset].copy_(data[start - lo:end - lo])
                if end < slot.offset + slot.nbytes:
                    break  # continues in the next chunk
                out.append((slot.name, _typed(self.staging, slot)))
                self.staging = None
            self.next += 1
        return out


def _typed(raw: torch.Tensor, slot: Slot) -> torch.Tensor:
    return raw.view(_dtype(slot.dtype)).view(slot.shape)


# -- The mapped channel: receivers read the sender's own parameter memory.
#
# Where the learner's ranks and the engines share a node, the update needs no stream at all: each
# rank moves the storages of its parameters (its ZeRO-3 partitions, or the whole module on rank 0)
# into shared memory, in place, once (``share``: every view of them stays valid, DeepSpeed's
# included), and publishes where each checkpoint tensor's pieces lie in them (``MappedUpdate``).
# A receiver maps those storages (once per handle) and copies the pieces straight into its
# parameters: one copy of the weights in all, against two for a chunk stream. The learner must not
# step while engines read, which the synchronous loop guarantees (the pool's update returns when
# every engine has read). On one GPU the same handles are CUDA-IPC ones (docs/weight-sync.md).


def share(tensor: torch.Tensor) -> tuple[str, int]:
    """(handle, size in bytes) of ``tensor``'s storage, first moved into shared memory if it is not
    (in place). Host: "pid:fd" of the storage's unlinked shared-memory file."""
    storage = tensor.untyped_storage()
    if tensor.is_cuda:
        from torch.multiprocessing.reductions import reduce_tensor

        whole = torch.empty(0, dtype=torch.uint8, device=tensor.device).set_(storage)
        return "cuda:" + base64.b64encode(pickle.dumps(reduce_tensor(whole)[1])).decode(), storage.nbytes()
    if not storage.is_shared():
        storage.share_memory_()
    fd, size = storage._share_fd_cpu_()
    return f"{os.getpid()}:{fd}", size


def mapped_piece(name: str, start: int, tensor: torch.Tensor) -> tuple[list, str, int]:
    """A contiguous ``tensor`` holding elements ``[start, start + numel)`` of checkpoint tensor
    ``name`` (flattened), as a piece of a mapped update: ([name, start, numel, handle, byte
    offset], handle, storage size); its storage is shared on the way."""
    handle, size = share(tensor)
    return [name, start, tensor.numel(), handle, tensor.storage_offset() * tensor.element_size()], handle, size


def mapped_update(tensors: Iterable[tuple[str, torch.dtype, tuple[int, ...]]], pieces: Iterable[list],
                  storages: dict[str, int]) -> dict:
    """An update for ``MappedReader.read``: every tensor (name, dtype, shape) in order, and the
    pieces that make each (from every sender, in any order), as plain values."""
    tensors = [[n, str(d).removeprefix("torch."), list(shape)] for n, d, shape in tensors]
    order = {t[0]: i for i, t in enumerate(tensors)}
    return {"kind": "mapped", "tensors": tensors, "storages": storages,
            "pieces": sorted(pieces, key=lambda p: (order[p[0]], p[1]))}


def split_update(update: dict, max_bytes: int) -> Iterator[dict]:
    """``update`` as consecutive updates of at most ``max_bytes`` of tensors each (a larger tensor
    alone): for a receiver that must stage what it reads."""
    part, size, pieces = [], 0, iter(update["pieces"])
    piece = next(pieces, None)
    for name, dtype, shape in update["tensors"]:
        nbytes = math.prod(shape) * _dtype(dtype).itemsize
        if part and size + nbytes > max_bytes:
            yield update | {"tensors": [t for t, _ in part], "pieces": [p for _, ps in part for p in ps]}
            part, size = [], 0
        own = []
        while piece is not None and piece[0] == name:
            own.append(piece)
            piece = next(pieces, None)
        part.append(([name, dtype, shape], own))
        size += nbytes
    if part:
        yield update | {"tensors": [t for t, _ in part], "pieces": [p for _, ps in part for p in ps]}


class MappedReader:
    """A receiver's end of the mapped channel: its mappings of the senders' storages, kept across
    updates (a handle no longer published is unmapped)."""

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        self.maps: dict[str, tuple[torch.Tensor, object]] = {}  # handle -> (bytes, what keeps them mapped)

    def read(self, update: dict, into: Callable[[str, torch.dtype, tuple[int, ...]], torch.Tensor]) -> int:
        """Copy every tensor of ``update`` (``MappedUpdate.to_dict``) into ``into(name, dtype,
        shape)`` (a contiguous tensor of that shape: the engine's parameter, or a staging tensor).
        Returns the bytes copied."""
        for handle in set(self.maps) - set(update["storages"]):
            self._unmap(handle)
        for handle, size in update["storages"].items():
            if handle not in self.maps:
                self.maps[handle] = _map(handle, size, self.device)
        copied = 0
        pieces = iter(update["pieces"])
        piece = next(pieces, None)
        for name, dtype, shape in update["tensors"]:
            dtype = _dtype(dtype)
            dst = into(name, dtype, tuple(shape))
            if tuple(dst.shape) != tuple(shape) or not dst.is_contiguous():
                raise ValueError(f"weight sync: {name} is {tuple(shape)}, the engine's is {tuple(dst.shape)}")
            flat = dst.view(-1)
            while piece is not None and piece[0] == name:
                _, start, numel, handle, offset = piece
                src = self.maps[handle][0][offset:offset + numel * dtype.itemsize]
                flat[start:start + numel].copy_(src.view(dtype))
                copied += numel * dtype.itemsize
                piece = next(pieces, None)
        return copied

    def _unmap(self, handle: str) -> None:
        _, keep = self.maps.pop(handle)
        if isinstance(keep, mmap.mmap):
            try:
                keep.close()
            except BufferError:  # (a view is still alive: unmapped when it goes)
                pass

    def close(self) -> None:
        for handle in list(self.maps):
            self._unmap(handle)


def _map(handle: str, size: int, device: torch.device) -> tuple[torch.Tensor, object]:
    """(uint8 tensor over the storage ``handle``, the object that keeps it mapped)."""
    if handle.startswith("cuda:"):
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        raw = rebuild_cuda_tensor(*pickle.loads(base64.b64decode(handle.removeprefix("cuda:"))))
        return raw, raw
    pid, fd = handle.split(":")
    own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY)
    try:
        mapping = mmap.mmap(own, size, prot=mmap.PROT_READ)
    finally:
        os.close(own)
    with warnings.catch_warnings():  # (read only, and only read)
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        return torch.frombuffer(mapping, dtype=torch.uint8), mapping
