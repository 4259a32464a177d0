"""Weight transfer on a GPU node: two processes exchange a bucket set through the transport of
``rlvr/rollout/weights.py``, over CUDA IPC (the "shared" channel) and over NCCL ("broadcast").

    python benchmarks/gpu_weight_transfer.py [--gib 6] [--chunk-mib 256]

The sender (this process, cuda:0) holds ``--gib`` of bf16 tensors shaped like Nano's: one
131072 x 2688 embedding (704 MB, which spans chunks) and 64 MiB matrices for the rest. A spawned
receiver on the last visible GPU (cuda:0 too when there is one) receives each update into its own
preallocated tensors, as an engine loads its parameters (``copy_`` per tensor), then checks them.
One untimed update builds each group; then ``--repeats`` timed ones. NCCL refuses two ranks on
one device ("Duplicate GPU"): with a single GPU its row records that error, which is why
colocated engines take CUDA IPC. Needs torch with CUDA only (no Ray, vLLM or DeepSpeed).
The last stdout line is JSON: per channel, seconds per update and GB/s, or the error.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
import uuid

import torch

from rlvr.rollout.weights import Endpoint, GroupReceiver, Layout, WeightSender


def _tensors(gib: float, device: str) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator(device=device).manual_seed(0)
    out = [("embeddings", torch.randn(131072, 2688, generator=g, device=device, dtype=torch.bfloat16))]
    left = int(gib * 2**30) - out[0][1].numel() * 2
    for i in range(max(0, left // 2**26)):
        out.append((f"layer.{i}.weight", torch.randn(4096, 8192, generator=g, device=device, dtype=torch.bfloat16)))
    return out


def _receive(endpoint: dict, group: str, mode: str, layout: dict, repeats: int, queue) -> None:
    device = f"cuda:{torch.cuda.device_count() - 1}"
    torch.cuda.set_device(device)
    layout = Layout.from_dict(layout)
    params = {s.name: torch.empty(s.shape, dtype=getattr(torch, s.dtype), device=device) for s in layout.slots}
    try:
        receiver = GroupReceiver(Endpoint(**endpoint), 1, 2, group, mode, device=device)
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            receiver.receive(layout, lambda items: [params[n].copy_(t) for n, t in items])
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        want = _tensors(0, device)[0][1]  # (the embedding, regenerated from its seed)
        queue.put({"seconds": times[1:], "exact": bool(torch.equal(params["embeddings"], want))})
        receiver.close()
    except Exception as e:  # noqa: BLE001 (reported in the JSON)
        queue.put({"error": f"{type(e).__name__}: {e}"[:500]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=6.0)
    ap.add_argument("--chunk-mib", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.cuda.set_device(0)
    tensors = _tensors(args.gib, "cuda:0")
    layout = Layout.of([(n, t.dtype, t.shape) for n, t in tensors], args.chunk_mib * 2**20)
    result = {"gpus": torch.cuda.device_count(), "device": torch.cuda.get_device_name(0),
              "bytes": layout.total_bytes, "chunk_mib": args.chunk_mib}
    ctx = mp.get_context("spawn")
    for mode, backend in (("shared", "gloo"), ("broadcast", "nccl")):
        sender = WeightSender(layout.chunk_bytes, "127.0.0.1", backend=backend, device="cuda:0", timeout_s=120)
        group, queue = uuid.uuid4().hex, ctx.Queue()
        proc = ctx.Process(target=_receive, args=(sender.endpoint.to_dict(), group, mode, layout.to_dict(),
                                                  args.repeats, queue))
        proc.start()
        row = {}
        try:
            sender.connect(2, group, mode)
            for _ in range(args.repeats + 1):
                sender.send(layout, iter(tensors))
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 (reported in the JSON)
            row["sender_error"] = f"{type(e).__name__}: {e}"[:500]
        try:
            got = queue.get(timeout=180)
        except Exception as e:  # noqa: BLE001
            got = {"error": f"no answer from the receiver: {type(e).__name__}"}
        proc.join(30)
        if proc.is_alive():
            proc.kill()
        sender.close()
        if "seconds" in got:
            best = min(got["seconds"])
            row.update(seconds=round(best, 4), gb_per_s=round(layout.total_bytes / best / 1e9, 1), exact=got["exact"])
        else:
            row.update(got)
        result["cuda_ipc" if mode == "shared" else "nccl"] = row
        print(mode, row, flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
