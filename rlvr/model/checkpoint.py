"""Save and load Hugging Face Nemotron-H checkpoints: ``config.json`` + safetensors.

What we write loads in transformers (``AutoModelForCausalLM``) and vLLM; what they write (or a
hub snapshot folder, sharded or not) loads here.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rlvr.model.config import HybridConfig
from rlvr.model.names import PER_EXPERT_RE, canonical_name, checkpoint_items

SHARD_BYTES = 4 * 1024**3


def save_checkpoint(model, path: str | Path, dtype: torch.dtype | None = None) -> None:
    """``config.json`` + ``model.safetensors`` (sharded with an index past 4 GiB)."""
    save_state(model.config, model.state_dict(), path, dtype)


def save_state(hybrid_config, state, path: str | Path, dtype: torch.dtype | None = None) -> None:
    """``save_checkpoint`` of (module name, tensor) pairs, a ``state_dict`` or a stream: where the
    weights exist without their module, as a ZeRO-3 learner's gathered one tensor at a time.
    Streamed: each safetensors shard is written as it fills, so at most one shard (4 GiB) and one
    tensor are held at once (the files are named ``-of-N`` once N is known)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    items = state.items() if isinstance(state, dict) else state
    shards, shard, shard_bytes, total, stored = [], {}, 0, 0, None
    for name, tensor in checkpoint_items(items):
        if hybrid_config.tie_word_embeddings and name == "lm_head.weight":
            continue
        if tensor.is_floating_point():
            stored = stored or tensor.dtype
        to = dtype if dtype is not None and tensor.is_floating_point() and "e_score_correction_bias" not in name else None
        # a copy: a streamed tensor may be a gathered buffer that is freed once the next is read
        tensor = tensor.detach().to(device="cpu", dtype=to, copy=True).contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if shard and shard_bytes + nbytes > SHARD_BYTES:
            shards.append(_write_shard(shard, path, len(shards)))
            shard, shard_bytes = {}, 0
        shard[name] = tensor
        shard_bytes += nbytes
        total += nbytes
    shards.append(_write_shard(shard, path, len(shards)))
    config = hybrid_config.to_dict()
    config["torch_dtype"] = str(dtype or stored).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if len(shards) == 1:
        shards[0][0].rename(path / "model.safetensors")
        return
    weight_map = {}
    for i, (part, names) in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        part.rename(path / fname)
        weight_map.update({k: fname for k in names})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _write_shard(tensors: dict[str, torch.Tensor], path: Path, i: int) -> tuple[Path, list[str]]:
    part = path / f".shard-{i:05d}.part"  # (no .safetensors suffix: a reader never takes it for a shard)
    save_file(tensors, str(part), metadata={"format": "pt"})
    return part, list(tensors)


def read_safetensors(path: Path):
    """(name, tensor) pairs of every safetensors file of a checkpoint folder."""
    for f in _safetensors_files(path):
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


def _safetensors_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors files")
    return files


class CheckpointReader:
    """A checkpoint folder's tensors under our internal names, read one at a time, or a flat
    range of one, straight from the memory-mapped safetensors files: loading a model never
    holds more of the checkpoint than the tensor being copied (Nano: 63 GB on disk, its largest
    tensor 1.3 GB), and a ZeRO-3 rank reads only the rows its partition covers.

    A stacked expert tensor (E, I, d) is read from its E per-expert checkpoint tensors (I, d), or
    from one stacked tensor where the checkpoint has it so (transformers' in-memory layout)."""

    def __init__(self, path: str | Path, skip=(r"^mtp\.",)):
        """``skip``: checkpoint names left out (multi-token-prediction heads: the policy has none)."""
        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise FileNotFoundError(f"{self.path}: no config.json (not a Nemotron-H checkpoint folder)")
        self.config = HybridConfig.from_file(self.path / "config.json")
        # internal name -> its pieces along dim 0: (file, checkpoint key, the piece's shape, stacked?)
        self._pieces: dict[str, list[tuple[Path, str, tuple[int, ...], bool]]] = {}
        experts: dict[str, dict[int, tuple]] = {}
        self.dtype = None
        for f in _safetensors_files(self.path):
            with safe_open(str(f), framework="pt") as handle:
                self._index(f, handle, skip, experts)
        for name, by_index in experts.items():
            if sorted(by_index) != list(range(len(by_index))):
                raise ValueError(f"{self.path}: {name}: expert indices {sorted(by_index)} are not "
                                 f"0..{len(by_index) - 1}")
            self._pieces[name] = [by_index[e] for e in range(len(by_index))]

    def _index(self, f: Path, handle, skip, experts: dict) -> None:
        for key in handle.keys():
            if any(re.match(p, key) for p in skip):
                continue
            tslice = handle.get_slice(key)
            shape = tuple(tslice.get_shape())
            if self.dtype is None and tslice.get_dtype() in _FLOAT_DTYPES:
                self.dtype = _FLOAT_DTYPES[tslice.get_dtype()]
            name = canonical_name(key)
            m = PER_EXPERT_RE.match(name)
            if m:
                experts.setdefault(f"{m.group(1)}.{m.group(3)}", {})[int(m.group(2))] = (f, key, shape, True)
            else:
                self._pieces[name] = [(f, key, shape, False)]

    @staticmethod
    def _read(f: Path, key: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """One tensor (or its rows ``[r0, r1)``), copied out of the file. A file is mapped for
        this read only: pages a long-lived mapping has touched count as the process's resident
        memory (a ZeRO-3 rank would end its load holding its share of the checkpoint twice)."""
        with safe_open(str(f), framework="pt") as handle:
            return handle.get_tensor(key) if rows is None else handle.get_slice(key)[rows[0]:rows[1]]

    @property
    def names(self) -> list[str]:
        return list(self._pieces)

    def shape(self, name: str) -> tuple[int, ...]:
        pieces = self._pieces[name]
        first = pieces[0][2]
        return (len(pieces), *first) if pieces[0][3] else first

    def read(self, name: str) -> torch.Tensor:
        """The whole tensor (as stored)."""
        pieces = [self._read(f, key) for f, key, _, _ in self._pieces[name]]
        return torch.stack(pieces) if self._pieces[name][0][3] else pieces[0]

    def read_flat(self, name: str, start: int, end: int) -> torch.Tensor:
        """Elements ``[start, end)`` of the tensor flattened (row-major), reading only the rows
        that hold them."""
        if start >= end:
            return self.read_flat(name, 0, 1)[:0]  # (empty, in the stored dtype)
        out, pos = [], 0
        for f, key, shape, _ in self._pieces[name]:
            numel = math.prod(shape)
            lo, hi = max(start, pos) - pos, min(end, pos + numel) - pos
            pos += numel
            if lo >= hi:
                continue
            row = numel // shape[0] if shape else 1
            r0, r1 = lo // row, -(-hi // row)
            rows = self._read(f, key, (r0, r1) if shape else None)
            out.append(rows.reshape(-1)[lo - r0 * row:hi - r0 * row])
        return torch.cat(out) if len(out) > 1 else out[0]


_FLOAT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def check_matches(model, reader: CheckpointReader) -> dict[str, torch.Tensor]:
    """The model's tensors that the checkpoint fills (name -> parameter or buffer); raises,
    naming them, on tensors missing from either side or of another shape."""
    targets = dict(model.named_parameters()) | dict(model.named_buffers())
    expected = set(model.state_dict()) & set(targets)  # (persistent buffers only)
    if model.config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing = sorted(expected - set(reader.names))
    unexpected = sorted(set(reader.names) - set(targets))
    if missing or unexpected:
        raise ValueError(f"{reader.path}: checkpoint does not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for name in expected:
        shape = tuple(getattr(targets[name], "ds_shape", targets[name].shape))
        if shape != reader.shape(name):
            raise ValueError(f"{reader.path}: {name}: shape {reader.shape(name)}, the model has {shape}")
    return {name: targets[name] for name in sorted(expected)}


@torch.no_grad()
def load_weights(model, reader: CheckpointReader) -> None:
    """Every tensor of the checkpoint into ``model`` in place, one at a time, each cast to the
    dtype of the tensor it fills."""
    for name, target in check_matches(model, reader).items():
        target.copy_(reader.read(name))


def keep_fp32(model) -> None:
    """Parameters whose precision the SSM/router maths relies on stay fp32 in bf16 models."""
    for name, p in model.named_parameters():
        if name.endswith(("A_log", "D", "dt_bias")):
            p.data = p.data.float()
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.data = b.data.float()
