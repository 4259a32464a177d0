"""The collective weight transport (rlvr/rollout/weights.py) between real processes: a sender
here, receivers spawned, over gloo, on both channels."""

import multiprocessing as mp
import uuid

import pytest
import torch

from rlvr.rollout.weights import (ALIGN, Endpoint, GroupReceiver, Layout, MappedReader, WeightSender, _Assembler, can_map,
                                  mapped_piece, mapped_update, split_update)


def _tensors():
    g = torch.Generator().manual_seed(0)
    return [("a", torch.randn(1000, generator=g)), ("b", torch.randn(3, 70, generator=g).bfloat16()),
            ("big", torch.randn(5000, generator=g)),  # spans five 4 KiB chunks
            ("ids", torch.arange(7)), ("empty", torch.zeros(0, 4))]


def test_layout_aligns_every_tensor_and_chunks_the_stream():
    layout = Layout.of([(n, t.dtype, t.shape) for n, t in _tensors()], 4096)
    assert all(s.offset % ALIGN == 0 for s in layout.slots)
    assert layout.total_bytes == layout.slots[-1].offset  # (the last tensor is empty)
    assert layout.num_chunks == -(-layout.total_bytes // 4096)
    assert Layout.from_dict(layout.to_dict()) == layout
    with pytest.raises(ValueError, match="sync_bucket_bytes"):
        Layout.of([], 1000)


def test_assembler_returns_every_tensor_whole_from_its_chunks():
    tensors = _tensors()
    layout = Layout.of([(n, t.dtype, t.shape) for n, t in tensors], 4096)
    stream = torch.zeros(layout.total_bytes, dtype=torch.uint8)
    for slot, (_, t) in zip(layout.slots, tensors):
        stream[slot.offset:slot.offset + slot.nbytes] = t.contiguous().view(-1).view(torch.uint8)
    assemble, got = _Assembler(layout), {}
    for k in range(layout.num_chunks):
        got.update((n, t.clone()) for n, t in assemble.chunk(k, stream[k * 4096:(k + 1) * 4096].clone()))
    assert got.keys() == {n for n, _ in tensors}
    assert all(torch.equal(got[n], t) for n, t in tensors)


def _receive(endpoint: dict, rank: int, size: int, group: str, mode: str, layout: dict, queue) -> None:
    receiver = GroupReceiver(Endpoint(**endpoint), rank, size, group, mode)
    got = {}
    for _ in range(2):  # two updates over one group
        receiver.receive(Layout.from_dict(layout), lambda items: got.update((n, t.clone()) for n, t in items))
        queue.put(got.copy())
    receiver.close()


@pytest.mark.parametrize("mode", ["shared", "broadcast"])
def test_two_receivers_get_two_updates_exactly(mode):
    tensors = _tensors()
    layout = Layout.of([(n, t.dtype, t.shape) for n, t in tensors], 4096)
    sender = WeightSender(4096, "127.0.0.1")
    assert can_map(sender.endpoint)
    ctx, name = mp.get_context("spawn"), uuid.uuid4().hex
    queue = ctx.Queue()
    procs = [ctx.Process(target=_receive, args=(sender.endpoint.to_dict(), r, 3, name, mode, layout.to_dict(), queue))
             for r in (1, 2)]
    for p in procs:
        p.start()
    try:
        sender.connect(3, name, mode)
        sender.send(layout, iter(tensors))
        second = [(n, t + 1 if t.is_floating_point() else t) for n, t in tensors]
        sender.send(layout, iter(second))
        results = [queue.get(timeout=60) for _ in range(4)]
    finally:
        for p in procs:
            p.join(30)
        sender.close()
    firsts = [r for r in results if torch.equal(r["a"], tensors[0][1])]
    seconds = [r for r in results if torch.equal(r["a"], second[0][1])]
    assert len(firsts) == len(seconds) == 2
    for want, got in [(tensors, r) for r in firsts] + [(second, r) for r in seconds]:
        assert all(torch.equal(got[n], t) for n, t in want)


def test_sender_refuses_tensors_that_do_not_match_the_layout():
    tensors = _tensors()
    layout = Layout.of([(n, t.dtype, t.shape) for n, t in tensors], 4096)
    sender = WeightSender(4096, "127.0.0.1")
    sender.connect(1, uuid.uuid4().hex, "broadcast")  # (a group of the sender alone)
    try:
        with pytest.raises(RuntimeError, match="got b .* the layout has"):
            sender.send(layout, iter([tensors[0], ("b", tensors[1][1].float())] + tensors[2:]))
    finally:
        sender.close()


def test_a_handle_from_elsewhere_cannot_be_mapped():
    sender = WeightSender(4096, "127.0.0.1")
    try:
        endpoint = sender.endpoint.to_dict()
        assert not can_map(Endpoint(**(endpoint | {"nonce": "00" * 16})))  # (someone else's buffers)
        assert not can_map(Endpoint(**(endpoint | {"shared": "999999999:3"})))  # (no such process)
    finally:
        sender.close()


def test_a_mapped_update_reads_every_piece_from_shared_storage_in_place():
    """Two "ranks" each hold half of a flattened tensor (as ZeRO-3 partitions) and one holds a
    whole one; a reader assembles both from the shared storages, casting to its own dtype."""
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(6, 5, generator=g).bfloat16(), torch.randn(7, generator=g).bfloat16()
    rank0, rank1 = w.view(-1)[:16].clone(), w.view(-1)[16:].clone()  # (the partitions: storages of their own)
    pieces, storages = [], {}
    for name, start, t in [("w", 0, rank0), ("w", 16, rank1), ("b", 0, b)]:
        piece, handle, size = mapped_piece(name, start, t)
        pieces.append(piece)
        storages[handle] = size
    assert rank0.is_shared() and b.is_shared()  # (moved in place: the tensors still hold their values)
    update = mapped_update([("b", torch.bfloat16, (7,)), ("w", torch.bfloat16, (6, 5))], pieces[::-1], storages)
    params = {"w": torch.zeros(6, 5), "b": torch.zeros(7)}  # an fp32 engine
    reader = MappedReader()
    assert reader.read(update, lambda name, dtype, shape: params[name]) == (30 + 7) * 2
    assert torch.equal(params["w"], w.float()) and torch.equal(params["b"], b.float())
    rank1.mul_(2)  # the learner steps: the next read sees it, with nothing sent
    reader.read(update, lambda name, dtype, shape: params[name])
    assert torch.equal(params["w"].view(-1)[16:], (w.view(-1)[16:] * 2).float())
    with pytest.raises(ValueError, match="the engine's is"):
        reader.read(update, lambda name, dtype, shape: torch.zeros(3))
    reader.close()
    parts = list(split_update(update, 20))  # (b: 14 bytes, w: 60 bytes, alone)
    assert [[t[0] for t in p["tensors"]] for p in parts] == [["b"], ["w"]]
    assert [len(p["pieces"]) for p in parts] == [1, 2]
