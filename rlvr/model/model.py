"""The hybrid Mamba-2 / attention / MoE causal LM (Nemotron-H architecture).

The layer pattern is data: ``MIXERS`` maps each pattern character to its mixer class and the
model is built from ``config.pattern``. Module names match Hugging Face checkpoints
(``backbone.layers.{i}.mixer...``, ``lm_head``), so ``state_dict()`` keys are checkpoint keys
except that routed experts are stacked (see ``checkpoint.py``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from rlvr.kernels import linear_target_logprobs
from rlvr.model.cache import HybridCache
from rlvr.model.checkpoint import save_checkpoint
from rlvr.model.config import HybridConfig
from rlvr.model.layers import MLP, Attention, Experts, Mamba2Mixer, MoE, RMSNorm, Router

MIXERS = {
    "M": Mamba2Mixer,
    "*": Attention,
    "-": lambda c: MLP(c.hidden_size, c.intermediate_size, c.mlp_bias),
    "E": MoE,
}


class Block(nn.Module):
    """Pre-norm residual block around one mixer."""

    def __init__(self, config: HybridConfig, kind: str):
        super().__init__()
        self.kind = kind
        self.norm = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mixer = MIXERS[kind](config)

    def forward(self, hidden, cache=None, seq_idx=None, lengths=None, experts=None, record=None):
        if self.kind == "E":  # (its routing: replayed, recorded)
            return hidden + self.mixer(self.norm(hidden), cache, seq_idx, lengths, experts=experts, record=record)
        return hidden + self.mixer(self.norm(hidden), cache, seq_idx, lengths)


class Backbone(nn.Module):
    def __init__(self, config: HybridConfig):
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, kind) for kind in config.pattern)
        self.norm_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """[0, 3, 7] -> [[0, 0, 0, 1, 1, 1, 1]]: document number of each packed token."""
    positions = torch.arange(total, device=cu_seqlens.device)
    return (torch.searchsorted(cu_seqlens[1:], positions, right=True))[None]


def check_cu_seqlens(cu_seqlens: torch.Tensor, shape) -> None:
    """Offsets of packed documents in one row: [0, ..., seqlen], strictly increasing. (The fused
    kernels trust them: offsets that do not cover the row read memory out of bounds.)"""
    c = cu_seqlens
    if shape[0] != 1 or c.dim() != 1 or c.numel() < 2 or c.is_floating_point():
        raise ValueError(f"cu_seqlens must be 1-D integer offsets of the documents packed in one row (batch 1), "
                         f"got shape {tuple(c.shape)} for input_ids {tuple(shape)}")
    if int(c[0]) != 0 or int(c[-1]) != shape[1] or bool((c[1:] <= c[:-1]).any()):
        raise ValueError(f"cu_seqlens must rise strictly from 0 to seqlen = {shape[1]}, got {c.tolist()}")


def check_seq_idx(seq_idx: torch.Tensor, shape) -> None:
    """Document number of every token: (batch, seqlen), integers >= 0, non-decreasing in a row."""
    if tuple(seq_idx.shape) != tuple(shape) or seq_idx.is_floating_point():
        raise ValueError(f"seq_idx must be integers of input_ids' shape {tuple(shape)}, got {tuple(seq_idx.shape)}")
    if bool((seq_idx < 0).any()) or bool((seq_idx[:, 1:] < seq_idx[:, :-1]).any()):
        raise ValueError("seq_idx must be >= 0 and non-decreasing along each row (documents one after another)")


class LMHead(nn.Linear):
    """The output projection (checkpoint name ``lm_head.weight``). Given the targets, it returns
    their log-probabilities and the entropies instead of the logits
    (``rlvr.kernels.linear_target_logprobs``: at a large vocabulary the logits are never held
    whole). Inside the module's forward, so that ZeRO-3 gathers the weight for it as for any
    layer."""

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None):
        if targets is None:
            return super().forward(hidden)
        return linear_target_logprobs(hidden, self.weight, targets)


class HybridLM(nn.Module):
    def __init__(self, config: HybridConfig, init_weights: bool = True):
        """``init_weights=False``: leave the weights as constructed, for a checkpoint to fill."""
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.lm_head = LMHead(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight
        self.gradient_checkpointing = False
        if init_weights:
            self.reset_parameters()

    # -- forward
    def forward(self, input_ids: torch.Tensor, cache: HybridCache | None = None,
                seq_idx: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None, logits_dtype: torch.dtype = torch.float32,
                keep: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                experts: torch.Tensor | None = None, routing: list | None = None):
        """input_ids (batch, seqlen) -> logits (batch, seqlen, vocab), fp32 by default.

        ``cache``: a ``HybridCache`` to fill (prefill) or extend (one token = a decode step).
        ``seq_idx`` (batch, seqlen) or ``cu_seqlens`` (docs+1,) for packed documents: no
        information crosses a document boundary, in any layer.
        ``lengths`` (batch,): for a right-padded prefill into an empty cache, the real length of
        each row; the cache then continues each row from its own last real token.
        ``keep`` (batch, seqlen) bool: the logits of these positions only, (n, vocab) in row-major
        order (a learner needs them where its loss reads them: the response tokens, not the
        prompt's, which saves that share of the largest matrix multiply and its softmax).
        ``targets`` (n,) with ``keep``: instead of logits, the fp32 log-probabilities of these
        next tokens and the entropies at the kept positions, two (n,) tensors (the learner's
        read; see ``LMHead``).
        ``experts`` (batch, seqlen, MoE layers, top_k) integers: routing replay, the experts
        each MoE layer uses for each token (a rollout engine's choice; -1: this router's own),
        weighted by this model's router.
        ``routing``: a list that gets, per MoE layer in order, the (batch, seqlen, top_k) experts
        its router chose itself (a rollout engine's record; under replay, what agreement
        metrics compare)."""
        if input_ids.dim() != 2 or input_ids.numel() == 0:
            raise ValueError(f"input_ids must be (batch, seqlen) with at least one token, got shape "
                             f"{tuple(input_ids.shape)}")
        if cu_seqlens is not None:
            check_cu_seqlens(cu_seqlens, input_ids.shape)
            seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, input_ids.shape[1])
        if seq_idx is not None:
            check_seq_idx(seq_idx, input_ids.shape)
        moe = [i for i, block in enumerate(self.backbone.layers) if block.kind == "E"]
        if experts is not None and tuple(experts.shape[:3]) != (*input_ids.shape, len(moe)):
            raise ValueError(f"experts must be (batch, seqlen, MoE layers) = {(*input_ids.shape, len(moe))} "
                             f"x top_k, got {tuple(experts.shape)}")
        hidden = self.backbone.embeddings(input_ids)
        for i, block in enumerate(self.backbone.layers):
            layer_cache = cache[i] if cache is not None else None
            replay = None if experts is None or i not in moe else experts[:, :, moe.index(i)]
            # (``routing`` by keyword: ZeRO-3's hooks rebuild the lists among a module's positional
            # inputs, so a list passed there would record into a copy)
            if self.gradient_checkpointing and self.training:
                # (the backward's recomputation appends to ``routing`` again: read it before)
                hidden = checkpoint(block, hidden, layer_cache, seq_idx, lengths, experts=replay, record=routing,
                                    use_reentrant=False)
            else:
                hidden = block(hidden, layer_cache, seq_idx, lengths, experts=replay, record=routing)
        if keep is not None:
            # index_select, not hidden[keep]: the same rows, and a backward that adds them back
            # (index_add_) where the mask's accumulating index_put_ took 1.5 ms for 10K rows
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep.reshape(-1).nonzero()[:, 0])
        if targets is not None:
            if keep is None:
                raise ValueError("targets need keep (the positions whose next tokens they are)")
            return self.lm_head(self.backbone.norm_f(hidden), targets)
        return self.lm_head(self.backbone.norm_f(hidden)).to(logits_dtype)

    def new_cache(self) -> HybridCache:
        return HybridCache(self.config)

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, cache: HybridCache, routing: list | None = None) -> torch.Tensor:
        """One decode step: token_ids (batch,) -> next-token logits (batch, vocab); ``routing``
        as in ``forward``."""
        return self(token_ids[:, None], cache=cache, routing=routing)[:, -1]

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        self.gradient_checkpointing = enabled

    # -- initialisation (as the Nemotron-H reference initialises a fresh model)
    @torch.no_grad()
    def reset_parameters(self) -> None:
        c = self.config
        std = c.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, (Router, Experts)):
                for p in module.parameters():
                    nn.init.normal_(p, std=std)
            elif isinstance(module, Mamba2Mixer):
                self._init_mamba(module)
        if c.rescale_prenorm_residual:
            # GPT-2 style: scale residual output projections by 1/sqrt(n_layers).
            for module in self.modules():
                if isinstance(module, Mamba2Mixer):
                    nn.init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
                    module.out_proj.weight /= math.sqrt(c.num_hidden_layers)

    def _init_mamba(self, m: Mamba2Mixer) -> None:
        c = self.config
        m.A_log.copy_(torch.log(torch.arange(1, m.nheads + 1, dtype=torch.float32)))
        m.D.fill_(1.0)
        dt = torch.exp(torch.rand(m.nheads) * (math.log(c.time_step_max) - math.log(c.time_step_min))
                       + math.log(c.time_step_min)).clamp(min=c.time_step_floor)
        m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    # -- persistence
    def save(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """A Hugging Face style folder that transformers, vLLM and ``rlvr.model.load`` read."""
        save_checkpoint(self, path, dtype=dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
