"""Micro-batches by a token budget, with sequences packed into rows (no compute on padding).

The learner's share of a step is B sequences of very different lengths (a GSM8K prompt and its
answer: 100 to 600 tokens). Padding them all to the longest and cutting the batch by a count of
sequences wastes most of the compute on padding and makes memory depend on the luck of the
draw. Here, as verl's dynamic batch size does, a micro-batch is cut by tokens instead:

0. ``right_pad``: (prompt, response) token lists -> the right-padded (B, L) batch and the mask
   of the targets to learn (the response tokens), for the GRPO learner and SFT alike.
1. ``pack_rows``: sequences go into rows of width W (the longest sequence of the step),
   first-fit decreasing; a row holds several short sequences one after another, and the model
   keeps them apart with ``seq_idx`` (no information crosses a document in any layer).
2. ``plan``: rows go into micro-batches of at most ``max_tokens`` (rows x W) tokens. Every
   data-parallel rank gets the same number of micro-batches (ZeRO-2/3 reduce gradients on every
   backward, so all ranks must run as many), and a rank short of rows runs an empty one.
3. ``pack`` / ``unpack``: the per-token tensors of a (B, L) right-padded batch to and from the
   packed (rows, W) layout, by index arithmetic (no loop over tokens).

Per-token tensors are aligned with the next-token targets: a row of W tokens has W - 1 of
them, and the target across a boundary between two sequences is masked out. The loss weights
(``rlvr.grpo.loss_weights``) are computed over the whole batch before packing, so the loss is a
plain sum over micro-batches and equals the unpacked one.
"""

from __future__ import annotations

import dataclasses

import torch

Tensor = torch.Tensor


def right_pad(prompts: list[list[int]], responses: list[list[int]], pad_id: int,
              response_masks: list[list[int]] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """-> input ids (B, L) right-padded with ``pad_id``, the (B, L - 1) float mask of next-token
    targets that are response tokens, and each sequence's length (B,). The mask's ones, read
    row by row, are the response tokens in order (``masked_scatter_`` aligns per-token values).
    ``response_masks``: per response token, 1 to train on it (a multi-turn episode's model
    turns) or 0 (its observations); default all ones."""
    prompt_lengths = torch.tensor([len(p) for p in prompts])
    lengths = prompt_lengths + torch.tensor([len(r) for r in responses])
    width = int(lengths.max())
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    # One write of all tokens, row by row (a copy per row cost ~10 us each: 5 ms a training step).
    ids[torch.arange(width) < lengths[:, None]] = torch.tensor([t for p, r in zip(prompts, responses) for t in (*p, *r)],
                                                               dtype=torch.long)
    col = torch.arange(width - 1)
    targets = (col >= prompt_lengths[:, None] - 1) & (col < lengths[:, None] - 1)
    mask = targets.float()
    if response_masks is not None:
        mask[targets] = torch.tensor([m for ms in response_masks for m in ms], dtype=mask.dtype)
    return ids, mask, lengths


@dataclasses.dataclass
class MicroBatch:
    """Rows of packed sequences. ``seq_idx`` is None when every row holds one sequence (then the
    rows are the right-padded sequences themselves, computed exactly as without packing)."""

    input_ids: Tensor  # (R, W) int64
    seq_idx: Tensor | None  # (R, W) document number within the row (padding: one more)
    tokens: dict[str, Tensor]  # name -> (R, W - 1, ...) per-token values (mask, advantages, experts, ...)
    sequences: list[list[int]]  # per row, the batch index of each sequence in it

    def to(self, device) -> MicroBatch:
        return MicroBatch(self.input_ids.to(device), None if self.seq_idx is None else self.seq_idx.to(device),
                          {k: v.to(device) for k, v in self.tokens.items()}, self.sequences)

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()


def pack_rows(lengths: list[int], indices: list[int], width: int) -> list[list[int]]:
    """First-fit decreasing: the sequences ``indices`` (of ``lengths[i]`` tokens) into rows of at
    most ``width`` tokens. A sequence longer than ``width`` gets a row of its own."""
    order = sorted(indices, key=lambda i: -lengths[i])
    shortest = lengths[order[-1]] if order else 0
    rows: list[list[int]] = []
    free: list[int] = []
    # Rows, in order, with room for the shortest sequence: the others can take no more, and
    # skipping them keeps the first fit without a scan of every row per sequence (most rows
    # are full when the lengths are alike, as a step's completions are).
    open_rows: list[int] = []
    for i in order:
        for k, r in enumerate(open_rows):
            if lengths[i] <= free[r]:
                rows[r].append(i)
                free[r] -= lengths[i]
                if free[r] < shortest:
                    del open_rows[k]
                break
        else:
            rows.append([i])
            free.append(width - lengths[i])
            if free[-1] >= shortest:
                open_rows.append(len(rows) - 1)
    return rows


def plan(lengths: list[int], shares: list[list[int]], max_tokens: int) -> list[list[list[list[int]]]]:
    """For each rank's share of sequence indices, its micro-batches (each a list of rows, each a
    list of sequence indices). Every rank gets the same number of micro-batches; a micro-batch
    has at most ``max_tokens // W`` rows of width W = the longest sequence (at least one row)."""
    width = max(lengths)
    per_micro = max(1, max_tokens // width)
    rows = [pack_rows(lengths, share, width) for share in shares]
    count = max(1, max(-(-len(r) // per_micro) for r in rows))
    plans = []
    for rank_rows in rows:
        # Rows spread as evenly as the count allows: sizes differ by at most one row.
        bounds = [round(k * len(rank_rows) / count) for k in range(count + 1)]
        plans.append([rank_rows[bounds[k]:bounds[k + 1]] for k in range(count)])
    return plans


def pack(input_ids: Tensor, lengths: Tensor, tokens: dict[str, Tensor], rows: list[list[int]], pad_id: int = 0
         ) -> MicroBatch:
    """The sequences of ``rows`` from a right-padded batch: input_ids (B, L), lengths (B,),
    per-token tensors (B, L - 1, ...) -> a ``MicroBatch`` of width max(L_i in it) when no row holds
    two sequences, else of width L. ``rows == []`` gives one empty row of zeros: the micro-batch
    a rank with no sequences left runs so that all ranks take part in each backward."""
    if not rows:
        ids = torch.full((1, 2), pad_id, dtype=input_ids.dtype)
        return MicroBatch(ids, None, {k: torch.full((1, 1, *v.shape[2:]), _fill(v), dtype=v.dtype)
                                      for k, v in tokens.items()}, [[]])
    flat = [i for row in rows for i in row]
    n = lengths[flat]
    if all(len(row) == 1 for row in rows):
        W = int(n.max())
        index = torch.tensor(flat)
        return MicroBatch(input_ids[index, :W], None, {k: v[index, :W - 1] for k, v in tokens.items()}, rows)
    W = input_ids.shape[1]
    row_of, starts = _layout(rows, lengths)
    src = torch.tensor(flat)
    dst = _spans(row_of * W + starts, n)
    ids = torch.full((len(rows), W), pad_id, dtype=input_ids.dtype)
    ids.view(-1)[dst] = input_ids.reshape(-1)[_spans(src * W, n)]
    # Document number within the row; the padding after the last one is one more document.
    seq_idx = torch.tensor([len(row) for row in rows])[:, None].repeat(1, W)
    seq_idx.view(-1)[dst] = torch.repeat_interleave(torch.tensor([d for row in rows for d in range(len(row))]), n)
    packed = {}
    for k, v in tokens.items():
        out = torch.full((len(rows), W - 1, *v.shape[2:]), _fill(v), dtype=v.dtype)
        # Targets inside a sequence: its first n - 1 positions; the last one would predict the
        # next sequence's first token and keeps the fill.
        out.flatten(0, 1)[_spans(row_of * (W - 1) + starts, n - 1)] = v.flatten(0, 1)[_spans(src * (W - 1), n - 1)]
        packed[k] = out
    return MicroBatch(ids, seq_idx, packed, rows)


def _fill(values: Tensor) -> int:
    """What a per-token tensor holds where no sequence's token is: 0, or -1 for integers (expert
    choices: none recorded)."""
    return 0 if values.is_floating_point() else -1


def unpack(values: Tensor, micro: MicroBatch, lengths: Tensor, out: Tensor) -> None:
    """Write packed per-token ``values`` (R, W - 1) of ``micro`` back into ``out`` (B, L - 1),
    the layout ``pack`` read them from."""
    flat = [i for row in micro.sequences for i in row]
    if not flat:
        return
    n = lengths[flat]
    row_of, starts = _layout(micro.sequences, lengths)
    src = _spans(row_of * values.shape[1] + starts, n - 1)
    out.view(-1)[_spans(torch.tensor(flat) * out.shape[1], n - 1)] = values.reshape(-1)[src]


def _layout(rows: list[list[int]], lengths: Tensor) -> tuple[Tensor, Tensor]:
    """The row of each sequence (in ``rows`` order) and the position it starts at in that row."""
    n = lengths.tolist()
    row_of, starts = [], []
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            row_of.append(r)
            starts.append(at)
            at += n[i]
    return torch.tensor(row_of), torch.tensor(starts)


def _spans(starts: Tensor, counts: Tensor) -> Tensor:
    """Flat indices start_j, start_j + 1, ..., start_j + count_j - 1 for every j, concatenated."""
    counts = counts.clamp(min=0)
    offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    return torch.repeat_interleave(starts, counts) + offsets
