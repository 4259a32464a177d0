"""Inference caches: per Mamba layer a conv window and an SSM state (constant size: decoding is
O(1) per token there), per attention layer a KV cache with a length per batch row.

Rows may hold sequences of different lengths (right-padded batched prefill, continuous
batching); ``lengths`` says how many key/value slots of each row are real, and decode writes each
row's new entry at its own position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlvr.model.config import HybridConfig


class MambaCache:
    def __init__(self, config: HybridConfig):
        self.kernel = config.conv_kernel
        self.conv_state: torch.Tensor | None = None  # (batch, kernel - 1, conv_dim) fp32, oldest first
        self.ssm_state: torch.Tensor | None = None  # (batch, nheads, headdim, dstate), fp32

    @property
    def filled(self) -> bool:
        return self.ssm_state is not None

    def store(self, conv_input: torch.Tensor, ssm_state: torch.Tensor,
              lengths: torch.Tensor | None = None) -> None:
        """conv_input (batch, L, conv_dim): the xBC inputs of this chunk, after any previous
        window. Keep each row's last kernel-1 real ones (zeros before a short prompt), in fp32
        and contiguous: decode kernels update both states in place."""
        k = self.kernel - 1
        padded = F.pad(conv_input.float(), (0, 0, k, 0))  # (b, k + L, ch)
        if lengths is None:
            self.conv_state = padded[:, -k:].contiguous()
        else:
            idx = lengths[:, None] + torch.arange(k, device=lengths.device)  # window ends at row length
            self.conv_state = padded.gather(1, idx[:, :, None].expand(-1, -1, padded.shape[2]))
        self.ssm_state = ssm_state.float().contiguous()

    def select(self, rows: torch.Tensor) -> None:
        self.conv_state, self.ssm_state = self.conv_state[rows], self.ssm_state[rows]

    def patch(self, n: int, dst: torch.Tensor, src: torch.Tensor) -> None:
        self.conv_state, self.ssm_state = (_patched(t, n, dst, src) for t in (self.conv_state, self.ssm_state))

    def merge(self, other: MambaCache) -> None:
        self.conv_state = torch.cat([self.conv_state, other.conv_state])
        self.ssm_state = torch.cat([self.ssm_state, other.ssm_state])


class AttentionCache:
    def __init__(self):
        self.k: torch.Tensor | None = None  # (batch, kv_heads, capacity, head_dim)
        self.v: torch.Tensor | None = None
        self.lengths: torch.Tensor | None = None  # (batch,) real entries per row
        self._row_base, self._row_cap = None, 0  # flat offset of each (row, head), for decode writes
        self.max_len: int | None = None  # no row will hold more: growth stops there

    def append(self, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's keys/values; returns the whole cache (batch, kv_heads, capacity,
        head_dim): entries past a row's length are not real (attention's ``past`` says which are)."""
        b, _, L, _ = k.shape
        if self.k is None:
            self.k, self.v = k, v
            self.lengths = lengths if lengths is not None else torch.full((b,), L, device=k.device)
            return k, v
        if L > 1:
            if not bool((self.lengths == self.lengths[0]).all()):
                raise ValueError("a multi-token step needs rows of equal length")
            end = int(self.lengths[0])
            self.reserve(end + L)
            self.k[:, :, end:end + L], self.v[:, :, end:end + L] = k, v
        else:
            self.reserve(int(self.lengths.max()) + 1)
            # Row r, head h writes slot lengths[r]: one index_copy_ into the flat cache (advanced
            # indexing with two index tensors cost ~3x more per decode step).
            nkv, cap, hd = self.k.shape[1:]
            if self._row_base is None or self._row_base.shape != (b, nkv) or self._row_cap != cap:
                self._row_base = torch.arange(b * nkv, device=k.device).view(b, nkv) * cap
                self._row_cap = cap
            slot = (self._row_base + self.lengths[:, None]).view(-1)
            self.k.view(-1, hd).index_copy_(0, slot, k[:, :, 0].reshape(-1, hd))
            self.v.view(-1, hd).index_copy_(0, slot, v[:, :, 0].reshape(-1, hd))
        self.lengths = self.lengths + L
        return self.k, self.v

    def reserve(self, size: int) -> None:
        """Make room for ``size`` entries per row (doubling, so appends are amortised O(1), but
        not past ``max_len``: memory follows what is generated, not what might be)."""
        cap = self.k.shape[2]
        if size <= cap:
            return
        target = max(size, 2 * cap)
        if self.max_len is not None:
            target = max(size, min(target, self.max_len))
        grow = target - cap
        self.k = F.pad(self.k, (0, 0, 0, grow))
        self.v = F.pad(self.v, (0, 0, 0, grow))

    def select(self, rows: torch.Tensor) -> None:
        self.k, self.v, self.lengths = self.k[rows], self.v[rows], self.lengths[rows]

    def patch(self, n: int, dst: torch.Tensor, src: torch.Tensor) -> None:
        self.k, self.v, self.lengths = (_patched(t, n, dst, src) for t in (self.k, self.v, self.lengths))

    def merge(self, other: AttentionCache) -> None:
        cap = max(self.k.shape[2], other.k.shape[2])
        pad = lambda t: F.pad(t, (0, 0, 0, cap - t.shape[2]))  # noqa: E731
        self.k = torch.cat([pad(self.k), pad(other.k)])
        self.v = torch.cat([pad(self.v), pad(other.v)])
        self.lengths = torch.cat([self.lengths, other.lengths])
        self.max_len = None if None in (self.max_len, other.max_len) else max(self.max_len, other.max_len)


def _patched(t: torch.Tensor, n: int, dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``t`` with rows ``src`` (all >= n) copied over rows ``dst`` (all < n), cut to its first n
    rows (a view: the storage is reused)."""
    if len(dst):
        t[dst] = t[src]
    return t[:n]


def drop_rows(keep: torch.Tensor) -> torch.Tensor:
    """The rows to select to keep the rows where ``keep`` (bool, one per row) holds: the kept
    rows among the first ``keep.sum()`` stay where they are, and each dropped one there is
    replaced by a kept row from past them (``HybridCache.drop`` copies only those)."""
    n = int(keep.sum())
    rows = torch.arange(n, device=keep.device)
    rows[(~keep[:n]).nonzero()[:, 0]] = keep[n:].nonzero()[:, 0] + n
    return rows


class HybridCache:
    """One entry per layer: MambaCache for ``M``, AttentionCache for ``*``, None for MLP/MoE."""

    def __init__(self, config: HybridConfig):
        factories = {"M": lambda: MambaCache(config), "*": AttentionCache}
        self.layers = [factories[c]() if c in factories else None for c in config.pattern]

    def __getitem__(self, i: int):
        return self.layers[i]

    def select(self, rows: torch.Tensor) -> None:
        """Keep batch rows ``rows`` (in that order; repeats duplicate a row)."""
        for layer in self.layers:
            if layer is not None:
                layer.select(rows)

    def drop(self, keep: torch.Tensor) -> torch.Tensor:
        """Keep the rows where ``keep`` (bool) holds, in the order ``drop_rows`` gives, in place:
        only the rows moved into dropped ones' places are copied, and every state is cut to
        length (a decode step where a few sequences finish gathered the whole cache otherwise: a
        third of a CPU rollout's time). Returns the old row of each row now."""
        rows = drop_rows(keep)
        n = len(rows)
        dst = (rows != torch.arange(n, device=rows.device)).nonzero()[:, 0]
        for layer in self.layers:
            if layer is not None:
                layer.patch(n, dst, rows[dst])
        return rows

    def limit(self, max_len: int) -> None:
        """No row will hold more than ``max_len`` tokens: KV caches stop doubling there."""
        for layer in self.layers:
            if isinstance(layer, AttentionCache):
                layer.max_len = max_len

    def merge(self, other: HybridCache) -> None:
        """Append ``other``'s rows after ours (new sequences joining a running batch)."""
        for mine, theirs in zip(self.layers, other.layers):
            if mine is not None:
                mine.merge(theirs)
